"""Training data: simulated sequences encoded once into BEV features + dense targets.

A sequence is one simulator run (preset, seed, duration). Encoding the sensors into BEV features
is the expensive part, so it is done once per sequence by worker processes and cached as a
directory of .npy files keyed by preset/seed/duration/grid/feature version; training memory-maps
them, so epochs only read arrays.

Cached arrays (T frames, grid H x W):
    features    [T, C, H, W] float16   BEV features (the same encoder the pipeline runs)
    occupied, dynamic, visible [T, H, W] bool   ground truth on the grid
    velocity    [T, 2, H, W] float16   over-ground velocity of the object covering the cell, base_link axes
    center      [T, 4, H, W] uint8     CenterNet Gaussian heatmap per class, x255
    box         [T, 7, H, W] float16   offset x,y [m], log l,w,h, sin yaw, cos yaw at object centres
    center_mask [T, H, W]    bool
    pose        [T, 4, 4]    float64   T_odom_base (ego motion for the warp between steps)
    stamp_ns    [T]          int64
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ssm_perception.config import GridConfig, PerceptionConfig

# Bump when the cached arrays change meaning (encoder, targets): old caches are then ignored.
# 2: radar and camera motion-compensated to the LiDAR stamp by the frame assembler (issue 16).
CACHE_VERSION = 2

# Object classes (our numbering, io/track_fields.py): 0 unknown, 1 car, 2 truck, 3 cyclist, 4 pedestrian; head k = class k+1.
NUM_CENTER_CLASSES = 4


@dataclass(frozen=True)
class SequenceSpec:
    preset: str
    seed: int
    duration_s: float

    def key(self, cfg: PerceptionConfig) -> str:
        """File-name key: preset, seed, duration and a hash of everything the encoding depends on."""
        dep = json.dumps(
            {"grid": cfg.grid.model_dump(), "sensors": cfg.sensors.model_dump(), "v": CACHE_VERSION},
            sort_keys=True,
        )
        h = hashlib.sha256(dep.encode()).hexdigest()[:10]
        return f"{self.preset}-s{self.seed}-{self.duration_s:g}s-{h}"


def make_specs(presets: Sequence[str], seeds: Iterable[int], duration_s: float) -> list[SequenceSpec]:
    """One sequence per seed, presets assigned round-robin so every preset is represented."""
    seeds = list(seeds)
    return [SequenceSpec(presets[i % len(presets)], int(s), float(duration_s)) for i, s in enumerate(seeds)]


# ---------------------------------------------------------------------------------- targets
def rasterize_objects(objects: np.ndarray, grid: GridConfig):
    """Dense object targets from objects in base_link.

    objects: [N, 9] columns (class, x, y, yaw, l, w, h, vx, vy), velocity over ground in base_link axes.
    Returns velocity [2,H,W], center [4,H,W] in [0,1], box [7,H,W], center_mask [H,W] bool.
    """
    H, W, res = grid.nx, grid.ny, grid.resolution
    velocity = np.zeros((2, H, W), np.float32)
    center = np.zeros((NUM_CENTER_CLASSES, H, W), np.float32)
    box = np.zeros((7, H, W), np.float32)
    mask = np.zeros((H, W), bool)
    xs = grid.x_min + (np.arange(H) + 0.5) * res
    ys = grid.y_min + (np.arange(W) + 0.5) * res
    for cls, x, y, yaw, length, width, height, vx, vy in np.asarray(objects, np.float64).reshape(-1, 9):
        half = 0.5 * math.hypot(length, width) + res
        i0, i1 = np.searchsorted(xs, x - half), np.searchsorted(xs, x + half)
        j0, j1 = np.searchsorted(ys, y - half), np.searchsorted(ys, y + half)
        if i0 >= i1 or j0 >= j1:
            continue  # entirely outside the grid
        # Cells whose centre lies in the box (inflated by half a cell so thin objects get cells).
        dx = xs[i0:i1, None] - x
        dy = ys[None, j0:j1] - y
        c, s = math.cos(yaw), math.sin(yaw)
        along, across = c * dx + s * dy, -s * dx + c * dy
        inside = (np.abs(along) <= length / 2 + res / 2) & (np.abs(across) <= width / 2 + res / 2)
        velocity[0, i0:i1, j0:j1][inside] = vx
        velocity[1, i0:i1, j0:j1][inside] = vy
        k = int(cls) - 1
        ci, cj = math.floor((x - grid.x_min) / res), math.floor((y - grid.y_min) / res)
        if not (0 <= k < NUM_CENTER_CLASSES and 0 <= ci < H and 0 <= cj < W):
            continue  # unknown class or centre outside the grid: no centre target
        # Gaussian spread ~ a quarter of the object's smaller side (CenterNet uses a size-based radius).
        sigma = max(1.0, 0.25 * min(length, width) / res)
        r = math.ceil(3 * sigma)
        a0, a1, b0, b1 = max(ci - r, 0), min(ci + r + 1, H), max(cj - r, 0), min(cj + r + 1, W)
        gi = np.arange(a0, a1)[:, None] - ci
        gj = np.arange(b0, b1)[None, :] - cj
        g = np.exp(-(gi**2 + gj**2) / (2 * sigma**2))
        center[k, a0:a1, b0:b1] = np.maximum(center[k, a0:a1, b0:b1], g)
        center[k, ci, cj] = 1.0
        box[:, ci, cj] = (
            x - xs[ci], y - ys[cj], math.log(max(length, 0.1)), math.log(max(width, 0.1)),
            math.log(max(height, 0.1)), math.sin(yaw), math.cos(yaw),
        )
        mask[ci, cj] = True
    return velocity, center, box, mask


# ---------------------------------------------------------------------------------- generation
def _objects_base_link(frame) -> np.ndarray:
    """[N, 9] (class, x, y, yaw, l, w, h, vx, vy) in base_link from a SimFrame's objects_base."""
    o = frame.objects_base
    cols = [o["cls"], o["x"], o["y"], o["yaw"], o["l"], o["w"], o["h"], o["vx"], o["vy"]]
    return np.stack([np.asarray(c, np.float64) for c in cols], 1) if len(o) else np.zeros((0, 9))


