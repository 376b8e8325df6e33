"""CPU benchmark of the BEV core: encoder stages, ground fit (torch vs open3d), warp and model step.

    .venv/bin/python scripts/bench_core_cpu.py [--threads 2] [--sizes 128 200 256] [--out results/bench_core_cpu.json]

Synthetic but realistic inputs: a 64-ring LiDAR (100k returns) over a slightly tilted ground with
box obstacles (ray-box intersection), 200 radar detections, a 1280x720 camera image. Timings are
medians over repeats after a warm-up. The machine is shared: the 1-minute load average before and
after is recorded, and medians are only comparable between runs with similar load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ssm_perception.bench import sample_ms
from ssm_perception.bev.features import CameraFrame, LidarScan, RadarScan, encode_frame
from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.ground import fit_ground_plane, fit_ground_plane_open3d
from ssm_perception.bev.lidar import encode_lidar
from ssm_perception.config import PerceptionConfig
from ssm_perception.geometry import make_transform
from ssm_perception.model import BevPerceptionModel
from ssm_perception.temporal.warp import warp_state

SENSOR_HEIGHT = 1.8


def synthetic_lidar(n_points: int, seed: int = 0) -> np.ndarray:
    """64 rings x (n/64) azimuths from a sensor 1.8 m up; ground z = 0.02 x - 1.8 (sensor frame)
    and 30 random boxes; rays that hit nothing within 80 m are dropped (as a real driver does)."""
    rng = np.random.default_rng(seed)
    rings, az_n = 64, n_points // 64
    el = np.radians(np.linspace(-25.0, 3.0, rings))
    az = np.linspace(-math.pi, math.pi, az_n, endpoint=False)
    el, az = np.meshgrid(el, az, indexing="ij")
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    # ground: z = 0.02 x - 1.8  ->  t = -1.8 / (d_z - 0.02 d_x)
    denom = d[:, 2] - 0.02 * d[:, 0]
    t = np.where(denom < -1e-6, -SENSOR_HEIGHT / np.minimum(denom, -1e-6), np.inf)
    centers = rng.uniform([-60, -60], [60, 60], (30, 2))
    lo = np.c_[centers - [2.2, 0.9], np.full(30, -SENSOR_HEIGHT)]
    hi = np.c_[centers + [2.2, 0.9], np.full(30, -SENSOR_HEIGHT + 1.6)]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d  # slab method, all rays x all boxes at once: [N, 30, 3]
        t0 = lo[None] * inv[:, None]
        t1 = hi[None] * inv[:, None]
    tmin = np.nanmax(np.minimum(t0, t1), -1)
    tmax = np.nanmin(np.maximum(t0, t1), -1)
    tbox = np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf).min(1)
    t = np.minimum(t, tbox)
    keep = t < 80.0
    p = d[keep] * t[keep, None] + rng.normal(0, 0.02, (int(keep.sum()), 3))
    out = np.zeros(len(p), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4"), ("t", "f4")])
    out["x"], out["y"], out["z"] = p[:, 0], p[:, 1], p[:, 2]
    out["intensity"] = rng.uniform(0, 100, len(p))
    out["t"] = (np.arctan2(p[:, 1], p[:, 0]) + math.pi) / (2 * math.pi) * 0.1 - 0.1  # one sweep
    return out


LAST_MIN: dict[str, float] = {}  # min of the last median_ms call (the least-contended sample)


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    ts = sample_ms(fn, repeats, warmup)
    LAST_MIN["ms"] = min(ts)
    return statistics.median(ts)


def bench_encoders(grid: BevGrid, lidar, radar, camera, repeats: int) -> dict:
    stages: dict[str, list[float]] = {}

    def run():
        f = encode_frame(grid, lidar, radar, camera, ego_twist=(10.0, 0.0, 0.1))
        for k, v in f.stats["timings_ms"].items():
            stages.setdefault(k, []).append(v)
        for k, v in f.stats["lidar_stage_ms"].items():
            stages.setdefault(f"lidar.{k}", []).append(v)
        return f

    total = median_ms(run, repeats)
    res = {"encode_frame_total": round(total, 3), "encode_frame_total_min": round(LAST_MIN["ms"], 3)}
    f = run()
    res.update({k: round(statistics.median(v[2:] or v), 3) for k, v in stages.items()})
    res["lidar_flat_ground"] = round(median_ms(
        lambda: encode_lidar(grid, lidar.points, lidar.T_base_sensor, (10.0, 0.0, 0.1), ground="flat"), repeats), 3)
    res["points_used"] = f.stats["lidar_used"]
    return res


def bench_ground(lidar: LidarScan, repeats: int) -> dict:
    pts = lidar.points
    xyz = np.c_[pts["x"], pts["y"], pts["z"]].astype(np.float32) @ lidar.T_base_sensor[:3, :3].T.astype(np.float32)
    xyz += lidar.T_base_sensor[:3, 3].astype(np.float32)
    xt = torch.from_numpy(xyz)
    p_t = fit_ground_plane(xt)
    p_o = fit_ground_plane_open3d(xyz)
    truth = np.array([-0.02, 0.0, 1.0]) / math.hypot(0.02, 1.0)  # the synthetic ground's normal

    def angle(n):
        return math.degrees(math.acos(min(1.0, float(np.dot(n, truth)))))

    return {
        "points": len(xyz),
        "torch_ransac_ms": round(median_ms(lambda: fit_ground_plane(xt), repeats), 3),
        "open3d_segment_plane_ms": round(median_ms(lambda: fit_ground_plane_open3d(xyz), repeats), 3),
        "torch_normal_error_deg": round(angle(np.array(p_t.normal)), 4),
        "open3d_normal_error_deg": round(angle(np.array(p_o.normal)), 4),
        "torch_ground_z_at_origin": round(-p_t.d / p_t.normal[2], 4),
        "open3d_ground_z_at_origin": round(-p_o.d / p_o.normal[2], 4),
        # sensor at base x = 1: ground z_base = 0.02 * (x_base - 1) + (1.8 - 1.8) -> -0.02 at x = 0
        "true_ground_z_at_origin": -0.02,
    }


def bench_model(kind: str, cells: int, repeats: int) -> dict:
    cfg = PerceptionConfig.model_validate(
        {"grid": {"length_x": cells * 0.5, "length_y": cells * 0.5}, "model": {"kind": kind}})
    model = BevPerceptionModel(cfg).eval()
    x = torch.rand(1, model.in_channels, cells, cells)
    dt = torch.tensor([0.1])
    box = {"s": model.init_state(1)}
    grid = model.grid
    motion = (0.37, 0.05, 0.01)  # ~3.7 m/s at 10 Hz with a little yaw: a non-aligned warp

    def step():
        _out, box["s"] = model.step(x, box["s"], dt)

    def warp():
        box["s"] = warp_state(box["s"], motion, grid)

    with torch.inference_mode():
        step_ms = median_ms(step, repeats)
        step_min = LAST_MIN["ms"]
        warp_ms = median_ms(warp, repeats)
        warp_min = LAST_MIN["ms"]
    state_bytes = sum(v.numel() * v.element_size() for v in box["s"].values())
    return {"step_ms": round(step_ms, 3), "warp_ms": round(warp_ms, 3),
            "step_min_ms": round(step_min, 3), "warp_min_ms": round(warp_min, 3),
            "warp_plus_step_ms": round(step_ms + warp_ms, 3), "state_bytes": state_bytes,
            "state_bytes_per_cell": state_bytes // (cells * cells),
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 200, 256])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--kinds", nargs="+", default=["logodds", "single", "convgru", "attention", "mamba"])
    ap.add_argument("--out", default="results/bench_core_cpu.json")
    args = ap.parse_args()

    t_bl = make_transform((1.0, 0.0, SENSOR_HEIGHT))
    lidar = LidarScan(synthetic_lidar(args.points), t_bl)
    rng = np.random.default_rng(1)
    radar_pts = np.c_[rng.uniform(0, 60, 200), rng.uniform(-20, 20, 200), rng.uniform(-1, 1, 200),
                      rng.normal(0, 5, 200), rng.normal(5, 5, 200)].astype(np.float32)
    radar = RadarScan(radar_pts, make_transform((3.5, 0.0, 0.5)))
    t_bc = np.eye(4)
    t_bc[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    t_bc[:3, 3] = (1.5, 0.0, 1.5)
    k = np.array([[1000.0, 0, 640], [0, 1000.0, 360], [0, 0, 1]])
    camera = CameraFrame(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), k, t_bc)

    result: dict = {
        "script": "scripts/bench_core_cpu.py",
        "command": "python " + " ".join(sys.argv),
        "note": ("medians and mins over repeats; 'model' step = stem + temporal core + heads on one frame "
                 "(batch 1, inference_mode), 'warp' = warp_state of that kind's state with a non-aligned "
                 "motion. On a shared 2-core machine (see load_avg) 2-thread timings suffer from OpenMP "
                 "barrier stalls; the per-call min is the least contended sample."),
        "args": vars(args),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_before": os.getloadavg()[0],
        "lidar_points": len(lidar.points),
        "by_threads": {},
    }
    jobs = [(th, s, what) for th in args.threads for s in args.sizes for what in ["encoders", *args.kinds]]
    for th in args.threads:
        torch.set_num_threads(th)
        result["by_threads"][str(th)] = {"encoders": {}, "model": {}, "ground_plane": bench_ground(lidar, args.repeats)}
    for th, size, what in tqdm(jobs, desc="bench"):
        torch.set_num_threads(th)
        entry = result["by_threads"][str(th)]
        if what == "encoders":
            entry["encoders"][f"{size}x{size}"] = bench_encoders(BevGrid.square(size), lidar, radar, camera, args.repeats)
        else:
            try:
                entry["model"].setdefault(what, {})[f"{size}x{size}"] = bench_model(what, size, max(5, args.repeats // 2))
            except ImportError as exc:  # the mamba core may not be importable in every checkout
                entry["model"][what] = {"error": str(exc)}
    result["load_avg_1min_after"] = os.getloadavg()[0]
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "by_threads"}, indent=2))
    for th, e in result["by_threads"].items():
        for size, r in e["encoders"].items():
            print(f"threads={th} {size} encoders: {r}")
        for kind, per in e["model"].items():
            print(f"threads={th} {kind}: " + ", ".join(
                f"{s} step {r['step_ms']} ms warp {r['warp_ms']} ms" if "step_ms" in r else f"{s} {r}"
                for s, r in per.items()) if "error" not in per else f"threads={th} {kind}: {per}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
