"""`ssm-perception bench`: per-stage latency, memory and scaling of the whole frame step, for the
Mamba model and every baseline, in one run (so that ratios between them are fair).

    ssm-perception bench [--device cpu|cuda] [--grid 128,200] [--history 1,4,16,64] -o results/bench_cpu.json
    python -m ssm_perception.bench ...      # same, without the CLI's other sub-commands (GPU image)

Inputs are frames of the simulator's 'urban' preset, generated once as the messages the node
receives (PointCloud2- and Image-shaped objects, TF). Each model's full step is the node's frame,
with the functions the node calls (no copy of the step):

    decode     PointCloud2 (LiDAR, radar) and Image messages -> numpy (io.pointcloud2, io.ros_convert)
    assemble   pairing, TF lookups, ego twist, motion compensation (frame_assembler.FrameAssembler)
    reset .. health   PerceptionPipeline.process, per stage from its own timers (FrameOutputs.latency_ms;
               on CUDA the bench makes them wait for the device): reset, encode, warp, temporal, heads,
               tracking, health
    msg_encode OccupancyGrid, TrackArray, MarkerArray (io.ros_convert.frame_messages, as the node
               publishes them); reported unavailable where the ROS message packages are missing

``process`` is the wall time of the whole ``process`` call, ``full_step`` that of the frame. Each
model runs its shipped weights where they load for the grid (so detections, radar refinement and
tracking do their real work; recorded under ``weights``), else random ones. No frame is replayed
twice: warm-up + timed + 1 profiled frames are simulated.

History sweep (per model and history h): h frames are run first (the attention baseline keeps
K = h frames; Mamba's state is constant by construction, measured anyway), then the warp + step
is timed; peak memory is the memory the model, its state and one step add to the process
(CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS of a fresh child process, because PyTorch
keeps no CPU peak statistics).

Bandwidth bound of the temporal update: every step must read and write the whole state once, so
no implementation beats 2 * state_bytes / memory bandwidth; the bandwidth is measured with a large
device-to-device copy on the same run (and the vendor peak is recorded for known GPUs).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

FORMAT = "ssm_perception.bench/2"  # /2: the full step is PerceptionPipeline.process with decode and encode
MODELS = ("mamba", "logodds", "single", "convgru", "attention")
# PerceptionPipeline.process's own stages (FrameOutputs.latency_ms), and around them what the node
# does per frame: decode the messages, assemble the frame, encode the output messages. Disjoint: they
# add up to the full step (minus a little loop overhead).
PROCESS_STAGES = ("reset", "encode", "warp", "temporal", "heads", "tracking", "health")
STAGES = ("decode", "assemble", *PROCESS_STAGES, "msg_encode")
RESOLUTION = 0.5  # [m]: every benchmark grid keeps the default cell size, so larger grids see farther
# Vendor peak HBM bandwidth [GB/s] by device-name fragment, for the record next to the measured one.
NOMINAL_BANDWIDTH_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0,
                          "A100-SXM4-80GB": 2039.0, "A100": 1555.0}

# Targets of issue 10 (ratios measured in one run).
TARGET_FULL_STEP_P99_MS_GPU_200 = 10.0
TARGET_BANDWIDTH_RATIO = 2.0
TARGET_MAMBA_VS_ATTENTION_AT_16 = 4.0
TARGET_CPU_128_MS = 100.0
FLAT_TOLERANCE = 1.10  # "flat": peak at the longest history within 10 % of the shortest


@dataclass
class BenchSettings:
    device: str = "cpu"
    grids: list[int] = field(default_factory=lambda: [128, 200])
    histories: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    backends: list[str] = field(default_factory=lambda: ["reference"])  # Mamba backends, one entry each
    frames: int = 20  # timed frames per measurement
    warmup: int = 3
    source_frames: int = 6  # at least this many simulated frames (always warmup + frames + 1: no frame repeats)
    main_history: int = 16  # attention K in the full-step loop
    scenario: str = "urban"
    seed: int = 0
    threads: int = 2  # CPU threads for torch (the CPU target is "on 2 cores")
    profile: bool = True  # torch.profiler of one full Mamba frame at the first grid
    memory: bool = True  # the memory part of the history sweep
    heap_mib: int = 0  # > 0: glibc keeps tensors below this size in its heap (see keep_tensors_in_heap)
    node_allocator: bool = False  # the node's setting (memory.fix_malloc_mmap_threshold): measure as it runs


# ------------------------------------------------------------------------------------- helpers
def write_result(path, result: dict) -> Path:
    """A benchmark's results file: JSON, parent folders made, one line to say where it went."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return out


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p99/mean/min/max of latencies in ms (p99 of few samples is close to the max: see n)."""
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "mean": round(float(a.mean()), 4), "min": round(float(a.min()), 4), "max": round(float(a.max()), 4),
            "n": int(a.size)}


def sample_ms(fn, repeats: int, warmup: int) -> list[float]:
    """Wall times [ms] of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (CPU micro-benchmarks
    of single stages: scripts/bench_core_cpu.py, scripts/bench_mamba_cpu.py)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


class _Timer:
    """Wall time of a block with the device drained at both ends (CUDA launches are asynchronous)."""

    def __init__(self, device):
        import torch

        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def __call__(self, fn, *args, **kwargs):
        self._sync()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self._sync()
        return out, 1e3 * (time.perf_counter() - t0)


