#!/usr/bin/env python3
"""Real LiDAR samples from public repositories through the importers, `ssm-perception evaluate` and
the same pipeline with the intensity rescaled or removed -> results/real_samples.json.

The samples are test and demo files of public repositories, read from local git mirrors (fetched
with the `fetch` tool or `git clone --mirror`; no work tree needed) and written into a git-ignored
folder (out/real_samples/): their licences (Argoverse 2: CC BY-NC-SA 4.0; KITTI: CC BY-NC-SA 3.0;
nuScenes: its terms of use) do not allow committing them here.

    argoverse2  av2-api tests/unit/test_data/sensor/val/7fab2350-...: 2 sweeps 0.1 s apart, annotated
                av2-api tests/unit/test_data/sensor_dataset_logs/adcf7d18-...: 1 annotated sweep (no
                calibration in the repository: the up_lidar mount of 7fab2350 is used; the sweeps are in
                the ego frame, so the mount only sets the sensor origin of the free-space rays)
    kitti       kitti_object_vis data/object/training 000000-000002: 3 single annotated scans (object
                benchmark: labels only inside the front camera's field of view, so far-from-label
                shares count tracks inside it only, ``KITTI_FOV_DEG``); poses: identity
    nuscenes    mmdetection3d demo/data/nuscenes: 1 LIDAR_TOP scan with its boxes (the info .pkl,
                read with an unpickler that admits numpy arrays only); written as a PCD in the ego
                vehicle's axes at the LiDAR's position and imported with the pcd importer

What each can measure: every scan gives evidence coverage (with the rule and the network alone),
track support (with confirm_hits 1 a detection confirms a track on its first scan) and the
intensity invariance; annotated scans give the far-from-label share and vehicle recall. None can
measure the static-track check (it needs 3 s of one track) or track continuity: these samples are
one or two scans long, and the temporal model starts from an empty state on each.

    .venv/bin/python scripts/measure_real_samples.py --mirrors /work/.mirror --out results/real_samples.json
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import typer

AV2 = "argoverse+av2-api"
KITTI_VIS = "kuixu+kitti_object_vis"
MMDET3D = "open-mmlab+mmdetection3d"
AV2_7FAB = "tests/unit/test_data/sensor/val/7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
AV2_ADCF = "tests/unit/test_data/sensor_dataset_logs/adcf7d18-0510-35b0-a2fa-b4cea13a6d76"
NUSC_DEMO = "demo/data/nuscenes"
NUSC_PKL = "n015-2018-07-24-11-22-45+0800.pkl"
NUSC_CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian",
                "traffic_cone", "barrier")  # the info file's metainfo order (checked when read)
NUSC_MAP = {"car": "car", "truck": "truck", "trailer": "truck", "bus": "truck", "construction_vehicle": "truck",
            "bicycle": "cyclist", "motorcycle": "cyclist", "pedestrian": "pedestrian"}
KITTI_FOV_DEG = 40.0  # half the horizontal field of view of KITTI's camera 2 (~81 deg): its labels' region
VEHICLE_RANGE_M = 50.0

app = typer.Typer(add_completion=False)


def _git_show(mirror: Path, path: str) -> bytes:
    git_dir = mirror / "repo" if (mirror / "repo").is_dir() else mirror
    return subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout


def _git_ls(mirror: Path, path: str) -> list[str]:
    git_dir = mirror / "repo" if (mirror / "repo").is_dir() else mirror
    out = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", "HEAD", path],
                         check=True, capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if p]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ------------------------------------------------------------------------------ extraction
def extract_av2(mirrors: Path, src: Path) -> list[dict]:
    m = mirrors / AV2
    out = []
    for name, base, calib_from in (("av2_7fab2350", AV2_7FAB, AV2_7FAB), ("av2_adcf7d18", AV2_ADCF, AV2_7FAB)):
        d = src / name
        for p in _git_ls(m, base):
            rel = p[len(base) + 1:]
            if rel.startswith(("sensors/lidar/", "annotations", "city_SE3")):
                _write(d / rel, _git_show(m, p))
        _write(d / "calibration" / "egovehicle_SE3_sensor.feather",
               _git_show(m, f"{calib_from}/calibration/egovehicle_SE3_sensor.feather"))
        out.append({"name": name, "format": "argoverse2", "src": d, "args": [],
                    "note": "" if calib_from == base else "up_lidar mount borrowed from log 7fab2350"})
    return out


def extract_kitti(mirrors: Path, src: Path) -> list[dict]:
    m = mirrors / KITTI_VIS
    out = []
    for k in range(3):
        name = f"kitti_object_{k:06d}"
        d = src / name
        base = "data/object/training"
        _write(d / "velodyne" / f"{k:06d}.bin", _git_show(m, f"{base}/velodyne/{k:06d}.bin"))
        _write(d / "calib.txt", _git_show(m, f"{base}/calib/{k:06d}.txt"))
        # object labels (15 fields) -> tracking labels (frame, id, then the same 15)
        lines = _git_show(m, f"{base}/label_2/{k:06d}.txt").decode().splitlines()
        (d / "label_02.txt").write_text("".join(f"0 {i} {ln}\n" for i, ln in enumerate(lines) if ln.strip()))
        (d / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")  # one scan: identity LiDAR pose
        out.append({"name": name, "format": "kitti", "src": d, "args": ["--poses-frame", "lidar"],
                    "fov_deg": KITTI_FOV_DEG, "note": "labels only in the front camera's field of view"})
    return out


class _NumpyOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays and scalars and nothing else (the info file is data)."""

    ALLOWED: ClassVar[set] = {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")
        if module == "numpy.core.multiarray":
            import numpy.core.multiarray as mod  # noqa: F401 - the pickle's own module path
        return super().find_class(module, name)


def extract_nuscenes(mirrors: Path, src: Path) -> list[dict]:
    import io

    m = mirrors / MMDET3D
    info = _NumpyOnly(io.BytesIO(_git_show(m, f"{NUSC_DEMO}/{NUSC_PKL}"))).load()
    cats = info["metainfo"]["categories"]
    names = sorted(cats, key=cats.get) if isinstance(cats, dict) else list(cats)
    if tuple(names) != NUSC_CLASSES:
        raise RuntimeError(f"unexpected nuScenes categories {names}")
    (sample,) = info["data_list"]
    lidar = sample["lidar_points"]
    pts = np.frombuffer(_git_show(m, f"{NUSC_DEMO}/{lidar['lidar_path']}"), "<f4").reshape(-1, 5)
    T_ego_lidar = np.asarray(lidar["lidar2ego"], np.float64)
    R = T_ego_lidar[:3, :3]  # into the ego vehicle's axes (x forward), origin kept at the LiDAR
    xyz = pts[:, :3].astype(np.float64) @ R.T
    d = src / "nuscenes_demo"
    d.mkdir(parents=True, exist_ok=True)
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\nDATA binary\n")
    body = np.column_stack([xyz, pts[:, 3]]).astype("<f4").tobytes()
    (d / "scan.pcd").write_bytes(header.encode() + body)
    t_s = sample["timestamp"] if sample["timestamp"] < 1e12 else sample["timestamp"] / 1e6
    (d / "poses.txt").write_text(f"{t_s:.6f} 0 0 0 0 0 0 1\n")  # TUM, identity LiDAR pose
    yaw_r = math.atan2(R[1, 0], R[0, 0])
    labels = []
    for k, inst in enumerate(sample["instances"]):
        cls = NUSC_CLASSES[int(inst["bbox_label_3d"])]
        x, y, z, dx, dy, dz, yaw = (float(v) for v in inst["bbox_3d"][:7])
        c = R @ np.array([x, y, z])
        labels.append({"stamp_ns": round(t_s * 1e9), "id": str(k), "class": NUSC_MAP.get(cls, "other"),
                       "x": float(c[0]), "y": float(c[1]), "z": float(c[2] + dz / 2), "l": dx, "w": dy, "h": dz,
                       "yaw": math.atan2(math.sin(yaw + yaw_r), math.cos(yaw + yaw_r)),
                       "num_points": int(inst.get("num_lidar_pts", -1))})
    return [{"name": "nuscenes_demo", "format": "pcd", "src": d, "args": ["--poses-frame", "lidar"],
             "labels_odom_at_lidar": labels,
             "note": "LIDAR_TOP scan turned into the ego's axes at the LiDAR position; boxes from the info file"}]


# ------------------------------------------------------------------------------ import + evaluate
def _cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "ssm_perception", *args], check=False, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ssm-perception {' '.join(args)} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")


