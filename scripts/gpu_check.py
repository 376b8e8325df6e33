#!/usr/bin/env python3
"""GPU parity and latency of the Mamba temporal core (run on the GPU machine; see the issue notes).

Writes two JSON files:
- gpu_parity.json: device, driver and versions; max abs error at 200x200 of the GPU backends
  (reference, mamba_ssm, fused) against each other and against a float64 CPU reference, for one
  step, one warped step and a parallel sequence.
- bench_gpu_temporal.json: latency p50/p99 of the temporal update (ego-motion warp + state step)
  at 128^2/200^2/256^2 for every backend, eager and as a CUDA graph, both for the whole MambaCore
  step (projections and spatial mixing included) and for the state update alone; the bandwidth
  bound of the state (bytes read + written per step over the measured device-to-device copy
  bandwidth and over the nominal H100 SXM peak) and achieved / limit.

    python3 scripts/gpu_check.py --out results/           # on the GPU machine
    python3 scripts/gpu_check.py --device cpu --sizes 16  # logic smoke test here (TRITON_INTERPRET=1)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ModelConfig
from ssm_perception.temporal import fused_step
from ssm_perception.temporal.mamba import MambaCore
from ssm_perception.temporal.warp import source_indices, warp_state

C_IN = 64  # BEV feature channels entering the core (the encoders' order of magnitude)
NOMINAL_HBM_BPS = 3.35e12  # H100 SXM5 HBM3 datasheet peak
MOTION = (0.43, 0.12, 0.03)  # 10 Hz at ~4.5 m/s with a gentle turn: a non-aligned, bilinear warp


def versions() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for pkg in ("triton", "mamba-ssm", "einops"):
        try:
            info[pkg.replace("-", "_")] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg.replace("-", "_")] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            check=False, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["driver"] = f"unknown ({exc})"
    return info


def have_mamba_ssm() -> bool:
    try:
        from ssm_perception.temporal import mamba_kernels

        mamba_kernels._ops()
        return True
    except Exception as exc:  # noqa: BLE001 - reported, the other backends still run
        print(f"mamba_ssm backend unavailable: {exc}")
        return False


def make_cores(device: str, backends: list[str]) -> dict[str, MambaCore]:
    torch.manual_seed(0)
    ref = MambaCore(C_IN, ModelConfig()).to(device).eval()
    cores = {"reference": ref}
    for b in backends:
        if b != "reference":
            c = MambaCore(C_IN, ModelConfig(backend=b)).to(device).eval()
            c.load_state_dict(ref.state_dict())
            cores[b] = c
    return cores


def _to(device: str, t: torch.Tensor) -> torch.Tensor:
    return t.to(device)


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


# ---------------------------------------------------------------------------------------- parity
@torch.no_grad()
def parity(device: str, backends: list[str], n: int, seq_len: int = 8) -> dict:
    cores = make_cores(device, backends)
    ref = cores["reference"]
    grid = BevGrid.square(n, 0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, C_IN, n, n, generator=g)
    st = {"ssm": torch.randn(1, ref.state_channels, n, n, generator=g) * 0.5}
    mask = torch.rand(1, n, n, generator=g) < 0.05
    dt = torch.tensor([0.1])
    xs = torch.randn(seq_len, 1, C_IN, n, n, generator=g)
    dts = torch.rand(seq_len, 1, generator=g) * 0.2 + 0.05
    cpu64 = MambaCore(C_IN, ModelConfig()).double().eval()
    cpu64.load_state_dict({k: v.double().cpu() for k, v in ref.state_dict().items()})
    st64 = {"ssm": st["ssm"].double()}
    out: dict = {"grid": [n, n], "cells": n * n, "seq_len": seq_len, "motion_dx_dy_dyaw": list(MOTION)}

    y64, s64 = cpu64.step(x.double(), st64, dt, mask)
    yw64, sw64 = cpu64.warp_step(x.double(), st64, MOTION, dt, mask, grid)
    ys64, ss64 = cpu64.forward_sequence(xs.double(), dts, None, st64)
    for name, core in cores.items():
        r: dict = {}
        y, s = core.step(_to(device, x), {"ssm": _to(device, st["ssm"])}, _to(device, dt), _to(device, mask))
        r["step_y_vs_fp64"], r["step_state_vs_fp64"] = err(y, y64), err(s["ssm"], s64["ssm"])
        y, s = core.warp_step(_to(device, x), {"ssm": _to(device, st["ssm"])}, MOTION, _to(device, dt), _to(device, mask), grid)
        r["warp_step_y_vs_fp64"], r["warp_step_state_vs_fp64"] = err(y, yw64), err(s["ssm"], sw64["ssm"])
        t0 = time.perf_counter()
        y, s = core.forward_sequence(_to(device, xs), _to(device, dts), None, {"ssm": _to(device, st["ssm"])})
        r["sequence_seconds_incl_compile"] = round(time.perf_counter() - t0, 2)
        r["sequence_y_vs_fp64"], r["sequence_state_vs_fp64"] = err(y, ys64), err(s["ssm"], ss64["ssm"])
        out[name] = r
        print(name, r)
    # the backends against the fp32 reference on the same device
    y_r, s_r = ref.warp_step(_to(device, x), {"ssm": _to(device, st["ssm"])}, MOTION, _to(device, dt), _to(device, mask), grid)
    ys_r, ss_r = ref.forward_sequence(_to(device, xs), _to(device, dts), None, {"ssm": _to(device, st["ssm"])})
    stream_state, stream_ys = {"ssm": _to(device, st["ssm"])}, []
    for t in range(seq_len):
        yy, stream_state = ref.step(_to(device, xs[t]), stream_state, _to(device, dts[t]))
        stream_ys.append(yy)
    out["reference_stream_vs_parallel"] = {"y": err(torch.stack(stream_ys), ys_r),
                                           "state": err(stream_state["ssm"], ss_r["ssm"])}
    for name, core in cores.items():
        if name == "reference":
            continue
        y, s = core.warp_step(_to(device, x), {"ssm": _to(device, st["ssm"])}, MOTION, _to(device, dt), _to(device, mask), grid)
        ys, ss = core.forward_sequence(_to(device, xs), _to(device, dts), None, {"ssm": _to(device, st["ssm"])})
        out[f"{name}_vs_reference"] = {"warp_step_y": err(y, y_r), "warp_step_state": err(s["ssm"], s_r["ssm"]),
                                       "sequence_y": err(ys, ys_r), "sequence_state": err(ss["ssm"], ss_r["ssm"])}
    if "fused" in cores:  # cell-aligned motion and nearest mode are exact gathers
        for label, motion, mode in (("integer_shift", (1.0, -0.5, 0.0), "bilinear"), ("nearest", MOTION, "nearest")):
            y1, s1 = ref.warp_step(_to(device, x), {"ssm": _to(device, st["ssm"])}, motion, _to(device, dt), _to(device, mask), grid, mode)
            y2, s2 = cores["fused"].warp_step(_to(device, x), {"ssm": _to(device, st["ssm"])}, motion, _to(device, dt), _to(device, mask), grid, mode)
            out[f"fused_vs_reference_{label}"] = {"y": err(y1, y2), "state": err(s1["ssm"], s2["ssm"])}
    return out


# ---------------------------------------------------------------------------------------- timing
def time_fn(fn, device: str, iters: int, warmup: int = 10) -> dict:
    """Latency per call in ms: CUDA events around each call, with an idle queue before each."""
    for _ in range(warmup):
        fn()
    if device != "cuda":
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    else:
        torch.cuda.synchronize()
        pairs = []
        for _ in range(iters):
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            pairs.append((a, b))
        torch.cuda.synchronize()
        ts = [a.elapsed_time(b) for a, b in pairs]
    t = torch.tensor(ts)
    return {"p50_ms": round(float(t.quantile(0.5)), 4), "p99_ms": round(float(t.quantile(0.99)), 4),
            "mean_ms": round(float(t.mean()), 4), "iters": iters}


def graphed(fn, device: str):
    """Capture fn (static inputs/outputs) in a CUDA graph; returns the replay function."""
    if device != "cuda":
        return None
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / time, median of 20."""
    if device != "cuda":
        return float("nan")
    a = torch.empty(2**28, device=device)
    a.uniform_()
    b = torch.empty_like(a)
    ms = time_fn(lambda: b.copy_(a), device, 20, warmup=3)["p50_ms"]
    return 2 * a.numel() * 4 / (ms * 1e-3)