class SimFrameEncoder:
    """SimFrame -> BEV features [C, H, W] as the pipeline computes them: the frame assembler (pairing,
    motion compensation to the LiDAR stamp, ego twist from consecutive odom poses; FrameInputs.from_sim)
    then the pipeline's LiDAR input step (bev.lidar_input) and encoder (bev.features.encode_frame).
    One instance per sequence."""

    def __init__(self, cfg: PerceptionConfig, scenario_config):
        from ssm_perception.bev.grid import BevGrid
        from ssm_perception.frame_assembler import FrameAssembler

        self.cfg = cfg
        self.scenario_config = scenario_config
        self.grid = BevGrid.from_config(cfg.grid)
        self.assembler = FrameAssembler(cfg)
        # The pipeline's per-sensor LiDAR normalisation (intensity scale, fields, ego crop), so that
        # randomised sensors train on what inference feeds the encoder; its mounting checks only
        # report, so they are off here.
        from ssm_perception.bev.lidar_input import LidarInput

        self.lidar_input = LidarInput(cfg.lidar_input.model_copy(update={"mount_check": False}))

    def __call__(self, frame) -> np.ndarray:
        from ssm_perception.bev.features import encode_frame
        from ssm_perception.pipeline import FrameInputs

        inp = FrameInputs.from_sim(self.scenario_config, frame, self.assembler)
        if inp.lidar is not None and inp.T_base_lidar is not None:
            inp.lidar = self.lidar_input(inp.lidar, inp.T_base_lidar, inp.T_odom_base, inp.stamp_ns, inp.lidar_frame)
        lidar, radar, camera = inp.scans(self.cfg.sensors)
        return encode_frame(self.grid, lidar=lidar, radar=radar, camera=camera, ego_twist=inp.ego_twist).features.numpy()


CLASS_NAMES = ("unknown", "car", "truck", "cyclist", "pedestrian")


