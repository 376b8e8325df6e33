"""Training loop: stateful truncated BPTT over simulated sequences, with the node's ego-motion warp.

Each of the B batch slots walks through one sequence, L frames per optimizer step; the temporal
state is carried (detached) from one window to the next, so the model learns to use memory longer
than L frames, exactly as it runs in the node: warp(previous state) -> step -> heads. A slot jumps
to a random new sequence/position at the end of a sequence or with ``reset_prob`` (the state is
then reset to zero). Every slot runs the node's own ResetPolicy (temporal/reset_policy.py) over its
frames, so training sees exactly the resets the node makes: full resets on time gaps, localization
jumps and LiDAR dropouts, and partial resets of cells unobserved for ``reset.unobserved_cell_reset_s``;
random masked resets on top teach recovery. Validation runs the same policy.

Mixed precision: bf16 autocast on CUDA for the step; parameters and the carried state stay fp32.
Multi-GPU: torch DistributedDataParallel started by torchrun (NCCL on CUDA, gloo on CPU); each
process generates and samples its own share of the training sequences.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ConfigError, PerceptionConfig
from ssm_perception.train.config import TrainConfig
from ssm_perception.train.dataset import SequenceStore, make_specs
from ssm_perception.train.losses import LossWeights, total_loss

TRAIN_STATE = "trainer_state_r{rank}.pt"
TARGET_ARRAYS = ("occupied", "dynamic", "visible", "velocity", "center", "box", "center_mask")


# ---------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str) -> tuple[Dist, torch.device]:
    """Process group from torchrun's environment (if any) and the device this process uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: {device_pref!r} requested but torch sees no CUDA device; "
                              f"use run.device cpu or auto")
        device = torch.device("cuda", d.local_rank if d.enabled else torch.device(device_pref).index or 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


# ---------------------------------------------------------------------------------- sampling
class WindowSampler:
    """B slots, each a cursor (sequence, next frame) through the ready sequences (stateful TBPTT)."""

    def __init__(self, store: SequenceStore, cfg: TrainConfig, seed: int):
        self.store = store
        self.B, self.L = cfg.optim.batch_size, cfg.optim.tbptt
        self.reset_prob = cfg.optim.reset_prob
        self.partial_prob = cfg.optim.partial_reset_prob
        self.rng = np.random.default_rng(seed)
        self.reset_cfg, self.grid_cfg = cfg.perception.reset, cfg.perception.grid
        self._pool = None  # threads that assemble the B windows of a batch side by side
        self.resize(self.B)

    def resize(self, batch: int) -> None:
        """(Re)start with ``batch`` empty slots, each with its own reset policy."""
        self.B = batch
        self.slots: list[tuple[int, int] | None] = [None] * batch  # (sequence index, next frame)
        self.policies = [quiet_policy(self.reset_cfg, self.grid_cfg) for _ in range(batch)]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "slots": [list(s) if s else [-1, -1] for s in self.slots],
                "policies": [p.memory() for p in self.policies]}

    def load_state_dict(self, st: dict) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.slots = [tuple(s) if s[0] >= 0 else None for s in st["slots"]]
        for p, m in zip(self.policies, st["policies"], strict=True):
            p.load_memory(m)

    def _fresh(self) -> tuple[int, int]:
        n = len(self.store.sequences)
        k = int(self.rng.integers(n))
        T = len(self.store.sequences[k]["stamp_ns"])
        return k, int(self.rng.integers(max(T - self.L, 0) + 1))

    def next(self) -> dict:
        """Numpy batch: features [L,B,C,H,W] f16, targets {name: [L,B,k,H,W]}, se2 [L,B,3] (motion of the
        current frame in the previous one), dt [L,B] s, reset [L,B,H,W] bool (cells reset before the step)."""
        B, L = self.B, self.L
        seqs = self.store.sequences
        plans = []  # (slot, sequence, frame indices); the random draws stay sequential (reproducible)
        for b in range(B):
            slot = self.slots[b]
            fresh = slot is None or self.rng.random() < self.reset_prob
            if not fresh:
                k, t = slot
                fresh = t + L > len(seqs[k]["stamp_ns"])
            if fresh:
                k, t = self._fresh()
                self.policies[b].clear()
            T = len(seqs[k]["stamp_ns"])
            plans.append((b, seqs[k], [min(t + i, T - 1) for i in range(L)]))  # a short sequence repeats its last frame
            self.slots[b] = (k, t + L)

        def window(plan):  # copies from the memory-mapped cache and the reset policy: both release the GIL
            b, seq, idx = plan
            targets = {name: seq[name][idx] for name in TARGET_ARRAYS}  # raw dtypes: converted on the device
            return (seq["features"][idx], targets, *policy_window(self.policies[b], seq, idx))

        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=min(B, 8), thread_name_prefix="window")
        feats, tgts, se2, dts, resets = (list(x) for x in zip(*self._pool.map(window, plans), strict=True))
        for rm in resets:  # rm [L, H, W]
            H, W = rm.shape[1:]
            for i in range(L):
                if self.rng.random() < self.partial_prob:  # a random rectangle of cells forgets
                    h, w = int(self.rng.integers(H // 8, H // 2 + 1)), int(self.rng.integers(W // 8, W // 2 + 1))
                    i0, j0 = int(self.rng.integers(H - h + 1)), int(self.rng.integers(W - w + 1))
                    rm[i, i0 : i0 + h, j0 : j0 + w] = True
        return {
            "features": np.stack(feats, 1),
            "targets": {n: np.stack([t[n] for t in tgts], 1) for n in TARGET_ARRAYS},
            "se2": np.stack(se2, 1),
            "dt": np.stack(dts, 1),
            "reset": np.stack(resets, 1),
            "sampler_state": self.state_dict(),  # state after this batch: what a checkpoint must resume from
        }


class Prefetcher:
    """Builds the next batches in a background thread while the GPU works on the current one.

    Numpy copies release the GIL, so gathering windows from the memory-mapped cache overlaps with
    the training step. Each batch carries the sampler state after it, so a checkpoint records the
    state of what was consumed, not of what was prefetched (resume stays exact)."""

    def __init__(self, sampler: WindowSampler, depth: int = 3):
        import queue
        import threading

        self.sampler = sampler
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import queue

        try:
            while not self._stop.is_set():
                batch = self.sampler.next()
                # Page-locked copy here, off the training thread, so the host-to-device copy is async.
                if torch.cuda.is_available():
                    batch["features_pinned"] = torch.from_numpy(batch["features"]).pin_memory()
                while not self._stop.is_set():
                    try:
                        self.q.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 - re-raised in the training thread by next()
            self.error = exc

    def next(self) -> dict:
        import queue

        while True:
            if self.error is not None:
                raise RuntimeError(f"batch preparation failed: {self.error!r}") from self.error
            try:
                return self.q.get(timeout=1.0)
            except queue.Empty:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)  # it finishes the batch in hand, then sees the flag


def quiet_policy(reset_cfg, grid_cfg):
    """The node's ResetPolicy for a training slot or a validation sequence. Its per-reset log lines
    (WARNING on a localization jump) are the node's business, not training's: silenced here."""
    import logging

    from ssm_perception.temporal.reset_policy import ResetPolicy

    logging.getLogger("ssm_perception.temporal.reset_policy").setLevel(logging.ERROR)
    return ResetPolicy(reset_cfg, grid_cfg)


def policy_window(policy, seq: dict, idx: list[int]):
    """Run the reset policy over the frames ``idx`` of a sequence, as the node does frame by frame
    (decide -> step -> observe). Returns se2 [L,3] warp motion (current frame in the previous one),
    dt [L] s, and reset masks [L,H,W] bool (all True = full reset; else the stale cells)."""
    import torch

    from ssm_perception.bev.features import channel_index
    from ssm_perception.temporal.health import observed_from_features

    stamps, poses = seq["stamp_ns"], seq["pose"]
    nominal = float(np.median(np.diff(stamps))) * 1e-9 if len(stamps) > 1 else 0.1
    L = len(idx)
    H, W = seq["occupied"].shape[1:]
    se2, dt, reset = np.zeros((L, 3)), np.full(L, nominal), np.zeros((L, H, W), bool)
    # Only the channels observed_from_features reads (a full frame is 25 channels: too slow to copy
    # 64 times per batch in the prefetch thread); the rest stay zero.
    used = [channel_index(n) for n in ("lidar_log_count", "lidar_free", "radar_log_count", "camera_visible")]
    f = torch.zeros(1, seq["features"].shape[1], H, W)  # [1, C, H, W]
    for i, t in enumerate(idx):
        if i > 0 and idx[i - 1] == t:  # repeated last frame of a short sequence: no motion, no new frame
            continue
        f[0, used] = torch.from_numpy(np.asarray(seq["features"][t, used], np.float32))
        lidar_present = bool((f[0, used[:2]] != 0).any())
        d = policy.decide(int(stamps[t]), poses[t], lidar_present=lidar_present)
        if d.full:
            reset[i] = True
        else:
            m = d.T_prev_cur
            se2[i] = (m[0, 3], m[1, 3], math.atan2(m[1, 0], m[0, 0]))
            dt[i] = d.dt_s
            if d.cell_mask is not None:
                reset[i] = d.cell_mask.cpu().numpy()
        policy.observe(observed_from_features(f)[0])
    return se2, dt, reset


# ---------------------------------------------------------------------------------- model wrapper
class WindowModule(nn.Module):
    """One TBPTT window as a single forward (what DDP needs): warp -> step -> heads -> loss per frame."""

    def __init__(self, model: nn.Module, grid: BevGrid, weights: LossWeights, amp_dtype=None):
        super().__init__()
        self.model = model
        self.grid = grid
        self.weights = weights
        self.amp_dtype = amp_dtype

    def forward(self, x: Tensor, targets: dict[str, Tensor], se2: Tensor, dt: Tensor, reset: Tensor,
                state: dict[str, Tensor]):
        # x: [L, B, C, H, W]; se2: [L, B, 3] (cpu float64); dt: [L, B]; reset: [L, B, H, W] bool
        from ssm_perception.temporal.warp import warp_state

        L = x.shape[0]
        total = x.new_zeros((), dtype=torch.float32)
        parts_sum: dict[str, Tensor] = {}
        for i in range(L):
            state = warp_state(state, se2[i], self.grid)
            amp = torch.autocast(x.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
            with amp:
                heads, state = self.model.step(x[i], state, dt[i], reset[i])
            state = {k: v.float() for k, v in state.items()}  # the carried state stays fp32
            loss, parts = total_loss(heads, {k: v[i] for k, v in targets.items()}, self.weights)
            total = total + loss / L
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / L
        return total, parts_sum, state


def build_model(cfg: PerceptionConfig) -> nn.Module:
    from ssm_perception.model import BevPerceptionModel

    return BevPerceptionModel(cfg)


def targets_to_device(raw: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Raw target arrays [L, B, (k,) H, W] (bool / uint8 / float16) -> float32 [L, B, k, H, W] on device."""
    nb = device.type == "cuda"
    out = {}
    for name, a in raw.items():
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=nb)
        t = t.float() / 255.0 if name == "center" else t.float()
        out[name] = t.unsqueeze(2) if t.dim() == 4 else t  # per-cell masks get their channel axis
    return out


def _to_device(batch: dict, device: torch.device) -> tuple:
    nb = device.type == "cuda"
    feats = batch.get("features_pinned")
    feats = torch.from_numpy(batch["features"]) if feats is None else feats
    x = feats.to(device, non_blocking=nb and feats.is_pinned()).float()
    tg = targets_to_device(batch["targets"], device)
    se2 = torch.from_numpy(batch["se2"])  # stays on the CPU: warp builds its sampling grid there
    dt = torch.from_numpy(batch["dt"]).to(device).float()
    reset = torch.from_numpy(batch["reset"]).to(device)
    return x, tg, se2, dt, reset


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up, then cosine to 5% over ``progress`` (max of step and wall-clock fraction)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.d, self.device = setup(cfg.run.device)
        self.progress = progress and self.d.main
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.grid = BevGrid.from_config(cfg.perception.grid)
        self.model = build_model(cfg.perception).to(self.device)
        self.init_from = self._warm_start(cfg.run.init_weights) if cfg.run.init_weights else None
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        w = cfg.loss
        weights = LossWeights(w.occupancy, w.dynamic, w.velocity, w.center, w.box, w.occ_static_pos,
                              w.occ_dynamic_pos, w.occluded)
        amp = torch.bfloat16 if (cfg.optim.amp and self.device.type == "cuda") else None
        self.window = WindowModule(self.model, self.grid, weights, amp)
        self.net = self.window
        if self.d.enabled and self.trainable:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # find_unused_parameters: a core may hold parameters that get no gradient by design
            # (the attention baseline's key bias cancels in its softmax); DDP must not wait for them.
            self.net = DDP(self.window, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=True)
        self.opt = (torch.optim.AdamW(self.trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
                    if self.trainable else None)
        self.step = 0
        self.elapsed_s = 0.0
        self.hidden: dict[str, Tensor] | None = None
        self.log: list[dict] = []
        data = cfg.data
        all_specs = make_specs(data.presets, data.train_seeds.seeds(), data.duration_s)
        self.train_specs = all_specs[self.d.rank :: self.d.world]
        self.val_specs = make_specs(data.presets, data.val_seeds.seeds(), data.val_duration_s)
        cache = data.cache_dir or None
        # Rank 0 also generates the held-out validation sequences, after its training share.
        self.store = SequenceStore(self.train_specs, cfg.perception, cache, max(data.workers // self.d.world, 0)
                                   if data.workers else 0,
                                   val_specs=self.val_specs if self.d.main else (), compress=data.compress_cache)
        self.sampler = WindowSampler(self.store, cfg, seed=cfg.run.seed * 1000 + self.d.rank)
        self.resume = resume
        self.prefetch: Prefetcher | None = None
        self._sampler_state: dict | None = None  # sampler state after the last consumed batch

    # -------------------------------------------------------------- checkpoints
    def _warm_start(self, path: str) -> dict:
        """Copy the weights of a checkpoint of the same model section into the fresh model (the
        optimizer and the schedule start anew). Returns what the model card needs: the source, its
        sha256 and the training it had already had, so that reported totals stay honest. A resume
        (--resume with a trainer state) later overwrites these weights with its own."""
        from ssm_perception.model import CheckpointError, file_sha256, load_checkpoint

        kind = self.cfg.perception.model.kind
        # A warm start may come from any run (its weights are retrained, and the result is unpinned
        # anyway): untrusted weights are allowed here, with the loader's warning.
        try:
            src, meta = load_checkpoint(path, expected_kind=kind, grid=self.cfg.perception.grid, allow_untrusted=True)
        except CheckpointError as exc:
            raise CheckpointError(f"--init-weights: {exc}") from None
        # not the architecture
        runtime = {"backend", "device", "checkpoint", "cpu_threads", "max_cells_per_call", "allow_untrusted_weights"}
        theirs = src.config.model.model_dump(exclude=runtime)
        ours = self.cfg.perception.model.model_dump(exclude=runtime)
        if theirs != ours:
            diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
            raise CheckpointError(f"--init-weights {path}: model section differs from the training config "
                                  f"(checkpoint, config): {diff}")
        self.model.load_state_dict(src.state_dict())
        steps, seconds = int(meta.get("steps", 0)), float(meta.get("train_time_s", 0.0))
        return {
            "path": Path(path).name,
            "sha256": file_sha256(Path(path)),
            "steps": steps,
            "train_time_s": seconds,
            "train_seeds": meta.get("train_seeds", []),
            # cumulative over every warm start in the chain (the source may itself be warm-started)
            "total_steps": int(meta.get("total_steps", steps)),
            "total_train_time_s": float(meta.get("total_train_time_s", seconds)),
        }

    def _state_path(self, rank: int | None = None) -> Path:
        return self.out / TRAIN_STATE.format(rank=self.d.rank if rank is None else rank)

    def save_state(self) -> Path:
        """Everything needed to continue bit-for-bit: weights, optimizer, sampler, carried state."""
        st = {
            "model": self.model.state_dict(),
            "optim": self.opt.state_dict() if self.opt else {},
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "sampler": self._sampler_state or self.sampler.state_dict(),
            "hidden": {k: v.detach().cpu() for k, v in (self.hidden or {}).items()},
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.model_dump_json(),
        }
        path = self._state_path()
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(st, tmp)
        os.replace(tmp, path)
        return path

    def load_state(self) -> bool:
        path = self._state_path()
        if not path.is_file():
            return False
        st = torch.load(path, map_location="cpu", weights_only=True)
        if json.loads(st["config"])["perception"]["model"] != json.loads(self.cfg.model_dump_json())["perception"]["model"]:
            raise RuntimeError(f"{path}: saved with a different perception.model section; cannot resume")
        self.model.load_state_dict(st["model"])
        if self.opt and st["optim"]:
            self.opt.load_state_dict(st["optim"])
        self.step, self.elapsed_s = int(st["step"]), float(st["elapsed_s"])
        self.sampler.load_state_dict(st["sampler"])
        self._sampler_state = st["sampler"]
        self.hidden = {k: v.to(self.device) for k, v in st["hidden"].items()} or None
        torch.set_rng_state(st["torch_rng"])
        return True

    # -------------------------------------------------------------- loop
    def _should_stop(self, t_start: float, until_step: int | None = None) -> bool:
        run = self.cfg.run
        stop = self.step >= (run.max_steps if until_step is None else min(until_step, run.max_steps))
        if run.max_minutes > 0 and self.elapsed_s + (time.monotonic() - t_start) >= run.max_minutes * 60:
            stop = True
        if self.d.enabled:  # every rank must stop at the same step
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        return stop

    def train(self, until_step: int | None = None) -> dict:
        """Train to run.max_steps / run.max_minutes and validate. ``until_step`` stops early without
        validating (an interruption, as tests and preemptible machines need)."""
        cfg = self.cfg
        self.store.start()
        self.store.wait(cfg.data.min_ready or len(self.train_specs))
        if self.resume and self.load_state() and self.d.main:
            print(f"resumed from {self._state_path()} at step {self.step}", flush=True)
        if not self.trainable:
            if self.d.main:
                print(f"model.kind={cfg.perception.model.kind} has no trainable parameters: validating only", flush=True)
            return self.finish(train_time_s=0.0)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.run.max_steps, initial=self.step, desc=f"train {cfg.perception.model.kind}",
                       unit="step", dynamic_ncols=True)
        t_start = time.monotonic()
        self.model.train()
        self.out.mkdir(parents=True, exist_ok=True)
        log_f = open(self.out / "train_log.jsonl", "a") if self.d.main else None  # noqa: SIM115
        # On the GPU, batches are gathered in a background thread (on the CPU it would only compete).
        self.prefetch = Prefetcher(self.sampler) if self.device.type == "cuda" else None
        try:
            while not self._should_stop(t_start, until_step):
                try:
                    self._one_step(t_start)
                except torch.cuda.OutOfMemoryError:
                    if self.step > 0 or self.sampler.B == 1 or self.d.enabled:
                        raise
                    self._halve_batch()  # the first step tells whether the batch fits; halve and retry
                    continue
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.run.log_every == 0 and self.log:
                    rec = self.log[-1]
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k not in ("step", "lr", "t")})
                    if log_f:
                        log_f.write(json.dumps(rec) + "\n")
                        log_f.flush()
                if self.step % cfg.run.checkpoint_every == 0:
                    self.elapsed_s += time.monotonic() - t_start
                    t_start = time.monotonic()
                    self.save_state()
        finally:
            if self.prefetch is not None:
                self.prefetch.close()
            if bar is not None:
                bar.close()
            if log_f:
                log_f.close()
        self.elapsed_s += time.monotonic() - t_start
        self.save_state()
        if until_step is not None and self.step < cfg.run.max_steps:
            return {}
        return self.finish(train_time_s=self.elapsed_s)

    def _halve_batch(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.hidden = None
        torch.cuda.empty_cache()
        if self.prefetch is not None:
            self.prefetch.close()
        self.sampler.resize(self.sampler.B // 2)
        self._sampler_state = None
        if self.prefetch is not None:
            self.prefetch = Prefetcher(self.sampler)
        print(f"CUDA out of memory at the first step: batch size reduced to {self.sampler.B}", flush=True)

    def _one_step(self, t_start: float) -> None:
        cfg = self.cfg
        batch = self.prefetch.next() if self.prefetch is not None else self.sampler.next()
        self._sampler_state = batch["sampler_state"]
        x, tg, se2, dt, reset = _to_device(batch, self.device)
        B = x.shape[1]
        if self.hidden is None:
            self.hidden = self.model.init_state(B, self.device)
        progress = self.step / max(cfg.run.max_steps, 1)
        if cfg.run.max_minutes > 0:
            progress = max(progress, (self.elapsed_s + time.monotonic() - t_start) / (cfg.run.max_minutes * 60))
        for g in self.opt.param_groups:
            g["lr"] = cfg.optim.lr * lr_factor(self.step, progress, cfg.optim.warmup_steps)
        loss, parts, state = self.net(x, tg, se2, dt, reset, self.hidden)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.optim.grad_clip)
        self.opt.step()
        self.hidden = {k: v.detach() for k, v in state.items()}
        self.step += 1
        if self.step % cfg.run.log_every == 0 or self.step == 1:
            rec = {"step": self.step, "loss": float(loss.detach()), "gnorm": float(gnorm),
                   "lr": self.opt.param_groups[0]["lr"]}
            rec.update({k: float(v) for k, v in parts.items()})
            self.log.append(rec)

    # -------------------------------------------------------------- end of training
    def finish(self, train_time_s: float) -> dict:
        """Validate on the held-out seeds (rank 0) and write model.safetensors + metrics.json."""
        if self.d.enabled:
            dist.barrier()
        result: dict = {}
        if not self.d.main:
            self.store.stop()
        if self.d.main:
            from ssm_perception.model import save_checkpoint

            cfg = self.cfg
            # The sequences training could sample: with data.min_ready the rest of the planned seeds
            # were still being generated when training stopped, so the plan overstates the data.
            used = list(self.store.ready_specs[: len(self.store.sequences)])
            if not self.store.started:
                self.store.start()
            self.store.wait_validation()
            self.store.stop()  # the rest of the training data is no longer needed
            val = validate(self.model, self.store.val_sequences, cfg.perception, self.device, cfg.run.val_frames,
                           amp=self.window.amp_dtype)
            planned = make_specs(cfg.data.presets, cfg.data.train_seeds.seeds(), cfg.data.duration_s)
            if self.d.world > 1 or not used:  # other ranks' shares are not known here: the plan
                used = planned
            hours = sum(float(s.duration_s) for s in used) / 3600.0
            meta = {
                "kind": cfg.perception.model.kind,
                "perception_config": json.loads(cfg.perception.model_dump_json()),
                "presets": list(cfg.data.presets),
                "train_seeds": sorted(int(s.seed) for s in used),
                "planned_train_seeds": len(planned),
                "val_seeds": cfg.data.val_seeds.seeds(),
                "sequence_duration_s": cfg.data.duration_s,
                "train_hours": hours,
                "steps": self.step,
                "batch_size": self.sampler.B * self.d.world,
                "tbptt": cfg.optim.tbptt,
                "train_time_s": round(train_time_s, 1),
                "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
                "world_size": self.d.world,
                "data_summary": data_summary(cfg, used),
            }
            if self.init_from:
                meta["init_from"] = self.init_from
                meta["total_steps"] = self.step + self.init_from["total_steps"]
                meta["total_train_time_s"] = round(train_time_s + self.init_from["total_train_time_s"], 1)
            result = {"meta": meta, "val": val, "last_log": self.log[-1] if self.log else None}
            self.out.mkdir(parents=True, exist_ok=True)
            if self.trainable:
                save_checkpoint(self.model, self.out / "model.safetensors", meta)
            (self.out / "metrics.json").write_text(json.dumps(result, indent=2))
        if self.d.enabled:
            dist.barrier()
        return result


# ---------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: nn.Module, sequences: list[dict], cfg: PerceptionConfig, device: torch.device,
             max_frames: int = 0, amp=None) -> dict:
    """Run each held-out sequence frame by frame (warp -> step, resets on time gaps) and score it."""
    from ssm_perception.eval.occupancy import OccupancyMetrics, range_map
    from ssm_perception.temporal.warp import warp_state

    grid = BevGrid.from_config(cfg.grid)
    metrics = OccupancyMetrics(range_map(grid.nx, grid.ny, grid.resolution, grid.x_min, grid.y_min))
    recall = ClassRecall(cfg)
    vel_err, vel_n = 0.0, 0
    was_training = model.training
    model.eval()
    for seq in sequences:
        T = len(seq["stamp_ns"])
        T = min(T, max_frames) if max_frames else T
        state = model.init_state(1, device)
        policy = quiet_policy(cfg.reset, cfg.grid)
        for t in range(T):
            se2, dt, reset = policy_window(policy, seq, [t])
            state = warp_state(state, torch.from_numpy(se2), grid)
            x = torch.from_numpy(np.array(seq["features"][t : t + 1])).to(device).float()
            mask = torch.from_numpy(reset).to(device)  # [1, H, W]
            ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
            with ctx:
                heads, state = model.step(x, state, torch.tensor([dt[0]], device=device, dtype=torch.float32), mask)
            state = {k: v.float() for k, v in state.items()}
            p_occ = torch.sigmoid(heads["occupancy_logit"].float()[0, 0]).cpu().numpy()
            dyn = heads.get("dynamic_logit")
            dyn = None if dyn is None else p_occ * torch.sigmoid(dyn.float()[0, 0]).cpu().numpy()
            metrics.add(p_occ, seq["occupied"][t], seq["dynamic"][t], seq["visible"][t], dyn_joint=dyn)
            if "center_logit" in heads:
                recall.add(heads, seq["center"][t], seq["box"][t])
            m = seq["dynamic"][t] & seq["occupied"][t]
            if m.any() and "velocity" in heads:
                v = heads["velocity"].float()[0].cpu().numpy()
                tv = seq["velocity"][t].astype(np.float32)
                vel_err += float(np.linalg.norm(v[:, m] - tv[:, m], axis=0).sum())
                vel_n += int(m.sum())
    model.train(was_training)
    out = metrics.summary()
    out["velocity_epe_mps"] = vel_err / vel_n if vel_n else None
    out["recall_by_range"] = recall.summary()
    out["sequences"] = len(sequences)
    return out


def data_summary(cfg: TrainConfig, specs=None) -> dict | None:
    """Sensor models, layouts, weather and objects per class of the training sequences (``specs``,
    default: all planned), from the cache entries' info.json (written by train/dataset.py); None
    without a cache."""
    from collections import Counter

    from ssm_perception.train.dataset import cache_path

    if not cfg.data.cache_dir:
        return None
    infos = []
    if specs is None:
        specs = make_specs(cfg.data.presets, cfg.data.train_seeds.seeds(), cfg.data.duration_s)
    for spec in specs:
        f = cache_path(cfg.data.cache_dir, spec, cfg.perception) / "info.json"
        if f.is_file():
            info = json.loads(f.read_text())
            if "lidar_model" in info:
                infos.append(info)
    if not infos:
        return None
    objects: Counter = Counter()
    for i in infos:
        objects.update(i.get("objects", {}))
    return {"sequences": len(infos), "sensor_models": dict(Counter(i["lidar_model"] for i in infos)),
            "layouts": dict(Counter(i["layout"] for i in infos)),
            "weather": dict(Counter(w for i in infos for w in i.get("weather", []))),
            "objects_per_class": dict(objects)}


RECALL_BINS_M = (0.0, 20.0, 35.0, 50.0, math.inf)  # distance of the object centre from base_link
RECALL_MATCH_M = 2.0  # centre distance for a match (the middle of nuScenes' 0.5-4 m thresholds)


class ClassRecall:
    """Per-class detection recall by range on validation frames: the selected detections (decoder +
    the tracker's own ``select_detections`` with the config's thresholds) against the ground-truth
    object centres of the cached targets (centre-heatmap peaks = 255, refined by the box offset).
    A ground-truth object counts as found when a detection of its class lies within RECALL_MATCH_M
    (one-to-one, nearest first). Trucks include buses (msg/Track.msg has no bus class)."""

    def __init__(self, cfg: PerceptionConfig):
        from ssm_perception.tracking.detections import CLASS_NAMES

        self.cfg = cfg
        self.names = CLASS_NAMES
        n_bins = len(RECALL_BINS_M) - 1
        self.found = np.zeros((5, n_bins), np.int64)
        self.total = np.zeros((5, n_bins), np.int64)
        self.frames = 0

    def add(self, heads: dict, center_u8: np.ndarray, box: np.ndarray) -> None:
        from ssm_perception.tracking.detections import (
            decode_detections,
            select_detections,
        )

        g = self.cfg.grid
        # the detections that reach the tracker's first stage (as the pipeline decodes and selects them)
        dets = select_detections(decode_detections(heads, g, self.cfg.tracking.detection_threshold),
                                 self.cfg.tracking)
        k, i, j = np.nonzero(np.asarray(center_u8) == 255)
        if not len(k):
            self.frames += 1
            return
        bx = np.asarray(box[:2, i, j], np.float64)
        gx = g.x_min + (i + 0.5) * g.resolution + bx[0]
        gy = g.y_min + (j + 0.5) * g.resolution + bx[1]
        cls = k + 1
        rbin = np.searchsorted(RECALL_BINS_M, np.hypot(gx, gy), side="right") - 1
        for c in np.unique(cls):
            gt = np.nonzero(cls == c)[0]
            dd = [d for d in dets if d.cls == c]
            hit = np.zeros(len(gt), bool)
            if dd:
                dx = np.array([d.x for d in dd])[None, :] - gx[gt, None]
                dy = np.array([d.y for d in dd])[None, :] - gy[gt, None]
                dist = np.hypot(dx, dy)
                used = np.zeros(len(dd), bool)
                for a, b in sorted(zip(*np.nonzero(dist <= RECALL_MATCH_M), strict=True), key=lambda p: dist[p]):
                    if not hit[a] and not used[b]:
                        hit[a], used[b] = True, True
            np.add.at(self.total[c], rbin[gt], 1)
            np.add.at(self.found[c], rbin[gt], hit.astype(np.int64))
        self.frames += 1

    def summary(self) -> dict | None:
        if not self.frames:
            return None
        labels = [f"{lo:g}-{hi:g}" if math.isfinite(hi) else f"{lo:g}+" for lo, hi in pairwise(RECALL_BINS_M)]
        classes = {}
        for c in range(1, 5):
            row = {lab: {"recall": (float(self.found[c, b] / self.total[c, b]) if self.total[c, b] else None),
                         "n": int(self.total[c, b])} for b, lab in enumerate(labels)}
            tot = int(self.total[c].sum())
            row["all"] = {"recall": float(self.found[c].sum() / tot) if tot else None, "n": tot}
            classes[self.names[c]] = row
        return {"match_m": RECALL_MATCH_M, "bins_m": labels, "frames": self.frames, "classes": classes}