def grid_config(cells: int):
    from ssm_perception.config import GridConfig

    return GridConfig(length_x=cells * RESOLUTION, length_y=cells * RESOLUTION, resolution=RESOLUTION)


def model_config(cells: int, kind: str, history: int, device: str, backend: str = "reference"):
    from ssm_perception.config import PerceptionConfig

    cfg = PerceptionConfig()
    cfg.grid = grid_config(cells)
    cfg.model.kind = kind
    cfg.model.device = device
    cfg.model.backend = backend if kind == "mamba" else "reference"
    cfg.model.attention_history = history
    return cfg


def model_label(kind: str, backend: str) -> str:
    return kind if kind != "mamba" or backend == "reference" else f"mamba[{backend}]"


def state_bytes(state) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values()))


# --------------------------------------------------------------------------------- environment
def environment(device) -> dict:
    import numpy as np
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None, "torch_threads": torch.get_num_threads(),
           "cpu_model": cpu_model(), "load_avg": list(os.getloadavg()), "device": str(device),
           # the allocator settings change CPU timings (fresh state-sized tensors cost page faults)
           "allocator_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "THP_", "LD_PRELOAD"))}}
    for mod in ("mamba_ssm", "triton"):
        try:
            env[mod] = __import__(mod).__version__
        except (ImportError, AttributeError, OSError, RuntimeError) as exc:  # absent, or its extension is missing
            env[mod] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   driver=_nvidia_driver())
    return env


def cpu_model() -> str:
    """The CPU's model name, for results files (shared by every benchmark script)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def keep_tensors_in_heap(mib: int) -> dict:
    """Process-wide glibc setting: allocations below ``mib`` MiB come from the heap and freed heap
    memory is kept (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), instead of a fresh mmap per
    tensor. glibc maps every block of >= 32 MiB on its own, so each new state-sized tensor (32 MiB
    at 128x128) costs ~8k page faults (~10 ms on this machine) when first written; with the heap,
    freed states are reused. Costs RSS: the heap keeps its peak. Linux/glibc only; a deployment
    choice (call it at process start), so the benchmark applies it only when asked."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return {"heap_mib": mib, "applied": False, "reason": "not glibc on Linux"}
    libc = ctypes.CDLL(name)
    ok = libc.mallopt(m_mmap_threshold, mib << 20) == 1 and libc.mallopt(m_trim_threshold, 2 * (mib << 20)) == 1
    return {"heap_mib": mib, "applied": bool(ok), "reason": "" if ok else "mallopt refused the value"}


def memory_bandwidth(device, mib: int = 512, repeats: int = 10) -> dict:
    """Achievable copy bandwidth [GB/s]: a large clone reads and writes every byte once."""
    import torch

    n = mib * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timer = _Timer(device)
    dst.copy_(src)
    times = [timer(dst.copy_, src)[1] for _ in range(repeats)]
    best = min(times)
    out = {"measured_GBps": round(2 * src.numel() * 4 / (best * 1e-3) / 1e9, 1), "copy_mib": mib,
           "method": f"best of {repeats} device copies of {mib} MiB (read + write)"}
    if device.type == "cuda":
        name = torch.cuda.get_device_properties(device).name
        for key, gbps in NOMINAL_BANDWIDTH_GBPS.items():
            if key in name:
                out["nominal_GBps"] = gbps
                break
    del src, dst
    return out


# ------------------------------------------------------------------------------------- inputs
@dataclass
class SourceFrame:
    """One simulated LiDAR frame as the node receives it: the messages (PointCloud2- and Image-shaped
    objects, decoded by io/ inside the timed loop) and the poses that /tf and /tf_static carry."""

    stamp_ns: int
    lidar_msg: SimpleNamespace
    radar_msg: SimpleNamespace | None
    image_msg: SimpleNamespace | None
    K: object  # CameraInfo's K (CameraInfo arrives once; its decode is not per frame)
    poses: list  # [(stamp_ns, T_odom_base 4x4)] at the LiDAR, radar and camera stamps
    T_map_odom: object
    mounts: dict  # frame_id -> T_base_sensor (static)


def cloud_message(points, frame_id: str, stamp_ns: int) -> SimpleNamespace:
    """A PointCloud2-shaped object (same attributes as sensor_msgs/PointCloud2), without rclpy."""
    from ssm_perception.io.pointcloud2 import array_to_cloud_fields

    fields, step, data = array_to_cloud_fields(points)
    return SimpleNamespace(
        header=_header(frame_id, stamp_ns),
        height=1, width=len(points), point_step=step, row_step=step * len(points), is_bigendian=False, is_dense=True,
        fields=[SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields], data=data,
    )


def image_message(image, frame_id: str, stamp_ns: int) -> SimpleNamespace:
    """An Image-shaped object (rgb8), without rclpy."""
    h, w = image.shape[:2]
    return SimpleNamespace(header=_header(frame_id, stamp_ns), height=h, width=w, encoding="rgb8",
                           is_bigendian=0, step=3 * w, data=bytes(image.astype("uint8").tobytes()))


def _header(frame_id: str, stamp_ns: int) -> SimpleNamespace:
    return SimpleNamespace(frame_id=frame_id, stamp=SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9))