@torch.no_grad()
def bench(device: str, backends: list[str], sizes: list[int], iters: int) -> dict:
    cores = make_cores(device, backends)
    ref = cores["reference"]
    bw = copy_bandwidth(device)
    res: dict = {"copy_bandwidth_Bps": bw, "nominal_bandwidth_Bps": NOMINAL_HBM_BPS,
                 "state_bytes_per_cell": ref.state_bytes_per_cell(), "in_channels": C_IN,
                 "config": ref.cfg.model_dump(), "motion_dx_dy_dyaw": list(MOTION), "sizes": {}}
    for n in sizes:
        res["sizes"][str(n)] = _bench_size(n, device, cores, iters, bw)
    return res


@torch.no_grad()
def _bench_size(n: int, device: str, cores: dict[str, MambaCore], iters: int, bw: float) -> dict:
    ref = cores["reference"]
    grid = BevGrid.square(n, 0.5)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(1, C_IN, n, n, generator=g).to(device)
    prev = {"ssm": (torch.randn(1, ref.state_channels, n, n, generator=g) * 0.5).to(device)}
    dt = torch.tensor([0.1], device=device)
    # the warp's sampling grid for a fixed motion, precomputed as warp.py computes it (a graph
    # cannot contain warp.py's host-side float64 geometry and its host-to-device copy)
    src = source_indices(MOTION, grid, 1)
    inside = ((src[..., 0] > -0.5) & (src[..., 0] < n - 0.5) & (src[..., 1] > -0.5) & (src[..., 1] < n - 0.5))
    inside = inside.to(device).unsqueeze(1)
    samp = torch.stack([(2 * src[..., 1] + 1) / n - 1, (2 * src[..., 0] + 1) / n - 1], -1).float().to(device)
    zero = torch.zeros((), device=device)

    def static_warp(t, samp=samp, inside=inside, zero=zero):
        out = torch.nn.functional.grid_sample(t, samp, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.where(inside, out, zero)

    aff, bil = fused_step.warp_params(MOTION, grid, 1, "bilinear")
    aff = aff.to(device)
    state_bytes = 2 * ref.state_bytes_per_cell() * n * n  # read once + write once
    row: dict = {"cells": n * n, "state_MB": ref.state_bytes_per_cell() * n * n / 1e6,
                 "bound_state_bytes": state_bytes,
                 "bound_ms_measured_bw": state_bytes / bw * 1e3,
                 "bound_ms_nominal_bw": state_bytes / NOMINAL_HBM_BPS * 1e3, "variants": {}}
    # projections of the current frame, for the state-update-only variants
    u = ref._pre(x)
    z, xs, b, c, step = ref._project(u, dt)
    y_buf = torch.empty_like(xs)
    h_buf = torch.empty_like(prev["ssm"])
    A, D = ref.A(), ref.D.float()
    nh, p, ds, ng = ref.nheads, ref.headdim, ref.d_state, ref.ngroups
    variants = {}
    for name, core in cores.items():
        if name == "fused":
            def full(core=core):  # whole MambaCore step with the in-kernel warp, static buffers
                uu = core._pre(x)
                zz, xx, bb, cc, ss = core._project(uu, dt)
                yy, _ = fused_step.fused_warp_step(prev["ssm"], zz, xx, bb, cc, ss, A, D, nh, p, ds, ng,
                                                   (aff, bil), None, out=(y_buf, h_buf))
                return core._post(uu, yy)

            def update():
                return fused_step.fused_warp_step(prev["ssm"], z, xs, b, c, step, A, D, nh, p, ds, ng,
                                                  (aff, bil), None, out=(y_buf, h_buf))

            variants["fused/full/eager_host_warp"] = lambda core=core: core.warp_step(x, prev, MOTION, dt, None, grid)
        else:
            def full(core=core):
                return core.step(x, {"ssm": static_warp(prev["ssm"])}, dt)

            if name == "reference":
                def update():
                    return ref._ssm_step_reference(static_warp(prev["ssm"]), z, xs, b, c, step)
            else:
                from ssm_perception.temporal import mamba_kernels

                def update(core=core):
                    return mamba_kernels.step(core, static_warp(prev["ssm"]), z, xs, b, c, step)

            variants[f"{name}/full/eager_warp_py"] = lambda core=core: core.step(x, warp_state(prev, MOTION, grid), dt)
        variants[f"{name}/full/eager"] = full
        variants[f"{name}/update/eager"] = update
        for kind, fn in (("full", full), ("update", update)):
            try:
                rep = graphed(fn, device)
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal
                rep = None
                row["variants"][f"{name}/{kind}/cuda_graph"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            if rep is not None:
                variants[f"{name}/{kind}/cuda_graph"] = rep
    if "fused" in cores:  # run 1's layout (one program per head and 128 cells), for comparison
        variants["fused/update/eager_block128_p16"] = lambda: fused_step.fused_warp_step(
            prev["ssm"], z, xs, b, c, step, A, D, nh, p, ds, ng, (aff, bil), None, out=(y_buf, h_buf),
            config={"BLOCK": 128, "P_PER": p})
    for label, fn in variants.items():
        torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
        r = time_fn(fn, device, iters)
        r["x_bound_measured_bw"] = round(r["p50_ms"] / row["bound_ms_measured_bw"], 2)
        r["achieved_over_limit"] = round(row["bound_ms_measured_bw"] / r["p50_ms"], 3)
        r["achieved_over_nominal_limit"] = round(row["bound_ms_nominal_bw"] / r["p50_ms"], 3)
        if device == "cuda":
            r["peak_mem_MB"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
        if label.startswith("fused/update/cuda_graph"):
            r["autotuned_config"] = fused_step.best_config()
        row["variants"][label] = r
        print(f"{n}^2 {label:36s} p50 {r['p50_ms']:.4f} ms  p99 {r['p99_ms']:.4f} ms  "
              f"x bound {r['x_bound_measured_bw']}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results", help="folder for gpu_parity.json and bench_gpu_temporal.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="128,200,256")
    ap.add_argument("--parity-size", type=int, default=200)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is for the GPU machine (use --device cpu for a logic smoke test)")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity in true fp32 (cudnn convs too)
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = versions()
    backends = ["reference", "fused"]
    if have_mamba_ssm():
        backends.insert(1, "mamba_ssm")
    info["backends"] = backends
    print(json.dumps(info, indent=1))
    t0 = time.time()
    par = {"env": info, **parity(args.device, backends, args.parity_size)}
    par["seconds"] = round(time.time() - t0, 1)
    (out / "gpu_parity.json").write_text(json.dumps(par, indent=2))
    t0 = time.time()
    sizes = [int(s) for s in args.sizes.split(",")]
    ben = {"env": info, **bench(args.device, backends, sizes, args.iters)}
    ben["seconds"] = round(time.time() - t0, 1)
    (out / "bench_gpu_temporal.json").write_text(json.dumps(ben, indent=2))
    # summary last (the device tool returns the tail of the output)
    print("\nparity (max abs err):")
    for k, v in par.items():
        if k.endswith("reference") or k.startswith("fused_vs") or k == "reference_stream_vs_parallel":
            print(f"  {k}: {v}")
    print(f"copy bandwidth {ben['copy_bandwidth_Bps'] / 1e12:.2f} TB/s")
    for n, row in ben["sizes"].items():
        print(f"{n}^2: state bound {row['bound_ms_measured_bw']:.4f} ms (measured bw), "
              f"{row['bound_ms_nominal_bw']:.4f} ms (nominal)")
        for label, r in row["variants"].items():
            if "p50_ms" in r:
                print(f"  {label:36s} p50 {r['p50_ms']:.4f}  p99 {r['p99_ms']:.4f}  x bound {r['x_bound_measured_bw']}")
            else:
                print(f"  {label:36s} {r}")


if __name__ == "__main__":
    main()