def generate_sequence(spec: SequenceSpec, cfg: PerceptionConfig, progress: bool = False,
                      info: dict | None = None) -> dict[str, np.ndarray]:
    """Run the simulator for one sequence and encode every LiDAR frame (see the module doc).

    ``info`` (optional) is filled with what the data summary needs: layout, sensor model, weather,
    objects per class on the grid, CPU seconds (simulation + encoding, encoding alone)."""
    import time

    from ssm_perception.sim.scenario import Scenario

    cpu0 = time.process_time()
    enc_cpu = 0.0
    ids_per_class: dict[int, set] = {}
    centres = np.zeros(len(CLASS_NAMES), np.int64)
    scenario = Scenario.from_preset(spec.preset, seed=spec.seed, duration_s=spec.duration_s, grid=cfg.grid)
    encoder = SimFrameEncoder(cfg, scenario.config)
    cols: dict[str, list] = {k: [] for k in
                             ("features", "occupied", "dynamic", "visible", "velocity", "center", "box",
                              "center_mask", "pose", "stamp_ns")}
    frames = scenario.frames()
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc=f"sim {spec.preset}/{spec.seed}", unit="frame", leave=False)
    g = cfg.grid
    for frame in frames:
        t_enc = time.process_time()
        feats = encoder(frame)
        enc_cpu += time.process_time() - t_enc
        if info is not None:
            o = frame.objects_base
            on = ((o["x"] >= g.x_min) & (o["x"] < g.x_min + g.length_x) & (o["y"] >= g.y_min)
                  & (o["y"] < g.y_min + g.length_y))
            for c, i in zip(o["cls"][on].tolist(), o["id"][on].tolist(), strict=True):
                ids_per_class.setdefault(int(c), set()).add(int(i))
            centres += np.bincount(o["cls"][on].astype(np.int64), minlength=len(CLASS_NAMES))[: len(CLASS_NAMES)]
        vel, ctr, box, cmask = rasterize_objects(_objects_base_link(frame), cfg.grid)
        cols["features"].append(feats.astype(np.float16))
        cols["occupied"].append(np.asarray(frame.occupied, bool))
        cols["dynamic"].append(np.asarray(frame.dynamic, bool))
        cols["visible"].append(np.asarray(frame.visible, bool))
        cols["velocity"].append(vel.astype(np.float16))
        cols["center"].append(np.round(ctr * 255).astype(np.uint8))
        cols["box"].append(box.astype(np.float16))
        cols["center_mask"].append(cmask)
        cols["pose"].append(np.asarray(frame.T_odom_base, np.float64))
        cols["stamp_ns"].append(int(frame.stamp_ns))
    if not cols["stamp_ns"]:
        raise RuntimeError(f"simulator produced no frames for {spec}")
    if info is not None:
        sc = scenario.config
        info.update(
            preset=spec.preset, seed=spec.seed, duration_s=spec.duration_s, layout=sc.layout,
            frames=len(cols["stamp_ns"]), lidar_model=sc.lidar.model, lidar_beams=sc.lidar.beams,
            intensity_model=sc.lidar.intensity_model, self_returns=sc.lidar.self_returns,
            weather=[a.weather for a in sc.adversities if a.type == "weather"],
            objects={CLASS_NAMES[c]: len(v) for c, v in sorted(ids_per_class.items())},
            object_frames={CLASS_NAMES[c]: int(n) for c, n in enumerate(centres) if n},
            cpu_s=round(time.process_time() - cpu0, 3), encode_cpu_s=round(enc_cpu, 3),
        )
    return {k: np.stack(v) if k != "stamp_ns" else np.asarray(v, np.int64) for k, v in cols.items()}


