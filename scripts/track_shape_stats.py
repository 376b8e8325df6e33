#!/usr/bin/env python3
"""The data behind the track rule's shape check (tracking/support.py, ``track_support.shape_*``):
for every track instance the pipeline publishes with the shape check off, the area of connected
structure under its box beyond ``shape_reach_m`` (``structure_beyond``, what the check thresholds),
and whether the track lies within 2 m of a labelled / simulated object ("near") or not ("far").

Parts, kept apart so the threshold is chosen on one and reported on another:
    tune   real scans of Argoverse 2 and nuScenes (out/real_samples/bags, imported by
           scripts/measure_real_samples.py)
    test   real KITTI scans (tracks inside the camera's field of view only, where KITTI labels)
    sim_*  simulated runs with ground truth (tuning seeds 100000+, never the held-out 200000+)

    .venv/bin/python scripts/track_shape_stats.py --bags out/real_samples/bags --sim urban:100000 \\
        --sim urban:100001 --sim parking:100000 --duration 8 --out results/track_shape_stats.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(add_completion=False)
KITTI_FOV_DEG = 40.0  # as scripts/measure_real_samples.py: KITTI labels only the front camera's view
NEAR_M = 2.0
THRESHOLDS_M2 = (5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 30.0)


def _rows(out, objects: list[tuple[float, float]], part: str, fov_deg: float | None, cfg) -> list[dict]:
    from ssm_perception.geometry import invert_transform
    from ssm_perception.tracking.support import (
        connected_structure,
        structure_beyond,
        to_base,
    )

    if out.evidence is None or out.T_odom_base is None or out.track_support is None:
        return []
    T = invert_transform(np.asarray(out.T_odom_base, np.float64))
    labels, sizes = connected_structure(out.evidence.band_count)
    g, rows = cfg.grid, []
    for tr in out.tracks:
        if tr.status == "tentative":
            continue
        bx, by, byaw = to_base(T, tr.x, tr.y, tr.yaw)
        if fov_deg is not None and abs(math.degrees(math.atan2(by, bx))) > fov_deg:
            continue
        # the box the check uses (TrackSupportRule.on_structure): grown by one cell
        n = structure_beyond(labels, sizes, g, bx, by, byaw, tr.length + g.resolution, tr.width + g.resolution,
                             cfg.track_support.shape_reach_m)
        if n is None:
            continue
        d = min((math.hypot(tr.x - x, tr.y - y) for x, y in objects), default=math.inf)
        rows.append({"part": part, "cls": int(tr.cls), "score": round(float(tr.score), 3),
                     "range_m": round(math.hypot(bx, by), 1), "near": bool(d <= NEAR_M),
                     "beyond_m2": n * g.resolution**2})
    return rows


def real_rows(bags: Path, cfg) -> list[dict]:
    from ssm_perception.eval.evaluate import attach_labels, decode_bag, topic_roles
    from ssm_perception.eval.labelfree import labels_for_stamp
    from ssm_perception.pipeline import PerceptionPipeline

    rows = []
    for bag in sorted(p for p in bags.iterdir() if (p / "labels.jsonl").is_file()):
        dec = decode_bag(bag, cfg, topic_roles(cfg.topics), progress=False)
        attach_labels(dec, None)
        stamps = np.array(sorted(dec.labels)) if dec.labels else None
        pipe = PerceptionPipeline(cfg)
        kitti = bag.name.startswith("kitti")
        for inp in dec.frames:
            out = pipe.process(inp)
            labels = labels_for_stamp(dec.labels, stamps, inp.stamp_ns)
            if labels is not None:
                rows += _rows(out, [(b.x, b.y) for b in labels], "test" if kitti else "tune",
                              KITTI_FOV_DEG if kitti else None, cfg)
    return rows


def sim_rows(preset: str, seed: int, duration: float, cfg) -> list[dict]:
    from ssm_perception.eval.tracking import sim_sequence
    from ssm_perception.frame_assembler import FrameAssembler
    from ssm_perception.pipeline import FrameInputs, PerceptionPipeline

    if seed >= 200000:
        raise typer.BadParameter(f"seed {seed} is held out (200000+): use tuning seeds 100000+")
    pipe, asm, rows = PerceptionPipeline(cfg), FrameAssembler(cfg), []
    for fr in sim_sequence(preset, seed, duration, cfg):
        sc, sf = fr.sensors
        out = pipe.process(FrameInputs.from_sim(sc, sf, asm))
        rows += _rows(out, [(o.x, o.y) for o in fr.objects], f"sim_{preset}", None, cfg)
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for part in sorted({r["part"] for r in rows}):
        rs = [r for r in rows if r["part"] == part]
        near = np.array([r["beyond_m2"] for r in rs if r["near"]])
        far = np.array([r["beyond_m2"] for r in rs if not r["near"]])
        sweep = {}
        for t in THRESHOLDS_M2:
            kn, kf = int((near <= t).sum()), int((far <= t).sum())
            sweep[f"{t:g}"] = {"near_kept": kn, "far_kept": kf, "far_share": kf / (kn + kf) if kn + kf else None}
        out[part] = {
            "near": int(near.size), "far": int(far.size),
            "far_share_without_check": far.size / (near.size + far.size) if rs else None,
            "near_beyond_m2_max": float(near.max()) if near.size else None,
            "near_beyond_m2_p99": float(np.percentile(near, 99)) if near.size else None,
            "far_beyond_m2_sorted_top": sorted(far.tolist())[-15:],
            "by_threshold_m2": sweep,
        }
    return out


@app.command()
def main(
    bags: Annotated[Path | None, typer.Option(help="folder of imported bags with labels.jsonl")] = None,
    sim: Annotated[list[str] | None, typer.Option(help="PRESET:SEED simulated runs (tuning seeds 100000+)")] = None,
    duration: Annotated[float, typer.Option(help="simulated seconds per run")] = 8.0,
    out: Annotated[Path, typer.Option(help="summary JSON")] = Path("results/track_shape_stats.json"),
    rows_out: Annotated[Path | None, typer.Option(help="JSON lines, one per track instance")] = None,
) -> None:
    from ssm_perception.config import PerceptionConfig

    cfg = PerceptionConfig()
    cfg.track_support.shape_check = False  # everything the other checks publish
    rows = real_rows(bags, cfg) if bags is not None else []
    for spec in sim or []:
        preset, _, seed = spec.partition(":")
        rows += sim_rows(preset, int(seed), duration, cfg)
    if rows_out is not None:
        rows_out.parent.mkdir(parents=True, exist_ok=True)
        rows_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["scripts/track_shape_stats.py", *sys.argv[1:]]),
        "what": "per published track instance (shape check off): area of connected band structure under its box "
                f"beyond shape_reach_m = {cfg.track_support.shape_reach_m:g} m (m^2); near = within {NEAR_M:g} m of "
                "a labelled/simulated object. by_threshold_m2: tracks kept if the area is at most the threshold.",
        "configured_threshold_m2": PerceptionConfig().track_support.shape_max_beyond_m2,
        "parts": summary(rows),
    }, indent=2))
    typer.echo(f"wrote {out} ({len(rows)} track instances)")


if __name__ == "__main__":
    app()
