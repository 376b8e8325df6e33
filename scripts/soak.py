"""Soak test: replay a simulated drive in a loop through PerceptionPipeline for N minutes and fail on
memory growth or latency creep.

    .venv/bin/python scripts/soak.py [--minutes 30] [--grid 64] [--kind mamba] [--device cpu|cuda]
                                     [--out results/soak_30min.json]

What runs: the offline PerceptionPipeline (the same ``process`` the ROS node calls per LiDAR frame:
reset policy, encoders, warp, temporal step, heads, tracker, health), fed a few seconds of the
simulator's 'urban' drive with LiDAR, radar and camera, over and over. Like ``ros2 bag play --loop``
the stamps jump back at every wrap, so the reset path is exercised once per loop. This does not go
through DDS: message (de)serialization and the executor are not in the loop.

Recorded over time: process RSS, GPU memory (allocated and reserved, with --device cuda) and the
latency of every frame (wall and process CPU time). After the warm-up:

- memory growth: median RSS of the last 10 % of the samples vs the first 10 % must grow by at most
  --max-growth (1 %); the same for GPU allocated memory;
- latency creep: p50 of the last quarter of the frames must stay <= p50 of the first quarter
  * 1.1 + 2 ms. ``--creep-clock cpu`` judges the process CPU time per frame instead of wall time
  and ``--creep-percentile`` another percentile than 50: on a machine shared with other jobs, wall
  time (and the upper percentiles of CPU time) also measure the neighbours, while a real creep
  (work that grows with the frames processed) moves every percentile.

With ``--mode dds`` the node runs as its own process; ``--memory-profile FILE`` makes it write a
JSON-lines memory profile (smaps_rollup, glibc mallinfo2, tracemalloc growth; see
perception_node.MemoryProfile) and ``--node-env KEY=VALUE`` sets its environment (allocator A/B runs).
The RSS series comes with its anonymous part (``rss_anon_mib``).

Writes the JSON (settings, environment, time series, checks) and a PNG next to it; exit 1 when a
check fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CREEP_FACTOR = 1.1
CREEP_SLACK_MS = 2.0


# ------------------------------------------------------------------------------------- checks
def memory_growth(samples: list[float], fraction: float = 0.1) -> dict:
    """Relative growth of the median of the last ``fraction`` of samples over the first ``fraction``."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size < 4:
        return {"growth": None, "first": None, "last": None, "reason": f"only {a.size} samples after warm-up"}
    k = max(1, round(a.size * fraction))
    first, last = float(np.median(a[:k])), float(np.median(a[-k:]))
    return {"growth": (last - first) / first if first > 0 else 0.0, "first": first, "last": last, "window": k}


def latency_creep(latencies_ms: list[float], percentile: float = 50.0) -> dict:
    """A percentile (p50 unless told) of the first and last quarter of the frames, and the limit
    the last one must stay under. ``first``/``last`` are that percentile."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size < 8:
        return {"first": None, "last": None, "limit": None, "reason": f"only {a.size} frames after warm-up"}
    q = a.size // 4
    first, last = float(np.percentile(a[:q], percentile)), float(np.percentile(a[-q:], percentile))
    return {"percentile": percentile, "first": first, "last": last, "limit": first * CREEP_FACTOR + CREEP_SLACK_MS,
            "quarter_frames": q}


def evaluate(rss: list[float], gpu_alloc: list[float] | None, latency_ms: list[float], max_growth: float,
             creep_percentile: float = 50.0) -> dict:
    """The soak's verdict: one entry per check with its numbers and ``ok``."""
    checks = {}
    g = memory_growth(rss)
    g["ok"] = g["growth"] is not None and g["growth"] <= max_growth
    g["limit"] = max_growth
    checks["rss_growth"] = g
    if gpu_alloc:
        gg = memory_growth(gpu_alloc)
        gg["ok"] = gg["growth"] is not None and gg["growth"] <= max_growth
        gg["limit"] = max_growth
        checks["gpu_memory_growth"] = gg
    c = latency_creep(latency_ms, creep_percentile)
    c["ok"] = c["last"] is not None and c["last"] <= c["limit"]
    checks["latency_creep"] = c
    return checks