class CompressedFrames:
    """A [T, ...] array stored as one zstd frame per time step (the per-cell arrays of a compressed
    cache entry: BEV features are ~80 % zeros and shrink 19-53x, the sparse targets more). Reads
    decompress only the frames asked for, from a memory-mapped file (page cache, as the .npy
    entries). Supports the indexing the trainer uses: an int, a slice or a list of frames, optionally
    followed by indices into the frame (``a[t, channels]``). zstandard: a kept binding of the
    reference zstd library (requirements.lock)."""

    SUFFIX = ".zst"

    def __init__(self, path: str | Path):
        path = Path(path)
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.ndim = len(self.shape)
        self._offsets = np.asarray(meta["offsets"], np.int64)
        self._data = np.memmap(path, dtype=np.uint8, mode="r") if self._offsets[-1] else np.zeros(0, np.uint8)

    @staticmethod
    def write(path: Path, array: np.ndarray, level: int = 3) -> None:
        import zstandard

        comp = zstandard.ZstdCompressor(level=level)
        offsets = [0]
        with open(path, "wb") as f:
            for frame in array:
                blob = comp.compress(np.ascontiguousarray(frame).tobytes())
                f.write(blob)
                offsets.append(offsets[-1] + len(blob))
        meta = {"shape": list(array.shape), "dtype": array.dtype.str, "offsets": offsets}
        path.with_name(path.name + ".json").write_text(json.dumps(meta))

    def __len__(self) -> int:
        return self.shape[0]

    def _frame(self, t: int) -> np.ndarray:
        import zstandard

        if not -self.shape[0] <= t < self.shape[0]:
            raise IndexError(f"frame {t} out of range for {self.shape[0]} frames")
        t %= self.shape[0]
        raw = zstandard.ZstdDecompressor().decompress(self._data[self._offsets[t] : self._offsets[t + 1]].tobytes())
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape[1:])

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, int | np.integer):
            out = self._frame(int(key))
            return out[rest] if rest else out
        frames = range(*key.indices(self.shape[0])) if isinstance(key, slice) else [int(k) for k in key]
        out = (np.stack([self._frame(t) for t in frames]) if len(frames)
               else np.zeros((0, *self.shape[1:]), self.dtype))
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


def cache_path(cache_dir: str | Path, spec: SequenceSpec, cfg: PerceptionConfig) -> Path:
    return Path(cache_dir) / spec.key(cfg)


def build_sequence(spec: SequenceSpec, cfg: PerceptionConfig, cache_dir: str | Path | None,
                   compress: bool = False) -> Path | dict:
    """Generate one sequence, or reuse its cache entry. Returns the cache directory (or the arrays).

    The cache is a directory of plain .npy files (one per array) so that training memory-maps them:
    no decompression, and many sequences cost page cache rather than process memory. ``compress``
    stores the per-cell arrays (features and targets) as zstd frames instead (CompressedFrames):
    hours of driving then fit on a disk; either kind of entry is read by load_sequence.
    """
    if cache_dir is None:
        return generate_sequence(spec, cfg)
    path = cache_path(cache_dir, spec, cfg)
    if (path / "spec.json").is_file():
        return path
    info: dict = {}
    data = generate_sequence(spec, cfg, info=info)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for k, v in data.items():
        if compress and k not in ("pose", "stamp_ns"):  # the per-cell arrays (features, targets)
            CompressedFrames.write(tmp / f"{k}{CompressedFrames.SUFFIX}", v)
        else:
            np.save(tmp / f"{k}.npy", v)
    if info:  # what scripts/gen_train_data.py and the model card summarise
        (tmp / "info.json").write_text(json.dumps(info))
    (tmp / "spec.json").write_text(json.dumps(asdict(spec)))  # written last: marks a complete entry
    try:
        os.replace(tmp, path)  # atomic: a killed worker never leaves a half-written entry under the key
    except OSError:  # another process finished the same sequence first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_sequence(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of a cached sequence, memory-mapped read-only."""
    path = Path(path)
    out = {p.stem: np.load(p, mmap_mode="r") for p in sorted(path.glob("*.npy"))}
    for p in sorted(path.glob(f"*{CompressedFrames.SUFFIX}")):
        out[p.name[: -len(CompressedFrames.SUFFIX)]] = CompressedFrames(p)
    return out


def _worker(args):
    index, spec, cfg_json, cache_dir, *rest = args
    # Each worker is single-threaded: parallelism comes from the pool, not from torch/BLAS threads.
    import torch

    torch.set_num_threads(1)
    cfg = PerceptionConfig.model_validate_json(cfg_json)
    out = build_sequence(spec, cfg, cache_dir, compress=bool(rest and rest[0]))
    return index, spec, (str(out) if isinstance(out, Path) else out)