def simulate_frames(scenario: str, seed: int, count: int, progress: bool = True) -> list[SourceFrame]:
    """``count`` consecutive frames with LiDAR, radar and camera. The scenario's own grid only
    shapes its ground-truth rasters, unused here: a small one keeps generation cheap."""
    from tqdm import tqdm

    from ssm_perception.config import GridConfig
    from ssm_perception.sim.scenario import Scenario

    period = 0.1
    sc = Scenario.from_preset(scenario, seed=seed, duration_s=max(2.0, (count + 4) * period * 1.5),
                              grid=GridConfig(length_x=16.0, length_y=16.0))
    c = sc.config
    out: list[SourceFrame] = []
    for fr in tqdm(sc.frames(), total=count, desc="simulate", disable=not progress, leave=False):
        if fr.radar is None or fr.camera is None:
            continue  # the first frames may precede the first radar/camera message
        poses = [(fr.stamp_ns, fr.T_odom_base), (fr.radar.stamp_ns, fr.radar.T_odom_base),
                 (fr.camera.stamp_ns, fr.camera.T_odom_base)]
        out.append(SourceFrame(
            stamp_ns=fr.stamp_ns, lidar_msg=cloud_message(fr.lidar, c.lidar.frame_id, fr.stamp_ns),
            radar_msg=cloud_message(fr.radar.points, c.radar.frame_id, fr.radar.stamp_ns),
            image_msg=image_message(fr.camera.image, c.camera.frame_id, fr.camera.stamp_ns), K=fr.camera.K,
            poses=poses, T_map_odom=fr.T_map_odom, mounts=dict(fr.T_base_sensor),
        ))
        if len(out) >= count:
            break
    if len(out) < 2:
        raise RuntimeError(f"scenario {scenario!r} gave {len(out)} frames with all three sensors; need >= 2")
    return out


def tf_buffer_for(frames: list[SourceFrame], cfg):
    """The TF the node would have received (/tf_static mounts, /tf odom -> base_link and map -> odom)."""
    from ssm_perception.tf_buffer import TfBuffer

    fr = cfg.frames
    tf = TfBuffer(cache_s=3600.0)
    for frame_id, T in frames[0].mounts.items():
        tf.set_transform(T, fr.base_link, frame_id, 0, static=True)
    for f in frames:
        for stamp, T in f.poses:
            tf.set_transform(T, fr.odom, fr.base_link, int(stamp))
        tf.set_transform(f.T_map_odom, fr.map, fr.odom, int(f.stamp_ns))
    return tf


def message_encoder():
    """io.ros_convert.frame_messages (the node's encoding), or (None, reason) where the ROS message
    packages are missing (the GPU image): the bench then reports msg_encode as unavailable."""
    try:
        import nav_msgs.msg  # noqa: F401
        import visualization_msgs.msg  # noqa: F401

        import ssm_perception.msg  # noqa: F401
        from ssm_perception.io.ros_convert import frame_messages
    except ImportError as exc:
        return None, f"unavailable: {type(exc).__name__}: {exc}"[:200]
    return frame_messages, "io.ros_convert.frame_messages (OccupancyGrid x2, TrackArray, MarkerArray)"


# ---------------------------------------------------------------------------------- the loops
def _motion(prev: SourceFrame, cur: SourceFrame):
    """T_prev_cur (4x4) between two source frames, for the temporal-only sweep (which replays the
    frames in a loop: the warp's cost does not depend on the motion)."""
    import numpy as np

    from ssm_perception.geometry import invert_transform

    return invert_transform(np.asarray(prev.poses[0][1])) @ np.asarray(cur.poses[0][1]), 0.1


def bench_pipeline(cells: int, kind: str, backend: str, history: int, device):
    """A PerceptionPipeline for the benchmark grid: the shipped weights of ``kind`` where they load for
    this grid (detections, and so tracking and radar refinement, then do their real amount of work),
    else random ones (recorded in the result)."""
    from ssm_perception.model import (
        BevPerceptionModel,
        CheckpointError,
        load_checkpoint,
    )
    from ssm_perception.pipeline import PerceptionPipeline, shipped_checkpoint

    cfg = model_config(cells, kind, history, str(device), backend)
    cfg.model.cpu_threads = 0  # the bench sets the thread count itself (--threads)
    weights = "training-free" if kind == "logodds" else "random"
    model = None
    if kind != "logodds" and (ckpt := shipped_checkpoint(kind)) is not None:
        try:
            model, _ = load_checkpoint(ckpt, map_location=str(device), expected_kind=kind, grid=cfg.grid,
                                       backend=cfg.model.backend)
            weights = f"shipped: {ckpt.name}"
        except CheckpointError as exc:
            weights = f"random (shipped {ckpt.name} does not load here: {exc})"[:300]
    if model is None:
        model = BevPerceptionModel(cfg).to(device)
    pipe = PerceptionPipeline(cfg, model=model)
    pipe.sync_timers = device.type == "cuda"  # the stage timers wait for the device (asynchronous CUDA)
    return pipe, cfg, weights


