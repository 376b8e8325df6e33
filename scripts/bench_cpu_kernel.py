#!/usr/bin/env python3
"""The Mamba state update of CPU inference: compiled loop (temporal/cpu_kernel.py) vs the torch block loop.

``MambaCore.warp_step`` with the shipped model's sizes (d_model 32, 4 heads x 16 x 8 state), a
non-aligned ego motion (bilinear warp gathered inside the update) and the previous-but-one state
handed back as the output buffer, as ``PerceptionPipeline.process`` runs it; one torch thread. The
two paths alternate call by call on the same inputs, so both see the same load. Per path and grid:
p50/p99 of the thread's CPU time and of the wall time; the load average is recorded.

    PYTHONPATH=$PWD python3 scripts/bench_cpu_kernel.py -o results/bench_cpu_kernel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", default="64,80,100,128")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("-o", "--output", default=str(ROOT / "results" / "bench_cpu_kernel.json"))
    args = ap.parse_args(argv)
    from ssm_perception.threads import configure_threads

    configure_threads(1)
    import torch

    from ssm_perception.bev.grid import BevGrid
    from ssm_perception.config import ModelConfig
    from ssm_perception.temporal import cpu_kernel
    from ssm_perception.temporal.mamba import MambaCore

    torch.set_grad_enabled(False)
    core = MambaCore(32, ModelConfig()).eval()
    real = cpu_kernel.ssm_update
    paths = {"compiled": real, "torch": lambda *a, **k: False}
    loads, rows = [os.getloadavg()[0]], []
    for n in (int(s) for s in args.grids.split(",")):
        grid = BevGrid.square(n, 0.5)
        g = torch.Generator().manual_seed(n)
        x = torch.randn(1, 32, n, n, generator=g)
        states = [torch.randn(1, core.state_channels, n, n, generator=g).contiguous(memory_format=torch.channels_last)
                  for _ in range(2)]
        dt = torch.tensor([0.1])
        samples = {k: ([], []) for k in paths}
        for it in range(args.iters + 2):
            for name, fn in paths.items():
                cpu_kernel.ssm_update = fn
                c, t = time.thread_time(), time.perf_counter()
                core.warp_step(x, {"ssm": states[0]}, (0.43, 0.12, 0.03), dt, None, grid, out={"ssm": states[1]})
                if it >= 2:
                    samples[name][0].append(1e3 * (time.thread_time() - c))
                    samples[name][1].append(1e3 * (time.perf_counter() - t))
        cpu_kernel.ssm_update = real
        loads.append(os.getloadavg()[0])
        row = {"grid": n, "cells": n * n}
        for name, (cpu, wall) in samples.items():
            row[name] = {"cpu_ms_p50": round(float(np.percentile(cpu, 50)), 2),
                         "cpu_ms_p99": round(float(np.percentile(cpu, 99)), 2),
                         "wall_ms_p50": round(float(np.percentile(wall, 50)), 2),
                         "wall_ms_p99": round(float(np.percentile(wall, 99)), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"format": "ssm_perception.bench_cpu_kernel/1", "machine": platform.node(), "cpus": os.cpu_count(),
              "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
              "numba": __import__("numba").__version__ if cpu_kernel.available() else None,
              "what": "MambaCore.warp_step (projections, warp gathered in the update, SSM update, output "
                      "block), shipped sizes, 1 torch thread, out buffer; the two paths interleaved",
              "load_avg_1min": {"min": round(min(loads), 2), "max": round(max(loads), 2)}, "rows": rows}
    from ssm_perception.bench import write_result

    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
