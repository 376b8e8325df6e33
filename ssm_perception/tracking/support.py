"""Rule check of the published tracks against the current LiDAR scan (the tracks' evidence floor).

The grid's rule (evidence.py) keeps the network from erasing what the LiDAR sees; this one keeps the
tracker from publishing objects the LiDAR does not see. After ``MultiObjectTracker.update``,
``PerceptionPipeline.process`` hands the live tracks, the scan's per-cell non-ground return counts
(``EvidenceGrids.nonground_count``, the LiDAR encoder's own counts of the deskewed scan) and the
pose to ``TrackSupportRule.apply``; what it returns is what the node publishes, ``evaluate`` scores
and the bench times. Three checks (``TrackSupportConfig``, section ``track_support``):

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
- shape (an object ends at its box): the cells with returns of the current scan in the evidence
  height band (``EvidenceGrids.band_count``: above the ground, below overhangs) are joined into
  8-connected regions; a track whose box sits on regions that cover more than
  ``shape_max_beyond_m2`` farther than ``shape_reach_m`` outside the box is withheld that scan: a
  wall, a hedge, a fence or a building front goes on past the box, a car, a cyclist or a
  pedestrian does not (a car parked in a row is its own region when a cell-wide gap separates it
  from the next, and a tree's crown over it is above the band). Physical, not learned: the false
  tracks of the network on real scans line building fronts and walls (README, "Your own
  recordings"); the threshold has a margin over what real and simulated objects showed
  (scripts/track_shape_stats.py, results/track_shape_stats.json). Like the other checks it only
  withholds: the returns stay occupied in the grid.

Tentative tracks pass unchanged (published only with ``tracking.publish_tentative``, flagged as
such). A frame without a LiDAR scan cannot be checked: its tracks pass unchanged and the report
says so (the reset policy handles a LiDAR dropout).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ssm_perception.config import GridConfig, TrackSupportConfig
from ssm_perception.tracking import kernels

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
    return _box_mask_cs(grid, x, y, math.cos(yaw), math.sin(yaw), length, width, margin)


def _box_mask_cs(grid: GridConfig, x: float, y: float, c: float, s: float, length: float, width: float,
                 margin: float):
    """``_box_mask`` with the heading given as its cosine and sine."""
    g = grid
    hl, hw = 0.5 * max(length, 0.1) + margin, 0.5 * max(width, 0.1) + margin
    i0, i1, j0, j1 = win = _window(g, x, y, math.hypot(hl, hw))
    if i0 >= i1 or j0 >= j1:
        return win, None
    cx = g.x_min + (np.arange(i0, i1) + 0.5) * g.resolution - x
    cy = g.y_min + (np.arange(j0, j1) + 0.5) * g.resolution - y
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


@functools.lru_cache(maxsize=8)
def _centres(lo: float, res: float, n: int) -> np.ndarray:
    """Cell centres along one axis, as _box_mask computes them (shared: never written to)."""
    return lo + (np.arange(n) + 0.5) * res


def footprints_returns(counts: np.ndarray, grid: GridConfig, x: np.ndarray, y: np.ndarray, cos_yaw: np.ndarray,
                       sin_yaw: np.ndarray, length: np.ndarray, width: np.ndarray, margin: float) -> np.ndarray:
    """``footprint_returns`` for many boxes at once (base_link centres, cos/sin of the headings): [N]
    int64 returns, -1 where it says None. One compiled loop over all boxes (kernels.box_returns: the
    same cell tests, so the same cells count; tested), else ``footprint_returns``'s cells box by box."""
    g = grid
    if x.shape[0] and kernels.available():
        return kernels.box_returns(counts, _centres(g.x_min, g.resolution, g.nx), _centres(g.y_min, g.resolution, g.ny),
                                   x, y, cos_yaw, sin_yaw, length, width, margin, g.x_min, g.y_min, g.resolution)
    out = np.full(x.shape[0], -1, np.int64)
    for k, box in enumerate(zip(x.tolist(), y.tolist(), cos_yaw.tolist(), sin_yaw.tolist(), length.tolist(),
                                width.tolist(), strict=True)):
        (i0, i1, j0, j1), m = _box_mask_cs(g, *box, margin)
        if m is not None and m.any():
            out[k] = int(counts[i0:i1, j0:j1][m].sum())
    return out


_EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def connected_structure(band_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels [H, W], cells per label): the 8-connected regions of cells with returns of the current
    scan in the evidence height band (``EvidenceGrids.band_count``; above the ground, below overhangs,
    so a tree's crown does not join the cars parked under it). Label 0: no return."""
    occupied = np.asarray(band_count) > 0
    labels, n = ndimage.label(occupied, structure=_EIGHT)
    sizes = np.bincount(labels[occupied], minlength=n + 1)  # the labelled cells only (a fraction of the grid)
    sizes[0] = occupied.size - sizes.sum()
    return labels, sizes


def structure_beyond(labels: np.ndarray, sizes: np.ndarray, grid: GridConfig, x: float, y: float, yaw: float,
                     length: float, width: float, reach: float) -> int | None:
    """Cells of the connected structure under the oriented box (base_link; the regions of
    ``connected_structure`` with a cell in the box) that lie more than ``reach`` outside the box: a
    car, a cyclist or a pedestrian ends at its box, a wall, a hedge or a building front goes on.
    None when the box lies outside the grid."""
    # One window (the box grown by ``reach``) serves both masks, and a per-label lookup table replaces
    # np.unique/np.isin (sorting). The rule runs kernels.shape_beyond (the same numbers for all boxes at
    # once); this is its definition and the numpy path.
    g = grid
    hl, hw = 0.5 * max(length, 0.1), 0.5 * max(width, 0.1)
    k0, k1, m0, m1 = _window(g, x, y, math.hypot(hl + reach, hw + reach))
    if k0 >= k1 or m0 >= m1:
        return None
    cx = g.x_min + (np.arange(k0, k1) + 0.5) * g.resolution - x
    cy = g.y_min + (np.arange(m0, m1) + 0.5) * g.resolution - y
    c, s = math.cos(yaw), math.sin(yaw)
    au = np.abs(c * cx[:, None] + s * cy[None, :])
    av = np.abs(-s * cx[:, None] + c * cy[None, :])
    inner = (au <= hl) & (av <= hw)
    if not inner.any():
        return None
    win = labels[k0:k1, m0:m1]
    hit = np.zeros(len(sizes), bool)
    hit[win[inner]] = True
    hit[0] = False
    if not hit.any():
        return 0
    near = (au <= hl + reach) & (av <= hw + reach)
    return int(sizes[hit].sum() - hit[win[near]].sum())


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
    withheld_shape: list[int] = field(default_factory=list)  # on structure that goes on past the box
    shape_checked: bool = False  # False: no band counts this frame (the shape check did not run)
    returns: dict[int, int] = field(default_factory=dict)  # track id -> returns in its footprint this scan
    withheld_tracks: list = field(default_factory=list)  # the TrackStates withheld (every reason)


@dataclass(frozen=True, slots=True)
class _Box:
    """The box size ``on_structure`` reads of a track."""

    length: float
    width: float


_LIFE = {"ids": np.int64, "first_s": np.float64, "x0": np.float64, "y0": np.float64, "last_seen_s": np.float64,
         "max_move": np.float64, "frames": np.int64, "supported": np.int64, "last_supported": np.int64}


class TrackSupportRule:
    """Filters the tracker's output to the tracks the current scan supports (module docstring).

    Per track id it keeps (as arrays, one row per id, ``_row`` maps id -> row): first time and
    position, last time seen, largest distance from the first position, scans seen and supported,
    the frame of the last supported scan. All tracks of a frame are checked at once
    (``footprints_returns``)."""

    def __init__(self, cfg: TrackSupportConfig, grid: GridConfig):
        self.cfg = cfg
        self.grid = grid
        self.reset()

    def reset(self) -> None:
        self._row: dict[int, int] = {}
        self._life = {k: np.zeros(64, t) for k, t in _LIFE.items()}
        self._frame = 0

    def _rows(self, ids: list[int], x: np.ndarray, y: np.ndarray, stamp_s: float) -> np.ndarray:
        """Rows of the tracks' ids, new ones started at (stamp_s, x, y)."""
        rows = [self._row.get(i, -1) for i in ids]
        new = [k for k, r in enumerate(rows) if r < 0]
        if new:
            lf, used = self._life, len(self._row)
            if used + len(new) > lf["ids"].shape[0]:
                cap = max(2 * lf["ids"].shape[0], used + len(new))
                for key, arr in lf.items():
                    grown = np.zeros(cap, arr.dtype)
                    grown[:used] = arr[:used]
                    lf[key] = grown
            for m, k in enumerate(new):
                rows[k] = self._row[ids[k]] = used + m
            fresh = np.arange(used, used + len(new))
            nk = np.array(new)
            lf["ids"][fresh] = [ids[k] for k in new]
            lf["first_s"][fresh] = stamp_s
            lf["x0"][fresh], lf["y0"][fresh] = x[nk], y[nk]
            lf["max_move"][fresh] = 0.0
            lf["frames"][fresh] = lf["supported"][fresh] = 0
            lf["last_supported"][fresh] = -(10**9)
        return np.array(rows, np.int64)

    def _forget(self, stamp_s: float) -> None:
        """Drop the rows of ids not seen for _FORGET_S (the tracker never reuses an id)."""
        lf, used = self._life, len(self._row)
        keep = np.flatnonzero(np.abs(stamp_s - lf["last_seen_s"][:used]) <= _FORGET_S)
        for key in lf:
            lf[key][:keep.size] = lf[key][keep]
        self._row = {i: r for r, i in enumerate(lf["ids"][:keep.size].tolist())}

    def confident_static(self, track) -> bool:
        """Is the model confident enough of this static track's class (``static_min_score``)?"""
        if int(track.cls) == 0:
            return False
        share = (track.class_probs or {}).get(track.cls, 1.0)
        return track.score * share >= self.cfg.static_min_score.of(int(track.cls), math.inf)

    def on_structure(self, labels, sizes, bx: float, by: float, byaw: float, track) -> bool:
        """Does the track's box sit on connected structure reaching more than ``shape_max_beyond_m2``
        beyond ``shape_reach_m`` of the box (a wall, a hedge, a building front)?"""
        c, g = self.cfg, self.grid
        n = structure_beyond(labels, sizes, g, bx, by, byaw, track.length + g.resolution, track.width + g.resolution,
                             c.shape_reach_m)
        return n is not None and n * g.resolution**2 > c.shape_max_beyond_m2

    def on_structures(self, labels, sizes, bx: np.ndarray, by: np.ndarray, byaw: np.ndarray, cos_yaw: np.ndarray,
                      sin_yaw: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
        """``on_structure`` for many boxes at once ([N] bool; base_link poses, ``cos_yaw``/``sin_yaw``
        math.cos/math.sin of ``byaw``, as ``structure_beyond`` computes them): one compiled pass over all
        boxes (kernels.shape_beyond: the same window, cell tests and sums), else ``structure_beyond``
        per box."""
        c, g = self.cfg, self.grid
        if not kernels.available():
            return np.array([self.on_structure(labels, sizes, *p, _Box(le, wi)) for *p, le, wi in zip(
                bx.tolist(), by.tolist(), byaw.tolist(), length.tolist(), width.tolist(), strict=True)], bool)
        n = kernels.shape_beyond(labels, sizes, _centres(g.x_min, g.resolution, g.nx),
                                 _centres(g.y_min, g.resolution, g.ny), bx, by, cos_yaw, sin_yaw,
                                 length + g.resolution, width + g.resolution, c.shape_reach_m, g.x_min, g.y_min,
                                 g.resolution)
        return (n >= 0) & (n * g.resolution**2 > c.shape_max_beyond_m2)

    def apply(self, tracks: list, nonground_count: np.ndarray | None, T_odom_base: np.ndarray | None,
              stamp_s: float, band_count: np.ndarray | None = None, table=None) -> tuple[list, TrackSupportReport]:
        """(published tracks, report). ``nonground_count``: [H, W] non-ground returns of the current
        scan per cell (None: no LiDAR this frame); ``band_count``: its returns in the evidence height
        band per cell (``EvidenceGrids.band_count``; None: no shape check); ``tracks`` in odom, as the
        tracker returns them; ``table``: ``MultiObjectTracker.output_table()`` when ``tracks`` is what
        the tracker returned (the same values as arrays, read instead of the objects)."""
        c = self.cfg
        ok_pose = T_odom_base is not None and np.all(np.isfinite(T_odom_base))
        if not c.enabled or nonground_count is None or not ok_pose:
            return list(tracks), TrackSupportReport(False, sum(t.status != "tentative" for t in tracks))
        from ssm_perception.geometry import invert_transform

        T = invert_transform(np.asarray(T_odom_base, np.float64))
        self._frame += 1
        k = self._frame
        report = TrackSupportReport(True)
        shape = c.shape_check and band_count is not None and (
            any(t.status != "tentative" for t in tracks) if table is None else not table[1].all())
        labels = sizes = None
        if shape:
            labels, sizes = connected_structure(band_count)
            report.shape_checked = True
        out = []
        if tracks:
            if table is None:
                a = np.array([(t.x, t.y, t.yaw, t.length, t.width) for t in tracks], np.float64)
                tent = np.array([t.status == "tentative" for t in tracks], bool)
                ids = [t.id for t in tracks]
            else:
                a, tent, ids = table
            x, y = a[:, 0], a[:, 1]
            rows = self._rows(ids, x, y, stamp_s)
            # to_base for all tracks (the same operations)
            bx = T[0, 0] * x + T[0, 1] * y + T[0, 3]
            by = T[1, 0] * x + T[1, 1] * y + T[1, 3]
            byaw_a = a[:, 2] + math.atan2(T[1, 0], T[0, 0])
            byaw = byaw_a.tolist()
            cos = np.array([math.cos(v) for v in byaw])  # math, as footprint_returns (numpy's may differ in the last bit)
            sin = np.array([math.sin(v) for v in byaw])
            n = footprints_returns(nonground_count, self.grid, bx, by, cos, sin, a[:, 3], a[:, 4], c.margin_m)
            supported = n >= c.min_returns  # n is -1 where nothing can be said
            lf = self._life
            lf["last_seen_s"][rows] = stamp_s
            lf["frames"][rows] += 1
            lf["supported"][rows] += supported
            moved = [math.hypot(u, v) for u, v in zip((x - lf["x0"][rows]).tolist(), (y - lf["y0"][rows]).tolist(),
                                                      strict=True)]
            lf["max_move"][rows] = np.maximum(lf["max_move"][rows], moved)
            last = np.where(supported, k, lf["last_supported"][rows])
            lf["last_supported"][rows] = last
            static = (c.static_rule & (stamp_s - lf["first_s"][rows] >= c.static_min_s - 1e-6)
                      & (lf["max_move"][rows] < c.static_move_m)
                      & (lf["supported"][rows] >= c.static_support * lf["frames"][rows]))
            # The decisions as masks, in the order the checks apply: unsupported, then static and not
            # confident, then on structure (run only for the tracks still published, all in one call).
            un = ~tent & (k - last >= c.window_frames)
            st = np.flatnonzero(~tent & ~un & static)
            st_out = np.zeros(len(tracks), bool)  # few: a static track seen long enough
            st_out[st] = [not self.confident_static(tracks[i]) for i in st.tolist()]
            shape_out = np.zeros(len(tracks), bool)
            if shape:
                cand = np.flatnonzero(~tent & ~un & ~st_out)
                if cand.size:
                    shape_out[cand] = self.on_structures(labels, sizes, bx[cand], by[cand], byaw_a[cand],
                                                         cos[cand], sin[cand], a[cand, 3], a[cand, 4])
            # 0: published (or tentative, passed), 1: unsupported, 2: static, 3: shape
            decision = np.where(un, 1, np.where(st_out, 2, np.where(shape_out, 3, 0)))
            checked = np.flatnonzero(~tent).tolist()
            report.returns = dict(zip([ids[i] for i in checked], np.maximum(n, 0)[checked].tolist(), strict=True))
            dec = decision.tolist()
            out = [t for t, d in zip(tracks, dec, strict=True) if d == 0]
            withheld = np.flatnonzero(decision).tolist()
            report.withheld_tracks = [tracks[i] for i in withheld]
            report.withheld_unsupported = [ids[i] for i in withheld if dec[i] == 1]
            report.withheld_static = [ids[i] for i in withheld if dec[i] == 2]
            report.withheld_shape = [ids[i] for i in withheld if dec[i] == 3]
            report.published = len(out) - int(tent.sum())
        if k % 50 == 0:  # forget ids long gone (the tracker never reuses an id)
            self._forget(stamp_s)
        return out, report
