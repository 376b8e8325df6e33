"""Per-frame health of the temporal state: is the memory still trustworthy?

Checks: non-finite values; the state norm against a running (EMA) baseline; which cells have
never been observed and how long each cell has gone unobserved (both maps are warped with the
state so they stay attached to the world); time since each sensor was last seen.
The monitor only reports (levels as in diagnostic_msgs: OK 0, WARN 1, ERROR 2) and suggests a
stale-cell reset mask; the reset policy decides what to do.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssm_perception.bev.device import upload
from ssm_perception.bev.features import channel_index
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ResetConfig
from ssm_perception.temporal.base import State
from ssm_perception.temporal.warp import (
    grid_from_motion,
    motion_for_grid,
    sampling_grid,
)


class Level(IntEnum):
    OK = 0
    WARN = 1
    ERROR = 2


@dataclass
class HealthReport:
    level: Level
    messages: list[str]
    nonfinite: int  # cells whose state holds a non-finite value
    norm_mean: float  # mean per-cell L2 norm of the state (all tensors, all channels)
    norm_max: float
    norm_baseline: float  # EMA of norm_mean over healthy frames
    norm_ratio: float  # norm_mean / baseline (1.0 while warming up)
    never_observed_fraction: float  # cells no sensor has observed since their last reset
    stale_cells: int  # observed before, but not for longer than reset.unobserved_cell_reset_s
    sensor_age_s: dict[str, float] = field(default_factory=dict)  # inf: never seen


def observed_from_features(features: Tensor) -> Tensor:
    """features [B, C, H, W] (FEATURE_CHANNELS layout) -> [B, H, W] bool: cells a sensor observed
    this frame (a LiDAR return or free ray, a radar detection, or inside the camera frustum)."""
    f = features
    return (
        (f[:, channel_index("lidar_log_count")] > 0)
        | (f[:, channel_index("lidar_free")] > 0.5)
        | (f[:, channel_index("radar_log_count")] > 0)
        | (f[:, channel_index("camera_visible")] > 0.5)
    )


class StateHealthMonitor:
    def __init__(
        self,
        grid: BevGrid,
        reset: ResetConfig | None = None,
        sensors: tuple[str, ...] = ("lidar", "radar", "camera"),
        ema: float = 0.1,
        warmup_frames: int = 10,
        never_observed_warn: float = 0.9,
    ):
        self.grid = grid
        self.cfg = reset or ResetConfig()
        self.sensors = sensors
        self.ema, self.warmup_frames, self.never_observed_warn = ema, warmup_frames, never_observed_warn
        self.frames = 0
        self.baseline = 0.0
        self.last_seen: dict[str, float] = {}
        self.observed: Tensor | None = None  # [B, 1, H, W] 1 = observed since last reset
        self.unobserved_s: Tensor | None = None  # [B, 1, H, W] seconds since last observation
        # The same two maps for direct range observations only (LiDAR return or ray, radar return; not
        # the camera's view): the published observation grid (evidence.published_grids) reads them.
        self.direct_seen: Tensor | None = None
        self.direct_unobserved_s: Tensor | None = None
        self.graphs = None  # a CUDA pipeline's bev.device.GraphCache: the per-cell step replays as a graph
        # The warp grid built from the motion inside the per-cell step (warp.sampling_grid's device
        # way, one graph with the step); None: off the CPU. False: the host grid (the CPU's way).
        self.grid_on_device: bool | None = None
        self._maps: Tensor | None = None  # [B, 4, H, W]: the four maps above are its channels (views)
        self._views: tuple = ()

    def reset(self, mask: Tensor | None = None) -> None:
        """Forget cells (mask [B, H, W] bool) or everything (None), in step with a state reset."""
        self._maps = None
        if mask is None or self.observed is None:
            self.observed = self.unobserved_s = self.direct_seen = self.direct_unobserved_s = None
            self.frames, self.baseline = 0, 0.0
            return
        keep = (~mask.bool()).unsqueeze(1).to(self.observed.device, self.observed.dtype)
        self.observed = self.observed * keep
        self.unobserved_s = self.unobserved_s * keep
        self.direct_seen = self.direct_seen * keep
        self.direct_unobserved_s = self.direct_unobserved_s * keep

    def direct_age_s(self) -> Tensor | None:
        """[B, H, W] seconds since the last direct range observation of each cell; inf where none
        since its last reset (0 = observed in the current frame)."""
        if self.direct_seen is None:
            return None
        return torch.where(self.direct_seen[:, 0] > 0.5, self.direct_unobserved_s[:, 0],
                           torch.full_like(self.direct_unobserved_s[:, 0], math.inf))

    def stale_mask(self) -> Tensor | None:
        """[B, H, W] bool: cells observed once but not within reset.unobserved_cell_reset_s."""
        if self.observed is None:
            return None
        return ((self.observed > 0.5) & (self.unobserved_s > self.cfg.unobserved_cell_reset_s))[:, 0]

    def update(
        self,
        state: State,
        stamp: float,
        observed: Tensor | None = None,
        sensors_seen: dict[str, bool] | None = None,
        T_prev_cur=None,
        dt: float = 0.0,
        direct: Tensor | None = None,
    ) -> HealthReport:
        """Call once per frame after the state update.

        observed [B, H, W] bool (see observed_from_features); sensors_seen {name: bool};
        T_prev_cur: the motion the state was warped with this frame (None = no motion);
        dt: seconds since the previous frame (ages the per-cell timers).
        direct: [B, H, W] bool, cells observed by a range sensor this frame (``direct_age_s``).
        ``measure`` + ``finish`` with one read of the scalars; a device pipeline calls the two
        itself and reads the scalars in its frame's one device-to-host copy."""
        return self.finish(self.measure(state, observed, T_prev_cur, dt, direct).tolist(), stamp, sensors_seen)

    def measure(self, state: State, observed: Tensor | None = None, T_prev_cur=None, dt: float = 0.0,
                direct: Tensor | None = None, forget: Tensor | None = None) -> Tensor:
        """The device half of ``update``: move the per-cell maps (on the state's device) and return
        the frame's scalars as one float64 vector on that device, nothing read back:
        (non-finite cells, norm mean, norm max, never-observed fraction, stale cells).
        ``forget`` [B, H, W] bool: cells the state step reset this frame (a partial reset); after
        measuring, those not observed now are forgotten (``reset(forget & ~observed)``, in the same step).
        The per-cell part (``_cells_step``) is a pure tensor function: with ``graphs`` set (a CUDA
        pipeline's bev.device.GraphCache) it replays as a CUDA graph, the warp grid built inside it."""
        tensors = [v for v in state.values() if v.numel()]
        dev = tensors[0].device if tensors else (observed.device if observed is not None else torch.device("cpu"))
        b = next((v.shape[0] for v in state.values()), 1) if observed is None else observed.shape[0]
        sq = None
        if tensors:
            # One pass over the (large) state: the per-cell squared norm [B, H, W] is non-finite exactly
            # where a cell holds a NaN/inf (or overflows), so non-finite cells are counted on the small
            # map instead of scanning every state value twice.
            with torch.no_grad():
                for v in tensors:
                    v2 = torch.linalg.vector_norm(v.float(), dim=1) ** 2
                    sq = v2 if sq is None else sq + v2
        else:
            sq = torch.zeros(b, self.grid.nx, self.grid.ny, device=dev)
        if self.observed is None or self.observed.shape[0] != b or self.observed.device != torch.device(dev):
            # The maps live where the state does (a CUDA pipeline never copies them to the host).
            zeros = torch.zeros(b, 1, self.grid.nx, self.grid.ny, device=dev)
            self.observed, self.unobserved_s = zeros, zeros.clone()
            self.direct_seen, self.direct_unobserved_s = zeros.clone(), zeros.clone()
            self._maps = None
        four = (self.observed, self.unobserved_s, self.direct_seen, self.direct_unobserved_s)
        if self._maps is not None and all(a is b for a, b in zip(four, self._views, strict=True)):
            maps = self._maps  # still the last step's output: no concatenation
        else:
            maps = torch.cat(four, 1)
        inputs = [sq, maps]
        mode, motion_in = None, False
        step = float(max(dt, 0.0))
        on_device = dev.type != "cpu" if self.grid_on_device is None else self.grid_on_device
        if T_prev_cur is not None and on_device:
            # sampling_grid's device way, inside the step: the motion and dt go up as four numbers
            se2, nearest = motion_for_grid(T_prev_cur, self.grid, b, "bilinear")
            params = np.concatenate([se2.numpy(), np.full((b, 1), step)], 1)
            inputs.append(upload(params, dev))
            mode, motion_in = ("nearest" if nearest else "bilinear"), True
        else:
            if T_prev_cur is not None:
                # Same (bilinear) warp as the state, so the maps stay attached to the same world cells;
                # cells entering the grid start unobserved (0). 'observed' is thresholded at 0.5.
                g, mode = sampling_grid(T_prev_cur, self.grid, b, "bilinear", maps.dtype, dev, graphs=self.graphs)
                inputs.append(g)
            inputs.append(torch.full((), step, dtype=maps.dtype, device=dev))  # a fill: no upload
        if observed is not None:
            inputs.append(observed.bool())
        if direct is not None:
            inputs.append(direct.bool())
        if forget is not None:
            inputs.append(forget.bool().reshape(b, self.grid.nx, self.grid.ny))
        flags = {"warp_mode": mode, "motion_in": motion_in, "has_observed": observed is not None,
                     "has_direct": direct is not None, "has_forget": forget is not None,
                     "stale_s": float(self.cfg.unobserved_cell_reset_s), "grid": self.grid}
        fn = functools.partial(_cells_step, **flags)
        key = tuple(flags.values())
        scalars, maps = fn(*inputs) if self.graphs is None else self.graphs.run("health", key, fn, *inputs)
        self._maps = maps
        self.observed, self.unobserved_s = maps[:, :1], maps[:, 1:2]
        self.direct_seen, self.direct_unobserved_s = maps[:, 2:3], maps[:, 3:]
        self._views = (self.observed, self.unobserved_s, self.direct_seen, self.direct_unobserved_s)
        return scalars

    def finish(self, values, stamp: float, sensors_seen: dict[str, bool] | None = None) -> HealthReport:
        """The host half of ``update``: ``values`` are ``measure``'s five numbers (read back)."""
        nonfinite, norm_mean, norm_max, never, n_stale = (float(v) for v in values)
        nonfinite, n_stale = int(nonfinite), int(n_stale)
        msgs: list[str] = []
        level = Level.OK
        for name, seen in (sensors_seen or {}).items():
            if seen:
                self.last_seen[name] = stamp
        ages = {s: (stamp - self.last_seen[s]) if s in self.last_seen else math.inf for s in self.sensors}
        warm = self.frames >= self.warmup_frames
        ratio = norm_mean / max(self.baseline, 1e-6) if warm else 1.0
        if nonfinite:
            level = Level.ERROR
            msgs.append(f"{nonfinite} non-finite values in the state")
        if warm and ratio > self.cfg.state_norm_ratio:
            level = Level.ERROR
            msgs.append(f"state norm {norm_mean:.3g} is {ratio:.1f}x its baseline {self.baseline:.3g}")
        elif warm and ratio > math.sqrt(self.cfg.state_norm_ratio):
            level = max(level, Level.WARN)
            msgs.append(f"state norm drifting: {ratio:.1f}x baseline")
        if warm and never > self.never_observed_warn:
            level = max(level, Level.WARN)
            msgs.append(f"{100 * never:.0f}% of cells never observed")
        for s, age in ages.items():
            if age > self.cfg.sensor_dropout_s:
                bad = Level.ERROR if s == "lidar" else Level.WARN  # the LiDAR drives the frame
                level = max(level, bad)
                msgs.append(f"{s} not seen for {age:.2f} s" if math.isfinite(age) else f"{s} never seen")

        norm_ok = nonfinite == 0 and ratio <= math.sqrt(self.cfg.state_norm_ratio)
        if norm_ok:  # learn the baseline only from healthy frames
            self.baseline = norm_mean if self.frames == 0 else (1 - self.ema) * self.baseline + self.ema * norm_mean
        self.frames += 1
        return HealthReport(Level(level), msgs, nonfinite, norm_mean, norm_max, self.baseline, ratio, never,
                            n_stale, ages)