def full_step_loop(frames: list[SourceFrame], cells: int, kind: str, backend: str, history: int, device,
                   n_frames: int, warmup: int, profile: bool = False, pipeline=None) -> dict:
    """The node's frame, frame after frame, for one model: decode the messages (io/), assemble the
    frame (frame_assembler), ``PerceptionPipeline.process`` (its own per-stage timers), encode the
    output messages (io.ros_convert.frame_messages). No copy of the step: these are the functions
    the node calls. ``pipeline``: (PerceptionPipeline, its config, weights note) to run instead of
    the bench's own (scripts/cpu_default_check.py passes the CPU default's).

    ``grid_ready``: the full step less the tracking stage, i.e. when the node has the occupancy grid
    (it publishes the grids before it runs tracking, see PerceptionPipeline.track); an upper bound,
    since it still includes encoding the track messages.
    ``full_step_process_cpu``: the process's CPU time per frame (time.process_time)."""
    import numpy as np
    import torch

    from ssm_perception.frame_assembler import FrameAssembler, Stamped
    from ssm_perception.io.pointcloud2 import cloud_to_array
    from ssm_perception.io.ros_convert import image_to_array

    if len(frames) < warmup + n_frames + (1 if profile else 0):
        raise ValueError(f"{len(frames)} simulated frames for {warmup} warm-up + {n_frames} timed frames")
    pipe, cfg, weights = pipeline if pipeline is not None else bench_pipeline(cells, kind, backend, history, device)
    assembler = FrameAssembler(cfg, tf_buffer_for(frames, cfg))
    encode_msgs, encode_note = message_encoder()
    info = SimpleNamespace(K=np.asarray(frames[0].K))
    timer = _Timer(device)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    process_ms: list[float] = []
    totals: list[float] = []
    grid_ready: list[float] = []
    cpu_totals: list[float] = []  # process CPU time per frame: what the frame cost, whatever the neighbours do
    n_dets: list[int] = []
    n_tracks: list[int] = []
    encode_parts: list[dict] = []
    prof_out = None

    def one_frame(fr: SourceFrame) -> dict[str, float]:
        lat: dict[str, float] = {}
        (lidar, radar, image), lat["decode"] = timer(lambda: (
            cloud_to_array(fr.lidar_msg), cloud_to_array(fr.radar_msg), image_to_array(fr.image_msg)))

        def assemble():
            assembler.radar = Stamped(radar, fr.radar_msg.header.frame_id, _stamp(fr.radar_msg))
            assembler.image = Stamped(image, fr.image_msg.header.frame_id, _stamp(fr.image_msg))
            assembler.camera_info = info
            return assembler.assemble(fr.stamp_ns, lidar, fr.lidar_msg.header.frame_id)

        assembled, lat["assemble"] = timer(assemble)
        if assembled.inputs is None:
            raise RuntimeError(f"frame at {fr.stamp_ns} not assembled: {assembled.problems}")
        out, lat["process"] = timer(pipe.process, assembled.inputs)
        for stage in PROCESS_STAGES:
            lat[stage] = float(out.latency_ms[stage])
        if encode_msgs is not None:
            _, lat["msg_encode"] = timer(encode_msgs, out, cfg)
        encode_parts.append(dict(out.feature_stats.get("timings_ms", {})))
        n_dets.append(len(out.detections_base))
        n_tracks.append(len(out.tracks))
        return lat

    with torch.inference_mode():
        for k in range(warmup + n_frames):
            c0, w0 = time.process_time(), time.perf_counter()
            lat = one_frame(frames[k])
            wall = 1e3 * (time.perf_counter() - w0)
            if k >= warmup:
                cpu_totals.append(1e3 * (time.process_time() - c0))
                totals.append(wall)
                grid_ready.append(wall - lat["tracking"])
                process_ms.append(lat["process"])
                for s in STAGES:
                    if s in lat:
                        samples[s].append(lat[s])
        if profile:
            prof_out = profile_frame(lambda: one_frame(frames[warmup + n_frames]), device)
    timed = encode_parts[warmup:warmup + n_frames]
    return {"model": model_label(kind, backend), "kind": kind, "backend": backend if kind == "mamba" else None,
            "history": history if kind == "attention" else None, "weights": weights,
            "stages": {s: percentiles(v) for s, v in samples.items()}, "process": percentiles(process_ms),
            "full_step": percentiles(totals), "full_step_process_cpu": percentiles(cpu_totals),
            "grid_ready": percentiles(grid_ready),
            "msg_encode_method": encode_note,
            "state_bytes": state_bytes(pipe.state), "parameters": int(sum(p.numel() for p in pipe.model.parameters())),
            "architecture": architecture(pipe.model),
            "encode_parts_p50_ms": {key: round(float(np.median([p[key] for p in timed if key in p])), 3)
                                    for key in sorted({k2 for p in timed for k2 in p})},
            "detections_mean": float(np.mean(n_dets[warmup:])) if n_dets[warmup:] else 0.0,
            "tracks_mean": float(np.mean(n_tracks[warmup:])) if n_tracks[warmup:] else 0.0, "profile": prof_out}


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


def architecture(model) -> dict:
    """What the timed model contains besides its core (the numbers depend on it): the model config's
    neck and the heads' trunk kernel, read from the built model."""
    m = model.config.model
    heads = getattr(model, "heads", None)
    trunk = getattr(heads, "trunk", None)
    return {"neck": getattr(m, "neck", None), "d_model": m.d_model, "d_state": m.d_state, "headdim": m.headdim,
            "heads_trunk_kernel": None if trunk is None else int(trunk[0].kernel_size[0]),
            "state_layout": None if model.kind != "mamba" else "channels_last on CPU (cell rows), NCHW on CUDA"}


