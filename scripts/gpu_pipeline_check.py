#!/usr/bin/env python3
"""The whole PerceptionPipeline on CUDA against the same pipeline on the CPU (run on the GPU machine).

Unit tests run the pipeline on the CPU only; this script drives both devices frame by frame over a
simulated drive with adversities (dropouts, time gaps, localization jumps, NaN points), so that the
paths that only run on some frames (full resets, partial resets of stale cells, the health
monitor) also run on the GPU. It records per frame the reset reasons (must be equal), the largest
occupancy difference, the detection counts, and fails (exit 1) on a device error, a reset-reason
mismatch or an occupancy difference above --tol.

    PYTHONPATH=$PWD python3 scripts/gpu_pipeline_check.py --out $OUT/gpu_pipeline_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def simulated_inputs(scenario: str, seed: int, seconds: float, grid) -> list:
    from ssm_perception.pipeline import sim_inputs
    from ssm_perception.sim.scenario import Scenario

    sc = Scenario.from_preset(scenario, seed=seed, duration_s=seconds, grid=grid)
    return list(sim_inputs(sc))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="adversity_mix")
    ap.add_argument("--seed", type=int, default=200001)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--tol", type=float, default=0.02, help="max |P_cuda - P_cpu| of occupancy (bf16-free fp32 path)")
    ap.add_argument("--backend", default="reference", choices=["reference", "mamba_ssm", "fused"],
                    help="Mamba backend of the CUDA pipeline (the CPU one is always the reference)")
    ap.add_argument("--stale-s", type=float, default=0.0,
                    help="> 0: reset.unobserved_cell_reset_s for both pipelines (short: partial resets happen often)")
    ap.add_argument("--out", type=Path, default=Path("gpu_pipeline_check.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2

    from ssm_perception.config import PerceptionConfig
    from ssm_perception.pipeline import PerceptionPipeline

    cfgs = {d: PerceptionConfig.load(None, d) for d in ("cpu", "cuda")}
    cfgs["cuda"].model.backend = args.backend
    for c in cfgs.values():
        if args.stale_s > 0:
            c.reset.unobserved_cell_reset_s = args.stale_s
    inputs = simulated_inputs(args.scenario, args.seed, args.seconds, cfgs["cpu"].grid)
    pipes = {d: PerceptionPipeline(c) for d, c in cfgs.items()}
    frames, failures = [], []
    for i, inp in enumerate(inputs):
        rec: dict = {"frame": i}
        outs = {}
        for d, p in pipes.items():
            t0 = time.perf_counter()
            try:
                outs[d] = p.process(inp)
            except Exception as exc:  # noqa: BLE001  (the point of the check: record any device error with its frame)
                failures.append(f"frame {i} on {d}: {type(exc).__name__}: {exc}")
                outs[d] = None
            rec[f"{d}_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        a, b = outs["cpu"], outs["cuda"]
        if a is None or b is None:
            frames.append(rec)
            break
        ra, rb = sorted(a.reset.reasons), sorted(b.reset.reasons)
        rec.update(reasons=rb, partial_cells=int(b.reset.cell_mask.sum()) if b.reset.cell_mask is not None else 0,
                   occ_max_diff=float(np.nanmax(np.abs(a.occupancy - b.occupancy))),
                   detections=[len(a.detections_base), len(b.detections_base)])
        if ra != rb:
            failures.append(f"frame {i}: reset reasons differ cpu {ra} cuda {rb}")
        if rec["occ_max_diff"] > args.tol:
            failures.append(f"frame {i}: occupancy differs by {rec['occ_max_diff']:.4f} > {args.tol}")
        frames.append(rec)
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
        "backend": args.backend, "scenario": args.scenario, "seed": args.seed, "frames": len(frames),
        "unobserved_cell_reset_s": cfgs["cuda"].reset.unobserved_cell_reset_s,
        "model": {k: v for k, v in pipes["cuda"].model_info.items() if k != "metadata"},
        "frames_with_full_reset": sum(1 for f in frames if f.get("reasons") and f.get("partial_cells", 0) == 0),
        "frames_with_partial_reset": sum(1 for f in frames if f.get("partial_cells", 0) > 0),
        "occ_max_diff": max((f.get("occ_max_diff", 0.0) for f in frames), default=None),
        "cuda_ms_p50": float(np.median([f["cuda_ms"] for f in frames[5:]])) if len(frames) > 5 else None,
        "cpu_ms_p50": float(np.median([f["cpu_ms"] for f in frames[5:]])) if len(frames) > 5 else None,
        "tolerance": args.tol, "failures": failures, "ok": not failures, "per_frame": frames,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "per_frame"}, indent=2, default=str))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