def _nuscenes_labels(sample: dict, bag: Path) -> None:
    """Boxes given in the LiDAR's position (ego axes) -> the bag's odom (base_link on the ground under
    the LiDAR at the first scan: same x, y; z shifted by the mounting height the importer chose)."""
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.eval.evaluate import decode_bag, topic_roles

    cfg = PerceptionConfig()
    dec = decode_bag(bag, cfg, topic_roles(cfg.topics), progress=False)
    inp = dec.frames[0]
    h = float(inp.T_base_lidar[2, 3])
    stamp = int(inp.stamp_ns)
    with (bag / "labels.jsonl").open("w") as f:
        for b in sample["labels_odom_at_lidar"]:
            f.write(json.dumps({**b, "stamp_ns": stamp, "z": b["z"] + h}) + "\n")


def _fov_filter(metrics, fov_deg: float):
    """Restrict LabelFreeMetrics' label comparison to tracks inside +-fov_deg of base_link's x axis."""
    inner = metrics._add_labels

    def add_labels(labels, published, T, ev, withheld=()):
        def inside(t):
            bx = T[0, 0] * t.x + T[0, 1] * t.y + T[0, 3]
            by = T[1, 0] * t.x + T[1, 1] * t.y + T[1, 3]
            return abs(math.degrees(math.atan2(by, bx))) <= fov_deg

        return inner(labels, [t for t in published if inside(t)], T, ev, [t for t in withheld if inside(t)])

    metrics._add_labels = add_labels
    return metrics