# -------------------------------------------------------------------------------------- inputs
def simulate_inputs(scenario: str, seed: int, seconds: float, grid, progress: bool) -> list:
    """FrameInputs of ``seconds`` of the scenario (all three sensors where present)."""
    from tqdm import tqdm

    from ssm_perception.pipeline import sim_inputs
    from ssm_perception.sim.scenario import Scenario

    sc = Scenario.from_preset(scenario, seed=seed, duration_s=seconds, grid=grid)
    out = list(sim_inputs(sc, frames=tqdm(sc.frames(), desc="simulate", disable=not progress, leave=False)))
    if len(out) < 4:
        raise ValueError(f"--bag-seconds {seconds}: only {len(out)} LiDAR frames; use a longer drive")
    return out


class FrameLog:
    """Per-frame (t, wall ms, CPU ms) in a preallocated, pre-touched array, and the last frames'
    stage latencies in a ring buffer: the soak's own bookkeeping must not grow the RSS it judges
    (Python lists of floats and dicts grew it by ~650 bytes per frame, 1.4 % in 30 minutes)."""

    def __init__(self, capacity: int, stages: int = 16, ring: int = 4096):
        self.rows = np.full((capacity, 3), np.nan)  # np.full writes every page now, not during the run
        self.ring = np.full((ring, stages), np.nan)
        self.stage_names: list[str] = []
        self.n = 0  # frames recorded
        self.dropped = 0  # frames beyond capacity (run, not recorded)

    def add(self, t: float, wall_ms: float, cpu_ms: float, stages: dict[str, float]) -> None:
        if self.n >= len(self.rows):
            self.dropped += 1
            return
        self.rows[self.n] = (t, wall_ms, cpu_ms)
        if not self.stage_names:
            self.stage_names = sorted(stages)[: self.ring.shape[1]]
        self.ring[self.n % len(self.ring), : len(self.stage_names)] = [stages.get(k, np.nan) for k in self.stage_names]
        self.n += 1

    def column(self, k: int) -> np.ndarray:
        return self.rows[: self.n, k]

    def stages_p50(self) -> dict[str, float]:
        last = self.ring[: min(self.n, len(self.ring))]
        return {name: round(float(np.nanmedian(last[:, i])), 3) for i, name in enumerate(self.stage_names)}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


# ------------------------------------------------------------------------------------- the run
def run(args) -> dict:
    return run_dds(args) if args.mode == "dds" else run_offline(args)