def profile_frame(fn, device, top: int = 15) -> dict:
    """torch.profiler of one frame: the ops that dominate, by self time on the device that runs them."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
    # FunctionEventAvg: self_cpu_time_total and (newer torch) self_device_time_total, in microseconds.
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0) or 0.0, reverse=True)[:top]
    return {"sort_by": key, "top_ops": [
        {"name": e.key, "calls": int(e.count), "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
         **({"self_device_ms": round((getattr(e, key, 0.0) or 0.0) / 1e3, 3)} if device.type == "cuda" else {})}
        for e in events]}


def temporal_loop(frames: list[SourceFrame], features: list, cells: int, kind: str, backend: str, history: int,
                  device, n_frames: int, warmup: int) -> dict:
    """The temporal update alone after ``history`` frames: warp, model.step, core.step, and for
    Mamba core.warp_step (one pass over the state with the 'fused' backend)."""
    import torch

    from ssm_perception.bev.grid import BevGrid
    from ssm_perception.model import BevPerceptionModel
    from ssm_perception.temporal.warp import warp_state

    cfg = model_config(cells, kind, history, str(device), backend)
    grid = BevGrid.from_config(cfg.grid)
    model = BevPerceptionModel(cfg).to(device).eval()
    timer = _Timer(device)
    state = model.init_state(1, device)
    out: dict[str, list[float]] = {"warp": [], "step": [], "warp_step": [], "core_step": [], "core_warp_step": []}
    dt = torch.tensor([0.1], dtype=torch.float32, device=device)
    with torch.inference_mode():
        stems = [model.stem(x) for x in features]  # [1, d_model, H, W] per source frame
        for k in range(history + warmup + n_frames):
            i = k % len(frames)
            T_prev_cur, _ = _motion(frames[(k - 1) % len(frames)], frames[i])
            state, t_warp = timer(warp_state, state, T_prev_cur, grid)
            (_, state), t_step = timer(model.step, features[i], state, dt)
            if k < history:
                continue
            # The core alone on the same state (its output state is discarded: the stream above owns it);
            # also run during the warm-up frames, so that kernels compile before the timed ones.
            _, t_core = timer(model.core.step, stems[i], state, dt)
            t_cws = timer(model.core.warp_step, stems[i], state, T_prev_cur, dt, None, grid)[1] \
                if kind == "mamba" else None
            if k < history + warmup:
                continue
            out["warp"].append(t_warp)
            out["step"].append(t_step)
            out["warp_step"].append(t_warp + t_step)
            out["core_step"].append(t_core)
            if t_cws is not None:
                out["core_warp_step"].append(t_cws)
    res = {k: percentiles(v) for k, v in out.items() if v}
    res["state_bytes"] = state_bytes(state)
    return res


def peak_memory(cells: int, kind: str, backend: str, history: int, device, steps: int = 3) -> dict:
    """Memory the model, its state and the steps add: CUDA in-process, CPU in a fresh child."""
    if device.type != "cuda":
        cmd = [sys.executable, "-m", "ssm_perception.bench", "_memprobe", str(cells), kind, backend, str(history),
               str(steps)]
        # A fixed mmap threshold makes glibc map every tensor-sized block on its own and unmap it on
        # free, so the peak RSS follows the live tensors (the dynamic threshold lets freed blocks pile
        # up in the heap and adds +-10 % of allocator noise).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
        if res.returncode != 0:
            return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:] or ["failed"]}
        return json.loads(res.stdout.strip().splitlines()[-1])
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = _run_steps(cells, kind, backend, history, device, steps)
    torch.cuda.synchronize(device)
    out["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
    out["method"] = "torch.cuda.max_memory_allocated - allocated before the model"
    torch.cuda.empty_cache()
    return out


def _run_steps(cells: int, kind: str, backend: str, history: int, device, steps: int) -> dict:
    """Build the model and run history + steps frames of warp + step on a fixed random input."""
    import torch

    from ssm_perception.bev.features import FEATURE_CHANNELS
    from ssm_perception.bev.grid import BevGrid
    from ssm_perception.geometry import se2_matrix
    from ssm_perception.model import BevPerceptionModel
    from ssm_perception.temporal.warp import warp_state

    cfg = model_config(cells, kind, history, str(device), backend)
    grid = BevGrid.from_config(cfg.grid)
    x = torch.rand(1, len(FEATURE_CHANNELS), cells, cells, device=device)
    model = BevPerceptionModel(cfg).to(device).eval()
    state = model.init_state(1, device)
    dt = torch.tensor([0.1], device=device)
    motion = se2_matrix(1.0, 0.05, 0.01)
    with torch.inference_mode():
        for _ in range(history + steps):
            state = warp_state(state, motion, grid)
            _, state = model.step(x, state, dt)
    return {"state_bytes": state_bytes(state)}


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _memprobe(argv: list[str]) -> None:
    """Child process of peak_memory on CPU: prints one JSON line. Linux resets the peak RSS
    (VmHWM) on writing 5 to /proc/self/clear_refs, so the import-time peak is excluded."""
    import torch

    cells, kind, backend, history, steps = int(argv[0]), argv[1], argv[2], int(argv[3]), int(argv[4])
    torch.set_num_threads(1)
    from ssm_perception import model as _model  # noqa: F401 - import everything before the baseline

    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _proc_status_kib("VmRSS")
    out = _run_steps(cells, kind, backend, history, torch.device("cpu"), steps)
    out["peak_bytes"] = 1024 * (_proc_status_kib("VmHWM") - rss0)
    out["method"] = ("peak RSS (VmHWM, reset after imports) of a fresh process minus its RSS after imports, "
                     f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'dynamic')}")
    print(json.dumps(out))


# ----------------------------------------------------------------------------------- the run
def run_bench(s: BenchSettings, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    bad = [m for m in s.models if m not in MODELS]
    if bad:
        raise ValueError(f"unknown model(s) {bad}; choose from {list(MODELS)}")
    if device.type == "cpu":
        torch.set_num_threads(s.threads)
    if s.node_allocator and s.heap_mib > 0:
        raise ValueError("--node-allocator and --malloc-heap-mib are two different allocator settings; pick one")
    if s.node_allocator:
        from ssm_perception.memory import fix_malloc_mmap_threshold

        allocator = {"heap_mib": 0, "node": True, "applied": True, "reason": fix_malloc_mmap_threshold()}
    elif s.heap_mib > 0:
        allocator = keep_tensors_in_heap(s.heap_mib)
    else:
        allocator = {"heap_mib": 0, "applied": False, "reason": "glibc defaults"}
    t_start = time.perf_counter()
    result: dict = {"format": FORMAT, "settings": asdict(s), "environment": environment(device),
                    "stages": list(STAGES), "resolution_m": RESOLUTION, "allocator": allocator}
    result["bandwidth"] = memory_bandwidth(device, mib=512 if device.type == "cuda" else 256)
    # The full step replays no frame twice (the reset policy would see time go back): one simulated
    # frame per warm-up and timed frame, plus the profiled one.
    frames = simulate_frames(s.scenario, s.seed, max(s.source_frames, s.warmup + s.frames + 1), progress)
    result["source_frames"] = {"count": len(frames), "lidar_points_mean": float(sum(f.lidar_msg.width for f in frames)
                                                                               / len(frames))}
    variants = [(m, b) for m in s.models for b in (s.backends if m == "mamba" else ["reference"])]
    grids: dict = {}
    for cells in s.grids:
        g: dict = {"cells": cells, "extent_m": cells * RESOLUTION, "full_step": {}, "history": {}, "errors": {}}
        for m, b in tqdm(variants, desc=f"{cells}x{cells} full step", disable=not progress, leave=False):
            label = model_label(m, b)
            try:
                g["full_step"][label] = full_step_loop(frames, cells, m, b, s.main_history, device, s.frames,
                                                       s.warmup, profile=s.profile and m == "mamba"
                                                       and cells == s.grids[0])
            # A GPU backend may be absent or fail to compile (Triton raises its own types): record it, go on.
            except Exception as exc:  # noqa: BLE001
                g["errors"][label] = f"{type(exc).__name__}: {exc}"[:500]
        features = _features_for(frames, cells, device)
        for m, b in tqdm(variants, desc=f"{cells}x{cells} history", disable=not progress, leave=False):
            label = model_label(m, b)
            if label in g["errors"]:
                continue
            per_h = {}
            for h in s.histories:
                r = temporal_loop(frames, features, cells, m, b, h, device, max(5, s.frames // 2), s.warmup)
                if s.memory:
                    r["memory"] = peak_memory(cells, m, b, h, device)
                per_h[str(h)] = r
            g["history"][label] = per_h
        g["bandwidth_bound"] = _bandwidth_bound(g, result["bandwidth"], s)
        grids[str(cells)] = g
    result["grids"] = grids
    result["targets"] = evaluate_targets(result)
    result["environment"]["load_avg_after"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


def _features_for(frames: list[SourceFrame], cells: int, device) -> list:
    """BEV features of the source frames (decoded and assembled as in the full step), for the
    temporal-only sweep."""
    from ssm_perception.bev.features import encode_frame
    from ssm_perception.bev.grid import BevGrid
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.frame_assembler import FrameAssembler, Stamped
    from ssm_perception.io.pointcloud2 import cloud_to_array
    from ssm_perception.io.ros_convert import image_to_array

    cfg = PerceptionConfig()
    cfg.grid = grid_config(cells)
    grid = BevGrid.from_config(cfg.grid)
    assembler = FrameAssembler(cfg, tf_buffer_for(frames, cfg))
    out = []
    for f in frames:
        assembler.radar = Stamped(cloud_to_array(f.radar_msg), f.radar_msg.header.frame_id, _stamp(f.radar_msg))
        assembler.image = Stamped(image_to_array(f.image_msg), f.image_msg.header.frame_id, _stamp(f.image_msg))
        assembler.camera_info = SimpleNamespace(K=f.K)
        inp = assembler.assemble(f.stamp_ns, cloud_to_array(f.lidar_msg), f.lidar_msg.header.frame_id).inputs
        out.append(encode_frame(grid, *inp.scans(), ego_twist=inp.ego_twist).features.unsqueeze(0).to(device))
    return out


def _bandwidth_bound(g: dict, bw: dict, s: BenchSettings) -> dict:
    """Mamba's temporal update vs 2 * state bytes / bandwidth, at the main history."""
    out = {}
    for label, per_h in g["history"].items():
        if not label.startswith("mamba"):
            continue
        r = per_h.get(str(s.main_history)) or next(iter(per_h.values()))
        bound_ms = 2 * r["state_bytes"] / (bw["measured_GBps"] * 1e9) * 1e3
        e = {"state_bytes": r["state_bytes"], "bytes_per_step": 2 * r["state_bytes"],
             "bound_ms_measured_bw": round(bound_ms, 5)}
        for key in ("core_step", "core_warp_step", "warp_step"):
            if key in r:
                e[f"{key}_p50_ms"] = r[key]["p50"]
                e[f"{key}_over_bound"] = round(r[key]["p50"] / bound_ms, 2)
        if "nominal_GBps" in bw:
            e["bound_ms_nominal_bw"] = round(2 * r["state_bytes"] / (bw["nominal_GBps"] * 1e9) * 1e3, 5)
        out[label] = e
    return out