def _variant(frames, how: str):
    from dataclasses import replace

    from numpy.lib import recfunctions as rfn

    out = []
    for inp in frames:
        pts = inp.lidar
        if pts is not None and "intensity" in pts.dtype.names:
            if how == "x255":
                pts = pts.copy()
                pts["intensity"] = pts["intensity"] * 255.0
            elif how == "/255":
                pts = pts.copy()
                pts["intensity"] = pts["intensity"] / 255.0
            elif how == "removed":
                pts = rfn.drop_fields(pts, "intensity", usemask=False)
        out.append(replace(inp, lidar=pts))
    return out


def _summary(lf: dict) -> dict:
    t, lab = lf["tracks"], lf.get("labels")
    out = {
        "frames": lf["frames"],
        "evidence_coverage": lf["evidence_coverage"],
        "evidence_coverage_network": lf["evidence_coverage_network"],
        "track_instances": t["instances_in_grid"],
        "tracks_without_returns_share": t["unsupported_share"],
        "tracks_without_returns_share_before_rule": t["before_rule_unsupported_share"],
        "track_instances_before_rule": t["before_rule_instances_in_grid"],
        "withheld_unsupported": t["withheld_unsupported_instances"],
        "withheld_static": t["withheld_static_instances"],
        "withheld_shape": t["withheld_shape_instances"],
    }
    if lab:
        out["far_from_labels_share"] = lab["tracks_far_from_labels_share"]
        out["far_from_labels_share_before_rule"] = lab["tracks_far_from_labels_share_before_rule"]
        out["tracks_compared_with_labels"] = lab["tracks_compared_with_labels"]
        out["tracks_compared_with_labels_before_rule"] = lab["tracks_compared_with_labels_before_rule"]
        hit = n = 0
        for cls in ("car", "truck"):
            for row in lab["recall_by_range"].get(cls, []):
                hi = float(row["range_m"].split("-")[1])
                if hi <= VEHICLE_RANGE_M and row["num_gt"]:
                    n += row["num_gt"]
                    hit += row["recall"] * row["num_gt"]
        out["vehicles_within_50m"] = n
        out["vehicle_recall_within_50m"] = hit / n if n else None
    return out


def run_variants(bag: Path, fov_deg: float | None, rule: bool) -> dict:
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.eval.evaluate import (
        attach_labels,
        decode_bag,
        run_bag,
        topic_roles,
    )
    from ssm_perception.eval.labelfree import LabelFreeMetrics
    from ssm_perception.pipeline import PerceptionPipeline

    cfg = PerceptionConfig()
    cfg.track_support.enabled = rule
    dec = decode_bag(bag, cfg, topic_roles(cfg.topics), progress=False)
    attach_labels(dec, None)
    frames = dec.frames
    res = {}
    for how in ("as recorded", "x255", "/255", "removed"):
        dec.frames = _variant(frames, how)
        lf = LabelFreeMetrics(cfg, with_labels=bool(dec.labels))
        if fov_deg is not None:
            _fov_filter(lf, fov_deg)
        run_bag(dec, PerceptionPipeline(cfg), cfg, None, set(), how, progress=False, labelfree=lf)
        res[how] = _summary(lf.summary())
    base = res["as recorded"]
    for how in ("x255", "/255", "removed"):
        r = res[how]
        r["coverage_change"] = (r["evidence_coverage"] - base["evidence_coverage"]) / base["evidence_coverage"] \
            if base["evidence_coverage"] else None
        r["coverage_network_change"] = (r["evidence_coverage_network"] - base["evidence_coverage_network"]) \
            / base["evidence_coverage_network"] if base["evidence_coverage_network"] else None
        r["track_count_change"] = (r["track_instances"] - base["track_instances"]) / base["track_instances"] \
            if base["track_instances"] else None
    return res


