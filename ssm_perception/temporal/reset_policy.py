"""When to reset the temporal state (sequence-models-for-av section 13), and which cells.

A state that persists through a discontinuity makes confidently wrong predictions, so the policy
resets the whole state on: start of route, time going backwards (bag loop, sim-time reset), time
not advancing, a gap longer than ``max_time_gap_s``, a localization jump in odom -> base_link
(displacement beyond ``max_speed_mps * dt + pose_jump_m`` or a yaw step beyond
``pose_jump_yaw_rad``), an invalid pose, LiDAR silence longer than ``sensor_dropout_s``, a
non-finite state, a signalled zone change, a distribution shift of the LiDAR input (severe weather,
temporal/shift.py), and an explicit request (the node's ~/reset service).

It also resets *cells*: memory of a cell nobody has observed for ``unobserved_cell_reset_s`` is
stale. The policy keeps a per-cell age grid (seconds since last observed) [H, W] that moves with
the state (same ego-motion warp), or takes one from the caller.

Every reset is logged with its reasons (std ``logging``) and counted per reason in ``counts``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssm_perception.config import GridConfig, ResetConfig
from ssm_perception.geometry import wrap_angle

log = logging.getLogger(__name__)
NS = 1_000_000_000

# Reason keys (stable strings: counted, logged, shown in diagnostics).
ROUTE_START = "route_start"
TIME_BACKWARDS = "time_backwards"
TIME_NOT_ADVANCING = "time_not_advancing"
TIME_GAP = "time_gap"
LOCALIZATION_JUMP = "localization_jump"
INVALID_POSE = "invalid_pose"
SENSOR_DROPOUT = "sensor_dropout"
NON_FINITE_STATE = "non_finite_state"
ZONE_CHANGE = "zone_change"
REQUESTED = "requested"
DISTRIBUTION_SHIFT = "distribution_shift"
UNOBSERVED_CELLS = "unobserved_cells"  # partial reset
FULL_RESET_REASONS = (ROUTE_START, TIME_BACKWARDS, TIME_NOT_ADVANCING, TIME_GAP, LOCALIZATION_JUMP,
                      INVALID_POSE, SENSOR_DROPOUT, NON_FINITE_STATE, ZONE_CHANGE, DISTRIBUTION_SHIFT, REQUESTED)


@dataclass
class ResetDecision:
    full: bool  # reset every cell (and drop the previous frame's pose for the warp)
    reasons: list[str] = field(default_factory=list)  # keys above; empty when nothing happens
    # [H, W] bool, cells to reset (only when not full). With a CUDA pipeline's graphs this is a graph's
    # output, valid until the next frame's decision: copy it to keep it longer.
    cell_mask: Tensor | None = None
    details: list[str] = field(default_factory=list)  # one human-readable line per reason
    dt_s: float | None = None  # seconds since the previous frame (None on a full reset)
    T_prev_cur: np.ndarray | None = None  # 4x4 motion of base_link since the previous frame
    # Set while the stale-cell check waits for the frame's read-back (a policy on a GPU: see
    # ResetPolicy.defer_cells): the stale-cell count as a 0-d device tensor; cell_mask is then the
    # (possibly all-false) mask, and resolve_cells turns the decision into the eager one.
    cells_pending: Tensor | None = None

    @property
    def any(self) -> bool:
        return self.full or self.cell_mask is not None


class ResetPolicy:
    """Decides per frame whether to reset the temporal state, fully or for stale cells.

    Args:
        cfg: thresholds (config.ResetConfig).
        grid: the BEV grid (config.GridConfig or bev.grid.BevGrid). Needed only for the partial
            reset with the internally kept age grid; without it, pass ``cell_age_s`` to ``decide``.
        device: where the age grid lives (the model's device). Off the CPU the stale-cell check is
            deferred (``defer_cells``): ``decide`` hands the step the stale mask as it is, with no
            wait for the device, and ``resolve_cells`` completes the decision once the count is on
            the host (the pipeline reads it in its frame's one device-to-host copy).
    """

    def __init__(self, cfg: ResetConfig | None = None, grid=None, device=None):
        self.cfg = cfg or ResetConfig()
        self.grid = _as_bev_grid(grid) if grid is not None else None
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.defer_cells = self.device.type != "cpu"
        self.graphs = None  # a CUDA pipeline's bev.device.GraphCache: the deferred age step replays as a graph
        # The deferred check's whole age step (warp grid from the motion, warp, ageing, stale mask and
        # count) as one pure tensor function (``_age_step``, a graph); None: off the CPU. False: the
        # CPU's way (host warp grid). Tests set it on the CPU.
        self.age_on_device: bool | None = None
        self.counts: Counter[str] = Counter()
        self.last_decision: ResetDecision | None = None
        self._pending: list[str] = []  # explicit requests since the last frame
        self.clear()

    def clear(self) -> None:
        """Forget the previous frame (the next decision is a route start); counters are kept."""
        self._prev_stamp: int | None = None
        self._prev_pose: np.ndarray | None = None
        self._last_lidar: int | None = None
        self._zone: str | None = None
        self._age: Tensor | None = None  # [1, 1, H, W] seconds since each cell was observed

    def request_reset(self, reason: str = "") -> None:
        """Queue an explicit reset for the next frame (the ~/reset service)."""
        self._pending.append(reason or "no reason given")

    # ------------------------------------------------------------------ the decision
    def decide(self, stamp_ns: int, T_odom_base, lidar_present: bool = True, state_finite: bool = True,
               zone: str | None = None, requested: str | None = None,
               cell_age_s: Tensor | None = None, distribution_shift: str | None = None,
               skipped_ns=()) -> ResetDecision:
        """Decide for the frame at ``stamp_ns`` and advance the policy's memory to it.

        ``T_odom_base``: 4x4 pose at the stamp. ``cell_age_s`` [H, W]: seconds since each cell
        was observed, already in the current frame; if None, the internal age grid is used
        (after ``observe`` has been called at least once). ``distribution_shift``: what changed, when
        the input statistics shifted this frame and the configuration resets on it.
        ``skipped_ns``: stamps of LiDAR frames that arrived since the previous frame but were skipped
        (the node was busy): the sensor did not stop, so the time-gap and dropout checks measure the
        largest hole in the stream they fill, while ``dt_s`` stays the real interval between the two
        processed frames.
        """
        stamp_ns = int(stamp_ns)
        reasons: list[str] = []
        details: list[str] = []

        def add(key: str, text: str) -> None:
            reasons.append(key)
            details.append(text)

        try:
            pose = np.asarray(T_odom_base, dtype=np.float64) if T_odom_base is not None else None
        except (TypeError, ValueError):
            pose = None  # not a matrix at all: treated like a missing pose
        pose_ok = pose is not None and pose.shape == (4, 4) and bool(np.all(np.isfinite(pose)))
        dt_s: float | None = None
        motion: np.ndarray | None = None
        c = self.cfg

        if self._prev_stamp is None:
            add(ROUTE_START, "first frame of the route")
        else:
            dt_ns = stamp_ns - self._prev_stamp
            dt_s = dt_ns / NS
            if dt_ns < 0:
                add(TIME_BACKWARDS, f"time went backwards by {-dt_s:.3f} s (bag loop or clock reset)")
            elif dt_ns == 0:
                add(TIME_NOT_ADVANCING, "stamp equals the previous frame's (duplicate frame)")
            elif (hole := _largest_hole(self._prev_stamp, stamp_ns, skipped_ns) / NS) > c.max_time_gap_s:
                add(TIME_GAP, f"gap of {hole:.3f} s since the previous frame (limit {c.max_time_gap_s} s)")
        if not pose_ok:
            add(INVALID_POSE, "odom -> base_link pose is missing or not finite")
        elif self._prev_stamp is not None and self._prev_pose is None:
            add(INVALID_POSE, "previous frame had no valid pose: the ego motion since then is unknown")
        elif dt_s is not None and dt_s > 0:
            motion = np.linalg.solve(self._prev_pose, pose)  # T_prev_cur
            dist = float(np.hypot(motion[0, 3], motion[1, 3]))
            dyaw = abs(float(wrap_angle(math.atan2(motion[1, 0], motion[0, 0]))))
            allowed = c.max_speed_mps * dt_s + c.pose_jump_m
            if dist > allowed:
                add(LOCALIZATION_JUMP, f"odom -> base_link moved {dist:.2f} m in {dt_s:.3f} s (allowed {allowed:.2f} m)")
            elif dyaw > c.pose_jump_yaw_rad:
                add(LOCALIZATION_JUMP, f"odom -> base_link yaw changed {dyaw:.3f} rad in {dt_s:.3f} s "
                                       f"(limit {c.pose_jump_yaw_rad} rad)")
        if self._last_lidar is not None and stamp_ns < self._last_lidar:
            self._last_lidar = None  # time went backwards: the old LiDAR stamp means nothing now
        if lidar_present:
            silent = None if self._last_lidar is None else _largest_hole(self._last_lidar, stamp_ns, skipped_ns) / NS
            if silent is not None and silent > c.sensor_dropout_s:
                add(SENSOR_DROPOUT, f"no LiDAR for {silent:.3f} s (limit {c.sensor_dropout_s} s)")
            self._last_lidar = stamp_ns
        elif self._last_lidar is not None and (stamp_ns - self._last_lidar) / NS > c.sensor_dropout_s:
            add(SENSOR_DROPOUT, f"no LiDAR for {(stamp_ns - self._last_lidar) / NS:.3f} s "
                                f"(limit {c.sensor_dropout_s} s)")
        if not state_finite:
            add(NON_FINITE_STATE, "the temporal state has NaN/Inf values")
        if zone is not None:
            if self._zone is not None and zone != self._zone:
                add(ZONE_CHANGE, f"zone changed from {self._zone!r} to {zone!r}")
            self._zone = zone
        if distribution_shift:
            add(DISTRIBUTION_SHIFT, distribution_shift)
        requests = self._pending + ([requested] if requested is not None else [])
        self._pending = []
        for r in requests:
            add(REQUESTED, f"reset requested: {r}")

        full = bool(reasons)
        cell_mask = pending = None
        if full:
            self._age = None if self.grid is None else self._zero_age()
            dt_s, motion = None, None
        else:
            fused = self.device.type != "cpu" if self.age_on_device is None else self.age_on_device
            if cell_age_s is None and self._age is not None and self.defer_cells and fused:
                self._age, cell_mask, pending = self._age_step(motion, dt_s)  # (no host read)
            elif cell_age_s is None and self._age is not None:
                self._age = self._warp_age(self._age, motion) + dt_s
                cell_age_s = self._age[0, 0]
            if cell_age_s is not None and self.defer_cells:
                cell_mask = cell_age_s > c.unobserved_cell_reset_s  # all-false when nothing is stale
                pending = cell_mask.sum()
                if self._age is not None:
                    self._age[0, 0].masked_fill_(cell_mask, 0.0)
            elif cell_age_s is not None:
                stale = cell_age_s > c.unobserved_cell_reset_s
                if bool(stale.any()):
                    cell_mask = stale
                    n = int(stale.sum())
                    reasons.append(UNOBSERVED_CELLS)
                    details.append(f"{n} cells unobserved for more than {c.unobserved_cell_reset_s} s")
                    if self._age is not None:
                        self._age[0, 0].masked_fill_(stale, 0.0)  # their memory restarts from the initial state

        self._prev_stamp = stamp_ns
        self._prev_pose = pose if pose_ok else None
        self.counts.update(reasons)
        decision = ResetDecision(full, reasons, cell_mask, details, dt_s, motion, pending)
        self.last_decision = decision
        if pending is None:
            self._log(stamp_ns, decision)
        else:
            self._stamp_pending = stamp_ns
        return decision

    def resolve_cells(self, decision: ResetDecision, stale_cells) -> ResetDecision:
        """Complete a deferred decision (``cells_pending``) with the stale-cell count read back:
        afterwards it is what the eager check would have returned (no mask when nothing was stale;
        reason, details, counts and log otherwise). No-op for a decision that was not deferred."""
        if decision.cells_pending is None:
            return decision
        n = int(stale_cells)
        decision.cells_pending = None
        if n == 0:
            decision.cell_mask = None
        else:
            decision.reasons.append(UNOBSERVED_CELLS)
            decision.details.append(f"{n} cells unobserved for more than {self.cfg.unobserved_cell_reset_s} s")
            self.counts.update([UNOBSERVED_CELLS])
        self._log(getattr(self, "_stamp_pending", 0), decision)
        return decision

    def observe(self, observed: Tensor) -> None:
        """Mark the cells observed in the current frame ([H, W] bool, current grid): age -> 0."""
        if self.grid is None:
            raise ValueError("ResetPolicy.observe needs the grid (pass grid= to the constructor)")
        if self._age is None:
            self._age = self._zero_age()
        obs = observed.to(torch.bool).reshape(self.grid.shape)
        self._age[0, 0].masked_fill_(obs.to(self._age.device), 0.0)

    def memory(self) -> dict:
        """What the next decision depends on (previous stamp, pose, LiDAR stamp, zone, age grid), as
        plain values (bytes for arrays) so that a training sampler can save it and compare it with ==."""
        pose = None if self._prev_pose is None else np.asarray(self._prev_pose, np.float64).tobytes()
        age = None if self._age is None else self._age.cpu().numpy().astype(np.float32).tobytes()
        return {"prev_stamp": self._prev_stamp, "prev_pose": pose, "last_lidar": self._last_lidar,
                "zone": self._zone, "age": age}

    def load_memory(self, m: dict) -> None:
        """Inverse of ``memory()`` (counters and pending requests are not part of it)."""
        self._prev_stamp, self._last_lidar, self._zone = m["prev_stamp"], m["last_lidar"], m["zone"]
        self._prev_pose = None if m["prev_pose"] is None else np.frombuffer(m["prev_pose"], np.float64).reshape(4, 4)
        self._age = None if m["age"] is None else (
            torch.from_numpy(np.frombuffer(m["age"], np.float32).copy()).reshape(1, 1, *self.grid.shape)
            .to(self.device))

    @property
    def cell_age_s(self) -> Tensor | None:
        """[H, W] seconds since each cell was last observed (None before the first observe)."""
        return None if self._age is None else self._age[0, 0]

    # ------------------------------------------------------------------ internals
    def _zero_age(self) -> Tensor:
        return torch.zeros(1, 1, *self.grid.shape, dtype=torch.float32, device=self.device)

    def _age_step(self, motion: np.ndarray | None, dt_s: float) -> tuple[Tensor, Tensor, Tensor]:
        """The deferred check's age step on the device: (new age grid, stale mask [H, W], stale count),
        the stale cells' ages already restarted; the motion and dt go up as four numbers."""
        from ssm_perception.bev.device import upload
        from ssm_perception.temporal.warp import motion_for_grid

        se2 = np.zeros((1, 3)) if motion is None else motion_for_grid(motion, self.grid, 1, "nearest")[0].numpy()
        params = upload(np.concatenate([se2, [[float(dt_s)]]], 1), self.device)
        stale_s = float(self.cfg.unobserved_cell_reset_s)
        fn = functools.partial(_age_step, grid=self.grid, stale_s=stale_s)
        if self.graphs is None:
            return fn(self._age, params)
        return self.graphs.run("age", (self.grid, stale_s), fn, self._age, params)

    def _warp_age(self, age: Tensor, motion: np.ndarray | None) -> Tensor:
        from ssm_perception.temporal.warp import warp_tensor

        if motion is None:
            return age
        # 'nearest': an age must not be averaged into a younger one. Cells entering the grid get 0:
        # their state is the initial state as well, so there is no stale memory to clear.
        return warp_tensor(age, motion, self.grid, mode="nearest", graphs=self.graphs)

    def _log(self, stamp_ns: int, d: ResetDecision) -> None:
        if d.full:
            level = logging.INFO if d.reasons == [ROUTE_START] else logging.WARNING
            log.log(level, "full state reset at %.3f s: %s", stamp_ns / NS, "; ".join(
                f"{k}: {t}" for k, t in zip(d.reasons, d.details, strict=True)))
        elif d.cell_mask is not None:
            # Every frame has some never-seen cells at the grid's edges: keep this at DEBUG.
            log.debug("partial state reset at %.3f s: %s", stamp_ns / NS, "; ".join(d.details))


def _age_step(age: Tensor, params: Tensor, *, grid, stale_s: float) -> tuple[Tensor, Tensor, Tensor]:
    """age [1, 1, H, W], params [1, 4] float64 (dx, dy, dyaw, dt) -> (the age warped ('nearest', as
    ``_warp_age`` off the CPU) plus dt with the stale cells restarted at 0, the stale mask [H, W], the
    stale count): a pure tensor function (a CUDA graph)."""
    from ssm_perception.temporal.warp import grid_from_motion

    g = grid_from_motion(params[:, :3], grid=grid, nearest=True, dtype=age.dtype)
    age = F.grid_sample(age, g, mode="nearest", padding_mode="zeros", align_corners=False) + params[0, 3].to(age.dtype)
    stale = age[0, 0] > stale_s
    return age.masked_fill(stale, 0.0), stale, stale.sum()


def _largest_hole(since_ns: int, stamp_ns: int, skipped_ns) -> int:
    """Largest interval [ns] between consecutive LiDAR stamps from ``since_ns`` to ``stamp_ns``,
    counting the skipped frames in between."""
    chain = [since_ns, *sorted(int(s) for s in skipped_ns if since_ns < int(s) < stamp_ns), stamp_ns]
    return max(b - a for a, b in pairwise(chain))


def _as_bev_grid(grid):
    from ssm_perception.bev.grid import BevGrid

    if isinstance(grid, BevGrid):
        return grid
    if isinstance(grid, GridConfig):
        return BevGrid.from_config(grid)
    raise TypeError(f"grid must be a GridConfig or BevGrid, got {type(grid).__name__}")
