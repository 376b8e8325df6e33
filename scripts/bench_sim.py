"""Benchmark: time to simulate the urban preset with all three sensors and write it as a bag.

    .venv/bin/python scripts/bench_sim.py [--duration 20] [--out results/bench_sim.json]

Target (issue 4): 20 s of urban in under 60 s on 2 CPU cores. Also times each sensor model alone
(mean ms per message) so regressions can be located.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ssm_perception.bench import cpu_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="urban")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench_sim.json")
    args = ap.parse_args()

    from ssm_perception.io.bag import bag_topics
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        sc = Scenario.from_preset(args.scenario, seed=args.seed, duration_s=args.duration)
        t_build = time.perf_counter() - t0
        write_bag(sc, tmp / "bag", progress=False)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0
        load_after = os.getloadavg()
        topics = bag_topics(tmp / "bag")
        size = sum(f.stat().st_size for f in (tmp / "bag").iterdir())

        # per-sensor cost on a fresh scenario (no cache), a few messages each
        sc2 = Scenario.from_preset(args.scenario, seed=args.seed + 1, duration_s=args.duration)
        per = {}
        pts = []
        for sensor, n in (("lidar", 20), ("radar", 20), ("camera", 20)):
            ts = []
            for k in range(n):
                m = sc2.measurement(sensor, 5 + k)
                t = time.perf_counter()
                if sensor == "lidar":
                    fr = sc2.lidar_frame(m, with_others=False)
                    pts.append(len(fr.lidar))
                elif sensor == "radar":
                    sc2.radar_scan(m)
                else:
                    sc2.camera_frame(m)
                ts.append(time.perf_counter() - t)
            per[sensor] = round(1000 * float(np.mean(ts)), 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lidar_topic = "/sensing/lidar/points"
    result = {
        "scenario": args.scenario,
        "duration_s": args.duration,
        "seed": args.seed,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "scenario_build_seconds": round(t_build, 2),
        "realtime_factor": round(args.duration / seconds, 2),
        "target_seconds": 60.0 * args.duration / 20.0,
        "frames": topics[lidar_topic][1],
        "messages": {t: c for t, (_, c) in sorted(topics.items())},
        "points_per_scan_mean": int(np.mean(pts)),
        "points_per_scan_min": int(np.min(pts)),
        "points_per_scan_max": int(np.max(pts)),
        "ms_per_message": {"lidar_with_ground_truth": per["lidar"], "radar": per["radar"], "camera": per["camera"]},
        "bag_bytes": size,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
