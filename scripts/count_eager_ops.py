#!/usr/bin/env python3
"""Issue 21: torch ops per frame and stage of ``PerceptionPipeline.process``, counted on the CPU.

On a GPU every eager torch op outside a CUDA graph is a kernel launch (or several) and costs host
time (~5-20 us each), and some ops wait for the device (a host read of a device value: ``item``,
``bool``/``int`` of a tensor, boolean-mask indexing, ``nonzero``). This counts both on the CPU with
``torch.profiler`` (no GPU needed), over a simulated 200x200 drive with three sensors, so a change
can be checked before the H200 run (scripts/gpu_realtime_check.py reports the same on CUDA:
``transfers_one_frame.counts.cudaLaunchKernel``, ``eager_torch_ops``, ``host_syncs``).

The pipeline is set up as a CUDA pipeline runs (``--path device``, default): the stale-cell check
deferred to the read-back, the packed read-back, the encoders' padded graph inputs, the warp grids
built the device way; ``bev.device.GraphCache.run`` runs its functions eagerly on the CPU, and
what runs inside it is counted as *graphed* (one replay on CUDA), the rest as *eager*. The
temporal step, neck, heads and detection decode are one more CUDA graph on the GPU
(pipeline_graph.CudaGraphStep, fused backend); here the reference backend runs them eagerly and they
are counted as graphed; what the 'temporal' stage issues around them (the CPU kernel's own host
work) is not comparable with CUDA. Ops on host tensors (the motion's few numbers) count too, though
on CUDA they launch nothing.

Per stage (the pipeline's own stage boundaries: ops are attributed to the stage whose timer they
fall in), per frame: ``eager_ops`` (top-level aten ops outside GraphCache functions: what Python
issues), of them ``eager_compute_ops`` (not a mere view: about one kernel launch each on CUDA),
``host_tensor_ops`` (the warp parameters' torch ops on the motion's host numbers: no kernel on
CUDA), ``graphed_ops``, and ``sync_ops`` (aten::_local_scalar_dense, nonzero, masked_select,
is_nonzero outside graphs and host ops: each one a host wait on CUDA). A ``.tolist()``/``.cpu()`` of a CPU
tensor is invisible here (no op on the CPU): the CUDA run's ``host_syncs`` is the ground truth.

    python3 scripts/count_eager_ops.py                      # -> results/eager_ops_cpu.json
    python3 scripts/count_eager_ops.py --frames 4 --cells 64 -o /tmp/ops.json   # quick
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

FORMAT = "ssm_perception.eager_ops_cpu/1"
STAGES = ("reset", "encode", "warp", "temporal", "health", "heads", "total", "tracking")  # order of process' timers
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::is_nonzero")
MARK = "count_eager_ops:mark:"
GRAPH = "count_eager_ops:graph:"
HOST = "count_eager_ops:host:"
COPY_OPS = {"aten::_to_copy", "aten::clone", "aten::copy_", "aten::_reshape_copy", "aten::empty_like",
            "aten::empty_strided"}
# Ops that only make a new view (or nothing) of their input: no kernel on CUDA. aten::to, reshape and
# contiguous count as compute only when they copy (they then call further aten ops).
VIEW_OPS = {"aten::select", "aten::slice", "aten::view", "aten::reshape", "aten::unsqueeze", "aten::squeeze",
            "aten::permute", "aten::expand", "aten::expand_as", "aten::detach", "aten::resolve_conj",
            "aten::resolve_neg", "aten::lift_fresh", "aten::to", "aten::alias", "aten::as_strided",
            "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::t", "aten::transpose",
            "aten::contiguous", "aten::numpy_T", "aten::_unsafe_view"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cells", type=int, default=200, help="grid cells per side (0.5 m)")
    ap.add_argument("--frames", type=int, default=20, help="profiled frames")
    ap.add_argument("--warmup", type=int, default=3, help="frames before profiling")
    ap.add_argument("--scenario", default="urban")
    ap.add_argument("--seed", type=int, default=200000, help="held-out (training used seeds 0-143)")
    ap.add_argument("--path", choices=("device", "cpu"), default="device",
                    help="device: the CUDA pipeline's choices on the CPU (default); cpu: the plain CPU pipeline")
    ap.add_argument("--label", default="", help="a name for this run (e.g. before / after)")
    ap.add_argument("-o", "--output", default="", help="default results/eager_ops_cpu.json")
    ap.add_argument("--merge", action="store_true",
                    help="add this run to the output file's 'runs' under --label instead of replacing the file")
    return ap.parse_args(argv)


def frame_inputs(args):
    from ssm_perception.config import GridConfig
    from ssm_perception.pipeline import FrameInputs
    from ssm_perception.sim.scenario import Scenario

    grid = GridConfig(length_x=args.cells * 0.5, length_y=args.cells * 0.5)
    n = args.warmup + args.frames
    sc = Scenario.from_preset(args.scenario, seed=args.seed, duration_s=(n + 8) * 0.1, grid=grid)
    out = [FrameInputs.from_sim(sc.config, f) for f in sc.frames()]
    out = [f for f in out if f.radar is not None and f.image is not None]  # all three sensors
    if len(out) < n:
        raise SystemExit(f"the simulation gave {len(out)} frames with three sensors, need {n}")
    return out[:n]


def make_pipeline(args):
    import torch

    from ssm_perception import bench
    from ssm_perception.bev.device import GraphCache

    pipe, _, weights = bench.bench_pipeline(args.cells, "mamba", "reference", 1, torch.device("cpu"))
    if args.path == "device":  # as test/test_device_path.py: the CUDA pipeline's host-side choices
        pipe.policy.defer_cells = True
        pipe.packed_read_back = True
        pipe.encoder_graphs = GraphCache(pad_on_cpu=True)
        pipe.health.graphs = pipe.policy.graphs = pipe.encoder_graphs
        for obj, flag in ((pipe.policy, "age_on_device"), (pipe.health, "grid_on_device")):
            if hasattr(obj, flag):  # (switches that decide by the device type; absent in older commits)
                setattr(obj, flag, True)
    return pipe, weights


def instrument(pipe, device_path: bool) -> list:
    """Markers the profiler sees: one at each stage timer, and GraphCache functions wrapped.
    Returns the undo actions."""
    import functools

    import torch
    from torch.profiler import record_function

    from ssm_perception.bev import device as bev_device
    from ssm_perception.temporal import warp as warp_mod

    undo = []
    stage_iter = {"k": 0}
    orig_ms = pipe._ms

    def ms(t0):
        k = stage_iter["k"] % len(STAGES)
        stage_iter["k"] += 1
        v = orig_ms(t0)
        with record_function(MARK + STAGES[k]):
            pass
        return v

    pipe._ms = ms
    undo.append(lambda: delattr(pipe, "_ms"))
    orig_run = bev_device.GraphCache.run

    @functools.wraps(orig_run)
    def run(self, name, key, fn, *inputs):
        with record_function(GRAPH + name):
            return orig_run(self, name, key, fn, *inputs)

    bev_device.GraphCache.run = run
    undo.append(lambda: setattr(bev_device.GraphCache, "run", orig_run))
    # The motion's few numbers are turned into the warp parameters with torch ops on host tensors
    # (no kernel on CUDA): counted apart ('host_ops').
    from ssm_perception.temporal import fused_step as fused_mod

    for mod, name in ((warp_mod, "_se2_batch"), (warp_mod, "_as_se2_batch"), (fused_mod, "_warp_params"),
                      (fused_mod, "warp_params")):  # (older commits: the last two only)
        if hasattr(mod, name):
            orig_fn = getattr(mod, name)

            def host(*a, _f=orig_fn, **k):
                with record_function(HOST + _f.__name__):
                    return _f(*a, **k)

            setattr(mod, name, host)
            undo.append(lambda m=mod, n=name, f=orig_fn: setattr(m, n, f))
    if device_path:
        # On CUDA the temporal step, neck, heads and the detection decode replay as one CUDA graph
        # (pipeline_graph.CudaGraphStep): counted as graphed here, where they run eagerly.
        from ssm_perception import pipeline as pipeline_mod

        def graphed(fn, name):
            @functools.wraps(fn)
            def wrapper(*a, **k):
                with record_function(GRAPH + name):
                    return fn(*a, **k)
            return wrapper

        orig_do = pipeline_mod.device_outputs
        pipeline_mod.device_outputs = graphed(orig_do, "temporal_step")
        undo.append(lambda: setattr(pipeline_mod, "device_outputs", orig_do))
        for meth in ("warp_step", "step"):
            if hasattr(pipe.model, meth):
                setattr(pipe.model, meth, graphed(getattr(pipe.model, meth), "temporal_step"))
                undo.append(lambda m=meth: delattr(pipe.model, m))
    if device_path:  # the warp grids the device way (on CUDA: 'warp_grid' graph), as sampling_grid does off the CPU
        orig_sg = warp_mod.sampling_grid

        @functools.wraps(orig_sg)
        def sampling_grid(*a, **k):
            k.setdefault("on_device", True)
            return orig_sg(*a, **k)

        warp_mod.sampling_grid = sampling_grid
        undo.append(lambda: setattr(warp_mod, "sampling_grid", orig_sg))
        from ssm_perception.temporal import health as health_mod

        orig_h = health_mod.sampling_grid
        health_mod.sampling_grid = sampling_grid
        undo.append(lambda: setattr(health_mod, "sampling_grid", orig_h))
    del torch
    return undo


def count(prof, frames: int) -> dict:
    """Per stage: eager / graphed top-level aten ops and sync ops per frame, and the eager op names."""
    events = list(prof.events())
    marks = sorted((e.time_range.end, e.name[len(MARK):]) for e in events if e.name.startswith(MARK))
    ends = [t for t, _ in marks]
    names = [s for _, s in marks]
    import bisect

    def stage_of(t) -> str:
        i = bisect.bisect_left(ends, t)
        return names[i] if i < len(names) else "after"

    eager = collections.Counter()
    compute = collections.Counter()
    host_ops = collections.Counter()
    graphed = collections.Counter()
    syncs = collections.Counter()
    eager_names: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    sync_names: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    compute_names: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for e in events:
        n = e.name
        if not n.startswith("aten::"):
            continue
        in_graph, nested, on_host = False, False, False
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                nested = True
            if p.name.startswith(GRAPH):
                in_graph = True
            if p.name.startswith(HOST):
                on_host = True
            p = p.cpu_parent
        st = stage_of(e.time_range.start)
        if st == "total":  # ops between the heads timer and process' end (none expected)
            st = "heads"
        if n in SYNC_OPS and not in_graph and not on_host:
            syncs[st] += 1
            sync_names[st][n] += 1
        if nested:
            continue
        if in_graph:
            graphed[st] += 1
        elif on_host:
            host_ops[st] += 1
        else:
            eager[st] += 1
            eager_names[st][n] += 1
            copies = any(c.name in COPY_OPS for c in e.cpu_children)
            if n not in VIEW_OPS or (n in ("aten::to", "aten::reshape", "aten::contiguous") and copies):
                compute[st] += 1
                compute_names[st][n] += 1
    stages = [s for s in STAGES if s != "total"]
    per = {s: {"eager_ops": round(eager[s] / frames, 1), "eager_compute_ops": round(compute[s] / frames, 1),
               "host_tensor_ops": round(host_ops[s] / frames, 1), "graphed_ops": round(graphed[s] / frames, 1),
               "sync_ops": round(syncs[s] / frames, 2),
               "eager_compute_op_names": {k: round(v / frames, 1) for k, v in compute_names[s].most_common()},
               "sync_op_names": {k: round(v / frames, 2) for k, v in sync_names[s].most_common()},
               "top_eager_ops": {k: round(v / frames, 1) for k, v in eager_names[s].most_common(12)}}
           for s in stages}
    outside = ("temporal",)  # a CUDA graph of its own on the GPU (pipeline_graph.CudaGraphStep)
    return {"stages": per,
            "eager_ops_per_frame": round(sum(eager[s] for s in stages) / frames, 1),
            "eager_ops_per_frame_without_temporal": round(sum(eager[s] for s in stages if s not in outside) / frames, 1),
            "eager_compute_ops_per_frame": round(sum(compute[s] for s in stages) / frames, 1),
            "sync_ops_per_frame": round(sum(syncs[s] for s in stages) / frames, 2),
            "unattributed_ops": eager["after"] + graphed["after"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ssm_perception.threads import configure_threads

    configure_threads(1)
    inputs = frame_inputs(args)
    pipe, weights = make_pipeline(args)
    undo = instrument(pipe, args.path == "device")
    try:
        for inp in inputs[: args.warmup]:
            pipe.process(inp)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for inp in inputs[args.warmup:]:
                pipe.process(inp)
    finally:
        for u in reversed(undo):
            u()
    res = count(prof, args.frames)
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=root, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "ssm_perception"],
                               capture_output=True, text=True, cwd=root, check=False).stdout.strip()
        commit += "+uncommitted changes" if dirty else ""
    except OSError:
        commit = ""
    run = {"label": args.label, "commit": commit, "path": args.path, "cells": args.cells, "frames": args.frames,
           "warmup": args.warmup, "scenario": args.scenario, "seed": args.seed, "weights": weights,
           "torch": torch.__version__, "machine": platform.node(), **res}
    out = Path(args.output) if args.output else Path(__file__).resolve().parents[1] / "results" / "eager_ops_cpu.json"
    doc = {"format": FORMAT, "note": __doc__.split("\n\n")[1].replace("\n", " "), "runs": {}}
    if args.merge and out.exists():
        doc = json.loads(out.read_text())
    doc["runs"][args.label or args.path] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'stage':10s} {'eager':>7s} {'compute':>8s} {'host':>6s} {'graphed':>8s} {'syncs':>6s}")
    for s, v in res["stages"].items():
        print(f"{s:10s} {v['eager_ops']:7.1f} {v['eager_compute_ops']:8.1f} {v['host_tensor_ops']:6.1f} "
              f"{v['graphed_ops']:8.1f} {v['sync_ops']:6.2f}  "
              + ", ".join(f"{k[6:]} {n}" for k, n in v["sync_op_names"].items()))
    print(f"eager ops per frame {res['eager_ops_per_frame']} (compute {res['eager_compute_ops_per_frame']}), "
          f"sync ops per frame {res['sync_ops_per_frame']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