def run_offline(args) -> dict:
    import torch
    from tqdm import tqdm

    from ssm_perception.bench import environment, grid_config, model_config
    from ssm_perception.model import BevPerceptionModel
    from ssm_perception.pipeline import PerceptionPipeline

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    cfg = model_config(args.grid, args.kind, args.history, args.device, args.backend)
    frames = simulate_inputs(args.scenario, args.seed, args.bag_seconds, grid_config(args.grid), not args.quiet)
    # Random weights: the soak is about resources over time, which do not depend on their values
    # (and no checkpoint is shipped for every kind).
    model = BevPerceptionModel(cfg).to(device).eval()
    pipe = PerceptionPipeline(cfg, model=model)

    duration = 60.0 * args.minutes
    warmup = args.warmup_s if args.warmup_s is not None else min(60.0, max(10.0, 0.1 * duration))
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    t0 = time.perf_counter()
    log = FrameLog(max(1000, int(duration * args.max_fps)))
    samples = {"t": [], "rss": [], "gpu_alloc": [], "gpu_reserved": []}
    next_sample = 0.0
    k = 0
    bar = tqdm(total=int(duration), desc="soak [s]", disable=args.quiet, unit="s")
    while (now := time.perf_counter() - t0) < duration:
        inp = frames[k % len(frames)]
        c0, w0 = time.process_time(), time.perf_counter()
        out = pipe.process(inp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.add(now, 1e3 * (time.perf_counter() - w0), 1e3 * (time.process_time() - c0), out.latency_ms)
        k += 1
        if now >= next_sample:
            samples["t"].append(now)
            samples["rss"].append(rss_bytes())
            if device.type == "cuda":
                samples["gpu_alloc"].append(torch.cuda.memory_allocated(device))
                samples["gpu_reserved"].append(torch.cuda.memory_reserved(device))
            next_sample = now + args.sample_s
            bar.update(int(now) - bar.n)
        if period:  # paced replay (--rate): sleep off what is left of the frame period
            time.sleep(max(0.0, period - (time.perf_counter() - w0)))
    bar.close()

    frame_t, frame_wall, frame_cpu = log.column(0), log.column(1), log.column(2)
    keep = frame_t >= warmup
    s_keep = np.asarray(samples["t"]) >= warmup
    clock = frame_cpu if args.creep_clock == "cpu" else frame_wall
    checks = evaluate([r for r, ok in zip(samples["rss"], s_keep, strict=True) if ok],
                      [g for g, ok in zip(samples["gpu_alloc"], s_keep, strict=False) if ok] or None,
                      list(clock[keep]), args.max_growth, args.creep_percentile)
    checks["latency_creep"]["clock"] = args.creep_clock
    other = "wall" if args.creep_clock == "cpu" else "cpu"  # for the record only, not a check
    other_creep = latency_creep(list((frame_wall if other == "wall" else frame_cpu)[keep]),
                                args.creep_percentile) | {"clock": other}
    env = environment(device)
    env["load_avg_after"] = list(os.getloadavg())
    return {
        "format": "ssm_perception.soak/1",
        "mode": "offline PerceptionPipeline (no DDS)",
        "settings": {k2: v for k2, v in vars(args).items()},
        "environment": env | {"machine": platform.node()},
        "model": {"kind": args.kind, "backend": cfg.model.backend if args.kind == "mamba" else None,
                  "grid_cells": args.grid, "weights": "random"},
        "warmup_s": warmup,
        "frames": k,
        "frames_not_recorded": log.dropped,
        "loops": k / len(frames),
        "frames_per_loop": len(frames),
        "resets": pipe.reset_counts,
        "latency_ms_after_warmup": {
            "wall": _pcts(list(frame_wall[keep])),
            "cpu": _pcts(list(frame_cpu[keep])),
            f"stages_p50_last_{min(log.n, len(log.ring))}_frames": log.stages_p50(),
        },
        "checks": checks,
        "latency_creep_other_clock": other_creep,
        "passed": all(c["ok"] for c in checks.values()),
        "series": {
            "sample_t_s": [round(v, 2) for v in samples["t"]],
            "rss_mib": _mib(samples["rss"]),
            "gpu_alloc_mib": _mib(samples["gpu_alloc"]),
            "gpu_reserved_mib": _mib(samples["gpu_reserved"]),
            # per-frame series, thinned to at most ~4000 points to keep the file readable
            **_thin({"frame_t_s": list(frame_t), "frame_wall_ms": list(frame_wall), "frame_cpu_ms": list(frame_cpu)},
                    4000),
        },
    }


def run_dds(args) -> dict:
    """The node graph over DDS: perception_node (its model saved as a checkpoint with random weights)
    + the replay of a simulated bag with --loop, as `ssm-perception launch --bag BAG --loop` runs
    them. Samples the node process's RSS (and its GPU memory through nvidia-smi) and reads its
    per-frame compute time and pipeline latency (stamp -> publication) from /diagnostics."""
    import random
    import shutil
    import tempfile

    from ssm_perception.bench import environment, grid_config, model_config
    from ssm_perception.model import BevPerceptionModel, save_checkpoint
    from ssm_perception.nodes.launcher import (
        PROFILE_VARS,
        Graph,
        dds_env,
        node_command,
        replay_command,
    )
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    tmp = Path(tempfile.mkdtemp(prefix="soak_dds_"))
    try:
        cfg = model_config(args.grid, args.kind, args.history, args.device, args.backend)
        if args.kind != "logodds":  # without a checkpoint the node would fall back to 'logodds'
            ckpt = tmp / f"{args.kind}.safetensors"
            save_checkpoint(BevPerceptionModel(cfg), ckpt, {"purpose": "soak, random weights"})
            cfg.model.checkpoint = str(ckpt)
            cfg.model.allow_untrusted_weights = True  # random weights made here, not pinned in the package
        params = tmp / "params.yaml"
        params.write_text(cfg.to_yaml())
        sc = Scenario.from_preset(args.scenario, seed=args.seed, duration_s=args.bag_seconds, grid=grid_config(args.grid))
        write_bag(sc, tmp / "bag", progress=not args.quiet)
        env = dds_env()
        env.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(110, 200)))  # away from other runs
        env["PYTHONUNBUFFERED"] = "1"
        for item in args.node_env:  # A/B runs of allocator settings (MALLOC_ARENA_MAX=2, ...)
            key, _, value = item.partition("=")
            env[key] = value
        if args.memory_profile:
            env["SSM_PERCEPTION_MEMPROFILE"] = str(Path(args.memory_profile).resolve())
            env["SSM_PERCEPTION_MEMPROFILE_S"] = str(args.memory_profile_s)
        for key in ("ROS_DOMAIN_ID", *PROFILE_VARS):  # this process listens on the same graph
            if env.get(key):
                os.environ[key] = env[key]
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray

        diags: list = []
        log = (tmp / "graph.log").open("w")
        duration = 60.0 * args.minutes
        warmup = args.warmup_s if args.warmup_s is not None else min(60.0, max(10.0, 0.1 * duration))
        samples = {"t": [], "rss": [], "rss_anon": [], "gpu_alloc": [], "gpu_reserved": []}
        died = None
        rclpy.init()
        listener = rclpy.create_node("soak_listener")
        t0 = time.perf_counter()
        listener.create_subscription(DiagnosticArray, cfg.topics.diagnostics,
                                     lambda m: diags.append((time.perf_counter() - t0, m)), 10)
        with Graph(env=env) as graph:
            node = graph.start("perception_node", node_command(params, use_sim_time=True), stdout=log,
                               stderr=subprocess.STDOUT)
            graph.start("replay", replay_command(tmp / "bag", args.rate or 1.0, loop=True, quiet=True), stdout=log,
                        stderr=subprocess.STDOUT)
            next_sample = 0.0
            while (now := time.perf_counter() - t0) < duration:
                rclpy.spin_once(listener, timeout_sec=0.1)
                if (done := graph.poll()) is not None:
                    died = f"{done[0]} exited with code {done[1]} after {now:.0f} s"
                    break
                if now >= next_sample:
                    samples["t"].append(now)
                    samples["rss"].append(process_rss_bytes(node.pid))
                    samples["rss_anon"].append(process_rss_bytes(node.pid, "RssAnon"))
                    if args.device.startswith("cuda"):
                        samples["gpu_alloc"].append(nvidia_smi_process_bytes(node.pid))
                    next_sample = now + args.sample_s
        listener.destroy_node()
        rclpy.try_shutdown()
        log.close()
        frame_t, frame_ms, pipe_ms, resets = [], [], [], {}
        last_total = None
        for t, arr in diags:
            for st in arr.status:
                vals = {kv.key: kv.value for kv in st.values}
                if st.name.endswith("latency") and "total_ms.last" in vals:
                    key = (vals["total_ms.last"], vals.get("pipeline_latency_ms.last"))
                    if key != last_total:  # one sample per new frame seen by the diagnostics timer
                        frame_t.append(t)
                        frame_ms.append(float(vals["total_ms.last"]))
                        pipe_ms.append(float(vals.get("pipeline_latency_ms.last", "nan")))
                        last_total = key
                elif st.name.endswith(": state"):
                    resets = {k.split(".", 1)[1]: int(float(v)) for k, v in vals.items() if k.startswith("resets.")}
        keep = np.asarray(frame_t) >= warmup
        s_keep = np.asarray(samples["t"]) >= warmup
        checks = evaluate([r for r, ok in zip(samples["rss"], s_keep, strict=True) if ok],
                          [g for g, ok in zip(samples["gpu_alloc"], s_keep, strict=False) if ok] or None,
                          [v for v, ok in zip(frame_ms, keep, strict=True) if ok], args.max_growth,
                          args.creep_percentile)
        checks["latency_creep"]["clock"] = "wall (node's total_ms from /diagnostics)"
        if died is not None or not frame_ms:
            checks["graph_alive"] = {"ok": False, "reason": died or "no latency in /diagnostics",
                                     "log_tail": (tmp / "graph.log").read_text()[-2000:]}
        import torch

        env_out = environment(torch.device("cpu")) | {"load_avg_after": list(os.getloadavg()),
                                                      "ROS_DOMAIN_ID": env["ROS_DOMAIN_ID"]}
        return {
            "format": "ssm_perception.soak/1",
            "mode": "dds: perception_node + looping bag replay (ssm_perception.nodes.launcher)",
            "settings": dict(vars(args)),
            "environment": env_out,
            "model": {"kind": args.kind, "backend": cfg.model.backend if args.kind == "mamba" else None,
                      "grid_cells": args.grid, "weights": "random"},
            "warmup_s": warmup,
            "frames": len(frame_ms),
            "loops": float(resets.get("time_backwards", 0)),
            "frames_per_loop": None,
            "resets": resets,
            "latency_ms_after_warmup": {
                "wall": _pcts([v for v, ok in zip(frame_ms, keep, strict=True) if ok]),
                "pipeline_latency": _pcts([v for v, ok in zip(pipe_ms, keep, strict=True) if ok and np.isfinite(v)]),
            },
            "checks": checks,
            "passed": all(c["ok"] for c in checks.values()),
            "series": {
                "sample_t_s": [round(v, 2) for v in samples["t"]],
                "rss_mib": _mib(samples["rss"]),
                "rss_anon_mib": _mib(samples["rss_anon"]),
                "gpu_alloc_mib": _mib(samples["gpu_alloc"]),
                "gpu_reserved_mib": [],
                "frame_t_s": [round(v, 3) for v in frame_t], "frame_wall_ms": [round(v, 3) for v in frame_ms],
                "frame_cpu_ms": [], "frame_stride": 1,
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def process_rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status (VmRSS: all resident; RssAnon: heap and other anonymous)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def nvidia_smi_process_bytes(pid: int) -> int:
    """GPU memory of one process as the driver reports it (0 if it has none or nvidia-smi is absent)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return int(float(parts[1])) * 2**20
    return 0


def _mib(values) -> list[float]:
    """Bytes -> MiB, rounded for the JSON series."""
    return [round(v / 2**20, 2) for v in values]


def _pcts(v: list[float]) -> dict:
    if not v:
        return {"n": 0}
    a = np.asarray(v)
    return {"p50": round(float(np.median(a)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def _thin(series: dict[str, list[float]], max_points: int) -> dict:
    n = len(next(iter(series.values())))
    step = max(1, -(-n // max_points))
    return {k: [round(float(x), 3) for x in v[::step]] for k, v in series.items()} | {"frame_stride": step}


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["series"]
    gpu = bool(s["gpu_alloc_mib"])
    fig, axes = plt.subplots(3 if gpu else 2, 1, figsize=(9, 8 if gpu else 6), sharex=True)
    ax = axes[0]
    ax.plot(s["sample_t_s"], s["rss_mib"], lw=1)
    ax.axvline(result["warmup_s"], color="grey", ls="--", lw=0.8, label="end of warm-up")
    c = result["checks"]["rss_growth"]
    growth = "n/a" if c["growth"] is None else f"{100 * c['growth']:+.2f} %"
    ax.set_ylabel("RSS [MiB]")
    ax.set_title(f"soak {result['settings']['minutes']} min, {result['model']['kind']} "
                 f"{result['model']['grid_cells']}x{result['model']['grid_cells']}: RSS growth {growth}, "
                 f"{'PASS' if result['passed'] else 'FAIL'}")
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.plot(s["frame_t_s"], s["frame_wall_ms"], ".", ms=1.5, alpha=0.4, label="wall")
    if s["frame_cpu_ms"]:  # offline mode only
        ax.plot(s["frame_t_s"], s["frame_cpu_ms"], ".", ms=1.5, alpha=0.4, label="process CPU")
    lc = result["checks"]["latency_creep"]
    if lc.get("limit") is not None:
        ax.axhline(lc["first"], color="C2", lw=1, label=f"first-quarter p{lc['percentile']:g} ({lc['clock']})")
        ax.axhline(lc["limit"], color="C3", lw=1, ls="--", label="creep limit")
    ax.set_ylabel("frame latency [ms]")
    ax.legend(loc="upper right", markerscale=6)
    if gpu:
        axes[2].plot(s["sample_t_s"], s["gpu_alloc_mib"], label="allocated")
        axes[2].plot(s["sample_t_s"], s["gpu_reserved_mib"], label="reserved")
        axes[2].set_ylabel("GPU memory [MiB]")
        axes[2].legend()
    axes[-1].set_xlabel("time [s]")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["offline", "dds"], default="offline",
                    help="offline: PerceptionPipeline in this process; dds: the node graph with a looping replay")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--grid", type=int, default=64, help="grid cells per side (0.5 m cells)")
    ap.add_argument("--kind", default="mamba", choices=["mamba", "logodds", "single", "convgru", "attention"])
    ap.add_argument("--backend", default="reference", choices=["reference", "mamba_ssm", "fused"])
    ap.add_argument("--history", type=int, default=8, help="attention baseline: frames kept")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scenario", default="urban")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bag-seconds", type=float, default=6.0, help="length of the simulated drive that loops")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offline: frames per second, 0 = as fast as it runs; dds: replay speed factor (0 = 1)")
    ap.add_argument("--warmup-s", type=float, default=None, help="default: 10 %% of the run, 10..60 s")
    ap.add_argument("--sample-s", type=float, default=1.0, help="memory sampling period [s]")
    ap.add_argument("--max-fps", type=float, default=200.0,
                    help="offline: frames per second the per-frame log is sized for (preallocated)")
    ap.add_argument("--max-growth", type=float, default=0.01, help="allowed relative memory growth")
    ap.add_argument("--creep-clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--creep-percentile", type=float, default=50.0,
                    help="percentile compared between the first and last quarter (a real creep moves them "
                         "all; on a shared machine the low ones are the least disturbed by neighbours)")
    ap.add_argument("--memory-profile", default="",
                    help="dds: the node writes a JSON-lines memory profile here (smaps_rollup, mallinfo2, "
                         "tracemalloc growth; slows the node: for diagnosis, not for the verdict)")
    ap.add_argument("--memory-profile-s", type=float, default=10.0, help="seconds between profile records")
    ap.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                    help="dds: extra environment of the node's process (repeatable), for A/B runs")
    ap.add_argument("--out", default=None, help="default: results/soak_<minutes>min.json")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.grid <= 0:
        ap.error("--minutes and --grid must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out or REPO / "results" / f"soak_{args.minutes:g}min.json")
    try:
        result = run(args)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
    for name, c in result["checks"].items():
        print(f"{name}: {'ok' if c['ok'] else 'FAIL'} "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items() if k != "ok"))
    print(f"{result['frames']} frames ({result['loops']:.1f} loops), resets {result['resets']}; wrote {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