def evaluate_targets(result: dict) -> list[dict]:
    """The issue's targets as measured in this run: value, target, met (None = not applicable here)."""
    dev = result["environment"]["device"]
    grids = result["grids"]
    gpu = dev.startswith("cuda")
    out = []

    def add(name, value, target, met, note=""):
        out.append({"target": name, "value": value, "limit": target, "met": met, "note": note})

    mambas = sorted({lab for g in grids.values() for lab in g["full_step"] if lab.startswith("mamba")})
    for lab in mambas:
        if "200" in grids and lab in grids["200"]["full_step"]:
            p99 = grids["200"]["full_step"][lab]["full_step"]["p99"]
            add(f"{lab}: full step p99 at 200x200 [ms]", p99, TARGET_FULL_STEP_P99_MS_GPU_200,
                (p99 <= TARGET_FULL_STEP_P99_MS_GPU_200) if gpu else None, "" if gpu else "GPU target; CPU value for reference")
        for cells, g in grids.items():
            bb = g.get("bandwidth_bound", {}).get(lab)
            if bb:
                key = "core_warp_step_over_bound" if "core_warp_step_over_bound" in bb else "core_step_over_bound"
                add(f"{lab}: temporal update / bandwidth bound at {cells}x{cells}", bb.get(key), TARGET_BANDWIDTH_RATIO,
                    (bb.get(key) <= TARGET_BANDWIDTH_RATIO) if gpu else None,
                    f"{key}; GPU target" if not gpu else key)
    for cells, g in grids.items():
        hist = g["history"]
        for lab in mambas:
            if lab in hist:
                peaks = _peaks(hist[lab])
                if len(peaks) >= 2:
                    (h0, p0), (h1, p1) = peaks[0], peaks[-1]
                    ratio = round(p1 / p0, 3) if p0 else None
                    add(f"{lab}: peak memory {h1} vs {h0} frames at {cells}x{cells}", ratio, FLAT_TOLERANCE,
                        ratio is not None and ratio <= FLAT_TOLERANCE, f"{p0} -> {p1} bytes")
        if "attention" in hist:
            peaks = _peaks(hist["attention"])
            if len(peaks) >= 2:
                (h0, p0), (h1, p1) = peaks[0], peaks[-1]
                add(f"attention: peak memory {h1} vs {h0} frames at {cells}x{cells} (grows)",
                    round(p1 / p0, 3) if p0 else None, FLAT_TOLERANCE, bool(p0) and p1 / p0 > FLAT_TOLERANCE,
                    f"{p0} -> {p1} bytes")
            for lab in mambas:
                a, m = hist["attention"].get("16"), hist.get(lab, {}).get("16")
                if a and m:
                    ratio = round(a["warp_step"]["p50"] / m["warp_step"]["p50"], 2)
                    add(f"{lab} vs attention at 16 frames, warp+step p50 speed-up at {cells}x{cells}", ratio,
                        TARGET_MAMBA_VS_ATTENTION_AT_16, ratio >= TARGET_MAMBA_VS_ATTENTION_AT_16)
    if not gpu and "128" in grids:
        for lab in mambas:
            fs = grids["128"]["full_step"].get(lab)
            if fs:
                add(f"{lab}: CPU full step p50 at 128x128 [ms] ({result['settings']['threads']} threads)",
                    fs["full_step"]["p50"], TARGET_CPU_128_MS, fs["full_step"]["p50"] < TARGET_CPU_128_MS)
    return out