@app.command()
def main(
    mirrors: Annotated[Path, typer.Option(help="folder of the git mirrors (owner+name/repo)")] = Path("/work/.mirror"),
    work: Annotated[Path, typer.Option(help="git-ignored working folder")] = Path("out/real_samples"),
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/real_samples.json"),
    only: Annotated[list[str] | None, typer.Option(help="sample names to run (default: all)")] = None,
) -> None:
    import shutil

    src, bags, evals = work / "src", work / "bags", work / "eval"
    samples = []
    for extract, repo in ((extract_av2, AV2), (extract_kitti, KITTI_VIS), (extract_nuscenes, MMDET3D)):
        if not (mirrors / repo).exists():
            typer.echo(f"skipped: no mirror {mirrors / repo}")
            continue
        samples += extract(mirrors, src)
    if only:
        samples = [s for s in samples if s["name"] in only]
    results = {}
    for s in samples:
        name = s["name"]
        bag = bags / name
        shutil.rmtree(bag, ignore_errors=True)
        bag.parent.mkdir(parents=True, exist_ok=True)
        _cli("import", s["format"], str(s["src"]), "-o", str(bag), "--no-progress", *s["args"])
        if "labels_odom_at_lidar" in s:
            _nuscenes_labels(s, bag)
        # the user's command: evaluate with the bag's labels.jsonl (report + metrics.json)
        _cli("evaluate", str(bag), "-o", str(evals / name))
        metrics = json.loads((evals / name / "metrics.json").read_text())
        (model,) = metrics["models"].values()
        rec = {"format": s["format"], "note": s.get("note", ""), "frames": metrics["bags"][0]["frames"],
               "labelled_frames": metrics["bags"][0]["labelled_frames"],
               "evaluate": _summary(model["label_free"])}
        fov = s.get("fov_deg")
        if fov is not None:
            rec["far_from_labels_region"] = f"tracks within +-{fov:g} deg of the LiDAR's forward axis"
        rec["with_rule"] = run_variants(bag, fov, rule=True)
        rec["without_rule"] = run_variants(bag, fov, rule=False)["as recorded"]
        results[name] = rec
        typer.echo(f"{name}: {json.dumps(rec['with_rule']['as recorded'])}")

    def pooled(key_n: str, key_share: str, names=None) -> float | None:
        num = den = 0.0
        for name, r in results.items():
            if names is not None and name not in names:
                continue
            v = r["with_rule"]["as recorded"]
            if v.get(key_share) is not None and v.get(key_n):
                num += v[key_share] * v[key_n]
                den += v[key_n]
        return num / den if den else None

    summary = {
        "tracks_without_returns_share": pooled("track_instances", "tracks_without_returns_share"),
        "tracks_without_returns_share_before_rule": pooled("track_instances_before_rule",
                                                           "tracks_without_returns_share_before_rule"),
        "track_instances": sum(r["with_rule"]["as recorded"]["track_instances"] for r in results.values()),
        "track_instances_before_rule": sum(r["with_rule"]["as recorded"]["track_instances_before_rule"]
                                           for r in results.values()),
        "far_from_labels_share": pooled("tracks_compared_with_labels", "far_from_labels_share"),
        "far_from_labels_share_before_rule": pooled("tracks_compared_with_labels_before_rule",
                                                    "far_from_labels_share_before_rule"),
        "tracks_compared_with_labels": sum(r["with_rule"]["as recorded"].get("tracks_compared_with_labels", 0)
                                           for r in results.values()),
        "vehicle_recall_within_50m": pooled("vehicles_within_50m", "vehicle_recall_within_50m"),
        "vehicles_within_50m": sum(r["with_rule"]["as recorded"].get("vehicles_within_50m", 0)
                                   for r in results.values()),
        "argoverse2_far_from_labels_share": pooled("tracks_compared_with_labels", "far_from_labels_share",
                                                   names=("av2_7fab2350", "av2_adcf7d18")),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["scripts/measure_real_samples.py", *sys.argv[1:]]),
        "what": "public sample scans (1-2 scans each): coverage, track support, far-from-label share and vehicle "
                "recall within 50 m where labelled, intensity x255 / /255 / removed; shares pooled over track "
                "instances in 'pooled'. Single scans cannot exercise the static-track check or track continuity.",
        "pooled": summary,
        "samples": results,
    }, indent=2, default=float))
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