def _cells_step(sq: Tensor, maps: Tensor, *rest: Tensor, warp_mode: str | None, motion_in: bool, has_observed: bool,
                has_direct: bool, has_forget: bool, stale_s: float, grid: BevGrid) -> tuple[Tensor, Tensor]:
    """One frame of the monitor's per-cell bookkeeping, a pure tensor function (CUDA graph):
    per-cell squared state norm sq [B, H, W] and the maps [B, 4, H, W] (observed, unobserved_s,
    direct_seen, direct_unobserved_s) -> (the five scalars of ``measure``, the new maps). ``rest``:
    with ``motion_in`` the motion and elapsed time [B, 4] float64 (dx, dy, dyaw, dt; the warp grid is
    built here), else the sampling grid (when ``warp_mode``) and the elapsed time (0-d); then the
    observed and direct masks [B, H, W] (when present), the cells to forget unless observed (when
    ``has_forget``)."""
    it = iter(rest)
    if motion_in:
        params = next(it)
        step = params[0, 3].to(maps.dtype)
        g = grid_from_motion(params[:, :3], grid=grid, nearest=warp_mode == "nearest", dtype=maps.dtype)
    else:
        g = next(it) if warp_mode is not None else None
        step = next(it)
    observed = next(it) if has_observed else None
    direct = next(it) if has_direct else None
    forget = next(it) if has_forget else None
    bad = ~torch.isfinite(sq)
    cell_norm = torch.where(bad, torch.zeros_like(sq), sq).sqrt()
    norms = [bad.sum().double(), cell_norm.mean().double(), cell_norm.amax().double()]
    if g is not None:
        maps = F.grid_sample(maps, g, mode=warp_mode, padding_mode="zeros", align_corners=False)
    seen, unseen_s, direct_seen, direct_unseen_s = maps[:, :1], maps[:, 1:2], maps[:, 2:3], maps[:, 3:]
    unseen_s = unseen_s + step
    direct_unseen_s = direct_unseen_s + step
    if observed is not None:
        obs = observed.unsqueeze(1)
        seen = torch.where(obs, torch.ones_like(seen), seen)
        unseen_s = torch.where(obs, torch.zeros_like(unseen_s), unseen_s)
    if direct is not None:
        d = direct.unsqueeze(1)
        direct_seen = torch.where(d, torch.ones_like(direct_seen), direct_seen)
        direct_unseen_s = torch.where(d, torch.zeros_like(direct_unseen_s), direct_unseen_s)
    never = (seen <= 0.5).float().mean().double()
    n_stale = ((seen > 0.5) & (unseen_s > stale_s))[:, 0].sum().double()
    out = torch.cat([seen, unseen_s, direct_seen, direct_unseen_s], 1)
    if forget is not None:  # StateHealthMonitor.reset(forget & ~observed), after measuring
        gone = forget & ~observed if observed is not None else forget
        out = out * (~gone).unsqueeze(1).to(out.dtype)
    return torch.stack([*norms, never, n_stale]), out