def _peaks(per_h: dict) -> list[tuple[int, int]]:
    return sorted((int(h), r["memory"]["peak_bytes"]) for h, r in per_h.items()
                  if "peak_bytes" in r.get("memory", {}))


def summary_table(result: dict) -> str:
    """Markdown: p50/p99 per stage per model per grid, then the targets."""
    lines = []
    for cells, g in result["grids"].items():
        lines.append(f"\n{cells}x{cells} ({g['extent_m']:.0f} m), device {result['environment']['device']}, ms p50 / p99\n")
        lines.append("| model | " + " | ".join(STAGES) + " | process | full step |")
        lines.append("|---" * (len(STAGES) + 3) + "|")
        for lab, r in g["full_step"].items():
            cells_txt = [f"{r['stages'][s]['p50']:.2f} / {r['stages'][s]['p99']:.2f}" if r["stages"][s].get("n")
                         else "n/a" for s in STAGES]
            lines.append(f"| {lab} | " + " | ".join(cells_txt) + f" | {r['process']['p50']:.1f} / "
                         f"{r['process']['p99']:.1f} | {r['full_step']['p50']:.1f} / {r['full_step']['p99']:.1f} |")
        for lab, err in g["errors"].items():
            lines.append(f"| {lab} | failed: {err[:80]} |")
        if g["history"]:
            hs = sorted({int(h) for per in g["history"].values() for h in per})
            lines.append(f"\nwarp + step p50 [ms] / peak memory [MiB] vs history, {cells}x{cells}\n")
            lines.append("| model | " + " | ".join(f"h={h}" for h in hs) + " |")
            lines.append("|---" * (len(hs) + 1) + "|")
            for lab, per in g["history"].items():
                row = []
                for h in hs:
                    r = per.get(str(h))
                    mem = r.get("memory", {}).get("peak_bytes") if r else None
                    row.append("-" if r is None else f"{r['warp_step']['p50']:.2f} / "
                               + ("?" if mem is None else f"{mem / 2**20:.1f}"))
                lines.append(f"| {lab} | " + " | ".join(row) + " |")
    lines.append("\n| target | value | limit | met |\n|---|---|---|---|")
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {t['limit']} | {t['met']} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- entry points
def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"expected positive integers, got {text!r}")
    return vals


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


