"""How much the published output changes when a LiDAR's intensity is scaled or missing, with and
without the per-sensor normalisation (ssm_perception/bev/lidar_input.py).

    .venv/bin/python scripts/measure_lidar_input.py [--seeds 200001 200002] [--frames 10] \
        [--out results/lidar_input_invariance.json]

Simulated urban drives on held-out seeds (training uses 0-143), the shipped model through
PerceptionPipeline.process. Per variant, summed over all frames: occupied cells (P > 0.5), cells
differing from the original, the network's evidence coverage (cells with current non-ground returns
that the network, before the rule check, calls occupied) and confirmed track instances.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ssm_perception.config import LidarInputConfig, PerceptionConfig
from ssm_perception.pipeline import FrameInputs, PerceptionPipeline
from ssm_perception.sim.scenario import Scenario

VARIANTS = {  # name: (intensity transform, lidar_input config)
    "original": ("original", None),
    "x255": ("x255", None),
    "/255": ("/255", None),
    "removed": ("removed", None),
    "x255, no normalisation": ("x255", LidarInputConfig(intensity_mode="fixed", intensity_scale=1.0)),
    "/255, no normalisation": ("/255", LidarInputConfig(intensity_mode="fixed", intensity_scale=1.0)),
}


def variant(cloud: np.ndarray, kind: str) -> np.ndarray:
    if kind == "removed":
        return cloud[[n for n in cloud.dtype.names if n != "intensity"]]
    c = cloud.copy()
    if kind == "x255":
        c["intensity"] *= 255.0
    elif kind == "/255":
        c["intensity"] /= 255.0
    return c


def run(frames, fid, kind, lidar_input) -> dict:
    cfg = PerceptionConfig(sensors={"use_radar": False, "use_camera": False})
    if lidar_input is not None:
        cfg.lidar_input = lidar_input
    p = PerceptionPipeline(cfg)
    occ, ev, called, tracks = [], 0, 0, 0
    for fr in frames:
        out = p.process(FrameInputs(stamp_ns=fr.stamp_ns, T_odom_base=fr.T_odom_base, lidar=variant(fr.lidar, kind),
                                    T_base_lidar=fr.T_base_sensor[fid], lidar_frame=fid))
        occ.append(out.occupancy > 0.5)
        if out.evidence_report is not None:
            ev += out.evidence_report.evidence_cells
            called += out.evidence_report.evidence_cells - out.evidence_report.network_free
        tracks += sum(t.status == "confirmed" for t in out.tracks)
    return {"occ": occ, "evidence_cells": ev, "network_occupied_evidence": called, "tracks": tracks,
            "checks": out.sensor_checks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[200001, 200002])
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--out", default="results/lidar_input_invariance.json")
    a = ap.parse_args()
    t0 = time.time()
    totals = {name: {"occupied": 0, "differing": 0, "evidence_cells": 0, "network_occupied_evidence": 0,
                     "tracks": 0} for name in VARIANTS}
    checks = {}
    for seed in a.seeds:
        sc = Scenario.from_preset("urban", seed=seed, duration_s=a.frames / sc_rate() + 0.5)
        fid = sc.config.lidar.frame_id
        frames = []
        for fr in sc.frames(with_others=False):
            frames.append(fr)
            if len(frames) == a.frames:
                break
        ref = None
        for name, (kind, li) in VARIANTS.items():
            r = run(frames, fid, kind, li)
            ref = r["occ"] if ref is None else ref
            t = totals[name]
            t["occupied"] += int(sum(o.sum() for o in r["occ"]))
            t["differing"] += int(sum((o ^ q).sum() for o, q in zip(r["occ"], ref, strict=True)))
            for k in ("evidence_cells", "network_occupied_evidence", "tracks"):
                t[k] += r[k]
            checks[f"{seed} {name}"] = r["checks"].get("intensity")
    base = totals["original"]
    summary = {}
    for name, t in totals.items():
        cov = t["network_occupied_evidence"] / max(1, t["evidence_cells"])
        summary[name] = {**t, "network_evidence_coverage": round(cov, 4),
                         "occupied_change": round(t["occupied"] / base["occupied"] - 1, 4),
                         "differing_share": round(t["differing"] / base["occupied"], 4),
                         "coverage_change": round(cov / max(1e-9, base["network_occupied_evidence"]
                                                            / max(1, base["evidence_cells"])) - 1, 4),
                         "tracks_change": round(t["tracks"] / max(1, base["tracks"]) - 1, 4)}
        print(f"{name:24s} occupied {summary[name]['occupied_change']:+.3f} differing "
              f"{summary[name]['differing_share']:.3f} coverage {cov:.3f} tracks {t['tracks']} "
              f"({summary[name]['tracks_change']:+.3f})")
    out = {"command": "scripts/measure_lidar_input.py " + " ".join(f"--{k} {v}" for k, v in vars(a).items()),
           "scenario": "urban", "seeds": a.seeds, "frames_per_seed": a.frames, "model": "shipped (default config)",
           "variants": summary, "intensity_checks": checks, "seconds": round(time.time() - t0, 1),
           "load_avg": os.getloadavg()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {a.out}")


def sc_rate() -> float:
    from ssm_perception.sim.config import LidarConfig

    return LidarConfig().rate_hz


if __name__ == "__main__":
    main()
