"""Rule check of the published tracks against the current LiDAR scan (the tracks' evidence floor).

The grid's rule (evidence.py) keeps the network from erasing what the LiDAR sees; this one keeps the
tracker from publishing objects the LiDAR does not see. After ``MultiObjectTracker.update``,
``PerceptionPipeline.process`` hands the live tracks, the scan's per-cell non-ground return counts
(``EvidenceGrids.nonground_count``, the LiDAR encoder's own counts of the deskewed scan) and the
pose to ``TrackSupportRule.apply``; what it returns is what the node publishes, ``evaluate`` scores
and the bench times. Two checks (``TrackSupportConfig``, section ``track_support``):

- support: a confirmed or coasting track is published only while at least ``min_returns``
  non-ground returns lie inside its box grown by ``margin_m``, in one of the last
  ``window_frames`` scans. An unsupported track is withheld, not deleted: the tracker keeps it (and
  its id) for an occlusion and it is published again when returns come back. Withholding rather
  than flagging: a planner reads COASTING as "predicted from a recent detection", and an object
  with no return at all is not that; the network's belief about an occluded object stays in the
  published grid (inferred occupancy), where the planner already treats it as a prediction.
- static on evidence: a track that never moved (within ``static_move_m`` of its first position
  over at least ``static_min_s``) while supported in at least ``static_support`` of its scans sits
  on long-lived returns: a parked car, a waiting pedestrian, or a false track on a wall, a pole or
  a building front. It is published only if its class confidence (the mean detection score of its
  class) reaches ``static_min_score`` for that class; the returns themselves stay occupied in the
  grid (evidence floor), so a withheld wall track loses nothing a planner needs.

Tentative tracks pass unchanged (published only with ``tracking.publish_tentative``, flagged as
such). A frame without a LiDAR scan cannot be checked: its tracks pass unchanged and the report
says so (the reset policy handles a LiDAR dropout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ssm_perception.config import GridConfig, TrackSupportConfig

_FORGET_S = 10.0  # per-track bookkeeping of ids not seen for this long is dropped


def _window(grid: GridConfig, x: float, y: float, r: float) -> tuple[int, int, int, int]:
    g = grid
    i0 = max(0, math.floor((x - r - g.x_min) / g.resolution))
    i1 = min(g.nx, math.ceil((x + r - g.x_min) / g.resolution))
    j0 = max(0, math.floor((y - r - g.y_min) / g.resolution))
    j1 = min(g.ny, math.ceil((y + r - g.y_min) / g.resolution))
    return i0, i1, j0, j1


def _box_mask(grid: GridConfig, x: float, y: float, yaw: float, length: float, width: float, margin: float):
    """(window, mask): cells of the window (i0, i1, j0, j1) whose centre lies in the oriented box
    (base_link) grown by ``margin``; mask is None when the window is empty (box outside the grid)."""
    g = grid
    hl, hw = 0.5 * max(length, 0.1) + margin, 0.5 * max(width, 0.1) + margin
    i0, i1, j0, j1 = win = _window(g, x, y, math.hypot(hl, hw))
    if i0 >= i1 or j0 >= j1:
        return win, None
    cx = g.x_min + (np.arange(i0, i1) + 0.5) * g.resolution - x
    cy = g.y_min + (np.arange(j0, j1) + 0.5) * g.resolution - y
    c, s = math.cos(yaw), math.sin(yaw)
    u = c * cx[:, None] + s * cy[None, :]
    v = -s * cx[:, None] + c * cy[None, :]
    return win, (np.abs(u) <= hl) & (np.abs(v) <= hw)


def footprint_cells(grid: GridConfig, x: float, y: float, yaw: float, length: float, width: float,
                    margin: float) -> np.ndarray:
    """[H, W] bool: cells whose centre lies in the oriented box (base_link), grown by ``margin``."""
    mask = np.zeros((grid.nx, grid.ny), bool)
    (i0, i1, j0, j1), m = _box_mask(grid, x, y, yaw, length, width, margin)
    if m is not None:
        mask[i0:i1, j0:j1] = m
    return mask


def footprint_returns(counts: np.ndarray, grid: GridConfig, x: float, y: float, yaw: float, length: float,
                      width: float, margin: float) -> int | None:
    """Returns in ``counts`` ([H, W] per-cell counts, base_link grid) under the oriented box grown by
    ``margin``; None when the box lies outside the grid (nothing can be said)."""
    (i0, i1, j0, j1), m = _box_mask(grid, x, y, yaw, length, width, margin)
    if m is None or not m.any():
        return None
    return int(counts[i0:i1, j0:j1][m].sum())


def to_base(T_base_odom: np.ndarray, x: float, y: float, yaw: float) -> tuple[float, float, float]:
    """An odom pose (x, y, yaw) in base_link."""
    bx = T_base_odom[0, 0] * x + T_base_odom[0, 1] * y + T_base_odom[0, 3]
    by = T_base_odom[1, 0] * x + T_base_odom[1, 1] * y + T_base_odom[1, 3]
    return bx, by, yaw + math.atan2(T_base_odom[1, 0], T_base_odom[0, 0])


@dataclass
class TrackSupportReport:
    """What the rule did this frame (FrameOutputs.track_support)."""

    checked: bool  # False: no LiDAR scan (or no usable pose) this frame, tracks passed unchanged
    published: int = 0  # confirmed + coasting tracks kept
    withheld_unsupported: list[int] = field(default_factory=list)  # track ids without support
    withheld_static: list[int] = field(default_factory=list)  # static tracks on returns, not confident
    returns: dict[int, int] = field(default_factory=dict)  # track id -> returns in its footprint this scan
    withheld_tracks: list = field(default_factory=list)  # the TrackStates withheld (both reasons)


@dataclass
class _Life:
    first_s: float
    x0: float
    y0: float
    last_seen_s: float
    max_move: float = 0.0
    frames: int = 0
    supported: int = 0
    last_supported: int = -(10**9)  # frame index of the last supported scan


class TrackSupportRule:
    """Filters the tracker's output to the tracks the current scan supports (module docstring)."""

    def __init__(self, cfg: TrackSupportConfig, grid: GridConfig):
        self.cfg = cfg
        self.grid = grid
        self.reset()

    def reset(self) -> None:
        self._lives: dict[int, _Life] = {}
        self._frame = 0

    def static_on_evidence(self, life: _Life, now_s: float) -> bool:
        c = self.cfg
        return (now_s - life.first_s >= c.static_min_s - 1e-6 and life.max_move < c.static_move_m
                and life.supported >= c.static_support * life.frames)

    def confident_static(self, track) -> bool:
        """Is the model confident enough of this static track's class (``static_min_score``)?"""
        if int(track.cls) == 0:
            return False
        share = (track.class_probs or {}).get(track.cls, 1.0)
        return track.score * share >= self.cfg.static_min_score.of(int(track.cls), math.inf)

    def apply(self, tracks: list, nonground_count: np.ndarray | None, T_odom_base: np.ndarray | None,
              stamp_s: float) -> tuple[list, TrackSupportReport]:
        """(published tracks, report). ``nonground_count``: [H, W] non-ground returns of the current
        scan per cell (None: no LiDAR this frame); ``tracks`` in odom, as the tracker returns them."""
        c = self.cfg
        ok_pose = T_odom_base is not None and np.all(np.isfinite(T_odom_base))
        if not c.enabled or nonground_count is None or not ok_pose:
            return list(tracks), TrackSupportReport(False, sum(t.status != "tentative" for t in tracks))
        from ssm_perception.geometry import invert_transform

        T = invert_transform(np.asarray(T_odom_base, np.float64))
        self._frame += 1
        k = self._frame
        report = TrackSupportReport(True)
        out = []
        for tr in tracks:
            life = self._lives.get(tr.id)
            if life is None:
                life = self._lives[tr.id] = _Life(stamp_s, tr.x, tr.y, stamp_s)
            bx, by, byaw = to_base(T, tr.x, tr.y, tr.yaw)
            n = footprint_returns(nonground_count, self.grid, bx, by, byaw, tr.length, tr.width, c.margin_m)
            supported = n is not None and n >= c.min_returns
            life.last_seen_s = stamp_s
            life.frames += 1
            life.supported += supported
            life.max_move = max(life.max_move, math.hypot(tr.x - life.x0, tr.y - life.y0))
            if supported:
                life.last_supported = k
            if tr.status == "tentative":
                out.append(tr)
                continue
            report.returns[tr.id] = 0 if n is None else n
            if k - life.last_supported >= c.window_frames:
                report.withheld_unsupported.append(tr.id)
                report.withheld_tracks.append(tr)
            elif c.static_rule and self.static_on_evidence(life, stamp_s) and not self.confident_static(tr):
                report.withheld_static.append(tr.id)
                report.withheld_tracks.append(tr)
            else:
                out.append(tr)
                report.published += 1
        if k % 50 == 0:  # forget ids long gone (the tracker never reuses an id)
            self._lives = {i: lf for i, lf in self._lives.items() if abs(stamp_s - lf.last_seen_s) <= _FORGET_S}
        return out, report