MAX_HISTORY = 1024  # frames kept by the attention baseline in the sweep


def _check_sizes(s: BenchSettings) -> None:
    """Refuse grids and histories that cannot fit in memory, before anything is allocated."""
    from ssm_perception.config import (
        PerceptionConfig,
        host_memory_bytes,
        memory_estimate,
    )

    if max(s.histories) > MAX_HISTORY:
        raise ValueError(f"--history: at most {MAX_HISTORY} frames, got {max(s.histories)}")
    have = host_memory_bytes()
    for kind in s.models:
        if kind not in MODELS:
            continue  # run_bench names unknown models
        cfg = PerceptionConfig(model={"kind": kind, "attention_history": max(s.histories)})
        need = memory_estimate(max(s.grids), max(s.grids), cfg.model)
        if have and need > have:
            raise ValueError(f"--grid {max(s.grids)}: the {kind} model would need about {need / 2**30:.3g} GiB, "
                             f"this machine has {have / 2**30:.3g} GiB")


def bench_main(device: str, grid: str, history: str, output: str, models: str, backends: str, frames: int,
               warmup: int, source_frames: int, threads: int, profile: bool, memory: bool, quiet: bool,
               heap_mib: int = 0, node_allocator: bool = False) -> int:
    if not backends:
        backends = "reference,mamba_ssm,fused" if device.startswith("cuda") else "reference"
    s = BenchSettings(device=device, grids=_int_list(grid), histories=_int_list(history), models=_str_list(models),
                      backends=_str_list(backends), frames=frames, warmup=warmup, source_frames=source_frames,
                      threads=threads, profile=profile, memory=memory, heap_mib=heap_mib,
                      node_allocator=node_allocator)
    if heap_mib < 0:
        raise ValueError(f"--malloc-heap-mib must be >= 0, got {heap_mib}")
    _check_sizes(s)
    if 16 not in s.histories:
        s.main_history = max(s.histories)
    result = run_bench(s, progress=not quiet)
    print(summary_table(result))
    write_result(output, result)
    print(f"({result['wall_s']} s)")
    return 0


def register(app) -> None:
    import typer

    @app.command("bench")
    def bench(
        device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]"),
        grid: str = typer.Option("128,200", "--grid", help="grid sizes in cells (0.5 m cells), comma-separated"),
        history: str = typer.Option("1,4,16,64", "--history", help="frames of history for the scaling sweep"),
        output: str = typer.Option("results/bench.json", "--output", "-o", help="results JSON"),
        models: str = typer.Option(",".join(MODELS), "--models", help="models to run"),
        backends: str = typer.Option("", "--backends",
                                     help="Mamba backends; empty = reference on CPU, all three on CUDA"),
        frames: int = typer.Option(20, "--frames", min=2, help="timed frames per measurement"),
        warmup: int = typer.Option(3, "--warmup", min=0, help="untimed frames first"),
        source_frames: int = typer.Option(6, "--source-frames", min=2,
                                           help="at least this many simulated frames (always warmup + frames + 1)"),
        threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads"),
        profile: bool = typer.Option(True, "--profile/--no-profile", help="torch.profiler of one Mamba frame"),
        memory: bool = typer.Option(True, "--memory/--no-memory", help="peak memory per model and history"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
        heap_mib: int = typer.Option(0, "--malloc-heap-mib", min=0,
                                     help="CPU: keep tensors below this many MiB in glibc's heap (0 = defaults)"),
        node_allocator: bool = typer.Option(False, "--node-allocator",
                                            help="the node's malloc setting (16 MiB mmap threshold): time as it runs"),
    ) -> None:
        """Per-stage latency (p50/p99), peak memory and scaling of every model, in one run."""
        try:
            code = bench_main(device, grid, history, output, models, backends, frames, warmup, source_frames,
                              threads, profile, memory, quiet, heap_mib, node_allocator)
        except (ValueError, RuntimeError) as exc:
            typer.secho(f"bench failed: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        raise typer.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """``python -m ssm_perception.bench``: the same options, argparse only (no typer, no ROS)."""
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_memprobe"]:
        _memprobe(argv[1:])
        return 0
    ap = argparse.ArgumentParser(prog="python -m ssm_perception.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", default="128,200")
    ap.add_argument("--history", default="1,4,16,64")
    ap.add_argument("-o", "--output", default="results/bench.json")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--backends", default="")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--source-frames", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--malloc-heap-mib", dest="heap_mib", type=int, default=0)
    ap.add_argument("--node-allocator", action="store_true")
    a = ap.parse_args(argv)
    try:
        return bench_main(a.device, a.grid, a.history, a.output, a.models, a.backends, a.frames, a.warmup,
                          a.source_frames, a.threads, a.profile, a.memory, a.quiet, a.heap_mib, a.node_allocator)
    except (ValueError, RuntimeError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