class SequenceStore:
    """Sequences in memory, filled by a pool of worker processes in the background.

    Training can start as soon as ``min_ready`` training sequences exist and sees more as they
    arrive (``sequences`` only grows; appends are atomic under the GIL). Validation specs are
    generated by the same pool after the training ones, into ``val_sequences``.
    """

    def __init__(self, specs: Sequence[SequenceSpec], cfg: PerceptionConfig, cache_dir: str | Path | None,
                 workers: int = 0, val_specs: Sequence[SequenceSpec] = (), compress: bool = False):
        self.compress = compress
        self.specs = list(specs)
        self.val_specs = list(val_specs)
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.workers = workers
        self.sequences: list[dict[str, np.ndarray]] = []
        self.ready_specs: list[SequenceSpec] = []
        self.val_sequences: list[dict[str, np.ndarray]] = []
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = None
        self._thread: threading.Thread | None = None

    def start(self) -> SequenceStore:
        self._thread = threading.Thread(target=self._run, name="sequence-store", daemon=True)
        self._thread.start()
        return self

    def _add(self, job_index: int, spec, out) -> None:
        data = load_sequence(out) if isinstance(out, str | Path) else out
        if job_index < len(self.specs):
            self.sequences.append(data)
            self.ready_specs.append(spec)
        else:
            self.val_sequences.append(data)

    def _run(self) -> None:
        try:
            cfg_json = self.cfg.model_dump_json()
            n = len(self.specs)
            # Validation first: it is small, and the end of training must not wait for the rest of
            # the training data (see stop()).
            jobs = [(n + i, s, cfg_json, self.cache_dir, self.compress) for i, s in enumerate(self.val_specs)]
            jobs += [(i, s, cfg_json, self.cache_dir, self.compress) for i, s in enumerate(self.specs)]
            if self.workers <= 0:
                for job in jobs:
                    if self._stop.is_set():
                        break
                    self._add(*_worker(job))
                    self._wake.set()
            else:
                import multiprocessing as mp

                # spawn: forking a process that already holds torch/CUDA threads is unsafe.
                with mp.get_context("spawn").Pool(min(self.workers, len(jobs))) as pool:
                    self._pool = pool
                    for i, spec, out in pool.imap_unordered(_worker, jobs):
                        self._add(i, spec, out)
                        self._wake.set()
                        if self._stop.is_set():
                            break
        except BaseException as exc:  # noqa: BLE001 - surfaced to the trainer by wait()
            if not self._stop.is_set():
                self.error = exc
        finally:
            self._done.set()
            self._wake.set()

    def wait_validation(self) -> None:
        """Block until every validation sequence exists (they are generated first)."""
        while len(self.val_sequences) < len(self.val_specs) and not self._done.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
        if self.error is not None:
            raise RuntimeError(f"data generation failed: {self.error!r}") from self.error
        if len(self.val_sequences) < len(self.val_specs):
            raise RuntimeError(f"only {len(self.val_sequences)} of {len(self.val_specs)} validation sequences")

    def stop(self) -> None:
        """Stop generating (training is over); finished sequences stay in the cache."""
        self._stop.set()
        if self._pool is not None:
            self._pool.terminate()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, min_ready: int, timeout: float | None = None) -> None:
        """Block until ``min_ready`` training sequences exist (or all are done); re-raise a worker error."""
        import time

        t0 = time.monotonic()
        min_ready = min(min_ready, len(self.specs))
        while len(self.sequences) < min_ready and not self._done.is_set() and self.error is None:
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError(f"only {len(self.sequences)} of {min_ready} sequences after {timeout:.0f} s")
            self._wake.wait(0.5)
            self._wake.clear()
        if self.error is not None:
            raise RuntimeError(f"data generation failed: {self.error!r}") from self.error
        if not self.sequences:
            raise RuntimeError("data generation produced no sequences")

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"data generation failed: {self.error!r}") from self.error
