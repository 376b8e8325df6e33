#!/usr/bin/env python3
"""CPU latency of the Mamba temporal core (reference backend) -> results/bench_mamba_cpu.json.

Per grid size (128^2, 200^2, 256^2), with torch.set_num_threads(2): latency p50/p99 of
- step: MambaCore.step on an already-warped state (projections, spatial mixing, SSM update),
- temporal update: ego-motion warp of the state (temporal/warp.py, bilinear, non-aligned motion)
  followed by step, i.e. what the pipeline runs per frame;
the state bytes per cell and per grid, and the time of forward_sequence over T frames against T
streaming steps. The host is shared with other jobs: the load average is recorded with the numbers.

    .venv/bin/python scripts/bench_mamba_cpu.py [--sizes 128,200,256] [--iters 40] [--out results/bench_mamba_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssm_perception.bench import percentiles, sample_ms
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ModelConfig
from ssm_perception.temporal.mamba import MambaCore
from ssm_perception.temporal.warp import warp_state

C_IN = 64  # BEV feature channels entering the core
MOTION = (0.43, 0.12, 0.03)  # one 10 Hz frame at ~4.5 m/s with a gentle turn (bilinear warp)


def latency(fn, iters: int, warmup: int = 3) -> dict:
    p = percentiles(sample_ms(fn, iters, warmup))
    return {"p50_ms": round(p["p50"], 2), "p99_ms": round(p["p99"], 2), "min_ms": round(p["min"], 2), "iters": iters}


def bench_size(core: MambaCore, n: int, iters: int, seq_len: int) -> dict:
    """Latencies on an n x n grid; seq_len > 0 also times forward_sequence against seq_len steps."""
    grid = BevGrid.square(n, 0.5)
    x = torch.randn(1, C_IN, n, n)
    state = {"ssm": torch.randn(1, core.state_channels, n, n) * 0.5}
    dt = torch.tensor([0.1])
    row = {"cells": n * n, "state_MB": round(core.state_bytes_per_cell() * n * n / 1e6, 2)}
    row["step"] = latency(lambda: core.step(x, state, dt), iters)
    row["warp"] = latency(lambda: warp_state(state, MOTION, grid), iters)
    row["temporal_update"] = latency(lambda: core.step(x, warp_state(state, MOTION, grid), dt), iters)
    if seq_len:
        xs = torch.randn(seq_len, 1, C_IN, n, n)
        dts = torch.full((seq_len, 1), 0.1)

        def streamed():
            s = core.init_state(1, n, n)
            for t in range(seq_len):
                _, s = core.step(xs[t], s, dts[t])

        row["forward_sequence"] = {"T": seq_len, **latency(lambda: core.forward_sequence(xs, dts), 5, warmup=1),
                                   "streamed_T_steps": latency(streamed, 5, warmup=1)}
    return row


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,200,256")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare-threads", type=int, default=1,
                    help="also time the smallest grid with this many threads (0 = skip): on a shared host, "
                         "2 threads that wait on each other suffer far more from other jobs than 1")
    ap.add_argument("--out", default="results/bench_mamba_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig()
    core = MambaCore(C_IN, cfg).eval()
    res = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "loadavg_before": os.getloadavg(), "in_channels": C_IN,
        "config": {k: cfg.model_dump()[k] for k in ("d_model", "d_state", "headdim", "expand")},
        "nheads": core.nheads, "state_bytes_per_cell": core.state_bytes_per_cell(),
        "parameters": sum(p.numel() for p in core.parameters()), "motion_dx_dy_dyaw": list(MOTION), "sizes": {},
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    for i, n in enumerate(tqdm(sizes, desc="grid sizes")):
        row = bench_size(core, n, args.iters, args.seq_len if i == 0 else 0)
        res["sizes"][str(n)] = row
        tqdm.write(f"{n}^2: step p50 {row['step']['p50_ms']} ms (p99 {row['step']['p99_ms']}), "
                   f"warp+step p50 {row['temporal_update']['p50_ms']} ms (p99 {row['temporal_update']['p99_ms']})")
    if args.compare_threads:
        torch.set_num_threads(args.compare_threads)
        row = bench_size(core, sizes[0], args.iters, 0)
        res[f"threads_{args.compare_threads}_at_{sizes[0]}"] = row
        tqdm.write(f"{sizes[0]}^2 with {args.compare_threads} thread(s): step p50 {row['step']['p50_ms']} ms, "
                   f"warp+step p50 {row['temporal_update']['p50_ms']} ms")
        torch.set_num_threads(args.threads)
    res["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
