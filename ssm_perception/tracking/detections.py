"""Object detections: decoded from the heads' centre heatmaps, refined with radar, moved to odom,
selected for tracking.

A detection is one box at one LiDAR stamp. The decoder works in base_link (the grid frame); the
tracker works in odom, so ``detections_to_odom`` is the hand-over. Velocities are over-ground
(the heads predict them that way), so moving a detection to odom only rotates the velocity.
``decode_detections`` keeps every heatmap peak above a low floor; ``select_detections`` (called by
the tracker) applies what tracking needs: per-class score thresholds, an occupancy-evidence gate
and a circle NMS, with values from TrackingConfig tuned on validation seeds (scripts/tune_tracking.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ssm_perception.config import GridConfig, TrackingConfig
from ssm_perception.geometry import wrap_angle, yaw_of
from ssm_perception.tracking import kernels

# Head channel k of center_logit is object class k + 1 (our class numbering, io/track_fields.py).
NUM_OBJECT_CLASSES = 4
CLASS_NAMES = {0: "unknown", 1: "car", 2: "truck", 3: "cyclist", 4: "pedestrian"}

_REQUIRED_HEADS = ("center_logit", "box_offset", "box_size", "box_yaw", "velocity")
_OPTIONAL_HEADS = ("occupancy_logit",)
MAX_DETECTIONS = 256  # decoder cap per frame (best scores kept): a safety bound, far above a street's objects
# Detector confusions that association and NMS tolerate (car <-> truck); anything else must match exactly.
VEHICLES = (1, 2)


@dataclass(frozen=True)
class Detection:
    """One box. x, y, yaw, vx, vy are in ``frame``; vx/vy may be NaN when no velocity is known."""

    x: float
    y: float
    yaw: float
    length: float
    width: float
    height: float
    vx: float
    vy: float
    cls: int
    score: float
    frame: Literal["base_link", "odom"] = "base_link"
    evidence: float = math.nan  # P(occupied) of the occupancy head at the centre cell; NaN = not known

    def is_finite(self) -> bool:
        """Position, heading, size and score usable (velocity may be missing)."""
        vals = (self.x, self.y, self.yaw, self.length, self.width, self.height, self.score)
        return all(math.isfinite(v) for v in vals)

    @property
    def has_velocity(self) -> bool:
        return math.isfinite(self.vx) and math.isfinite(self.vy)


# Columns of the fixed-size detection table that ``decode_topk`` builds on the device.
DET_COLUMNS = ("x", "y", "yaw", "length", "width", "height", "vx", "vy", "cls", "score", "evidence", "valid")


def _heads_3d(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept [1, C, H, W] or [C, H, W] per key; return [C, H, W] float32 on the heads' own device."""
    out = {}
    for key in _REQUIRED_HEADS + _OPTIONAL_HEADS:
        if key not in heads:
            if key in _OPTIONAL_HEADS:
                continue
            raise KeyError(f"decode_detections: heads dict lacks {key!r} (has {sorted(heads)})")
        t = heads[key].detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"decode_detections decodes one frame; heads[{key!r}] has batch {t.shape[0]}")
            t = t[0]
        if t.dim() != 3:
            raise ValueError(f"heads[{key!r}] must be [C, H, W] or [1, C, H, W], got {tuple(heads[key].shape)}")
        out[key] = t.float()
    return out


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of [C, H, W] (-inf outside): equal to max_pool2d(kernel 3, stride 1, padding 1),
    separably as four elementwise maxima, which on the CPU is ~15x faster than max_pool2d."""
    p = F.pad(x, (1, 1, 1, 1), value=-math.inf)
    r = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    return torch.maximum(torch.maximum(r[:, :-2], r[:, 1:-1]), r[:, 2:])


@torch.no_grad()
def decode_topk(
    heads: dict[str, torch.Tensor],
    grid: GridConfig,
    score_threshold: float = 0.3,
    max_detections: int = MAX_DETECTIONS,
) -> torch.Tensor:
    """Heatmap peaks -> a fixed-size table [K, len(DET_COLUMNS)] float32 on the heads' device,
    best score first, K = min(max_detections, cells * classes); rows with ``valid`` 0 are padding.

    Static shapes only (top-k instead of nonzero + sort), so it runs inside a CUDA graph and the
    host reads the detections with the frame's one small copy; ``detections_from_table`` turns the
    table into Detection objects. A peak is what ``decode_detections`` says."""
    h = _heads_3d(heads)
    center = h["center_logit"]  # [4, H, W]
    _, nx, ny = center.shape
    if (nx, ny) != (grid.nx, grid.ny):
        raise ValueError(f"heads are {nx}x{ny} cells but the grid is {grid.nx}x{grid.ny}")
    heat = torch.sigmoid(torch.nan_to_num(center, nan=-math.inf))  # NaN logits -> score 0
    peaks = (heat == _max3x3(heat)) & (heat >= score_threshold)  # [4, H, W]
    masked = torch.where(peaks, heat, -1.0).reshape(-1)  # scores are >= 0: -1 marks "no peak"
    k_max = max(0, min(int(max_detections), masked.numel()))
    scores, flat = torch.topk(masked, k_max, sorted=True)
    k = flat // (nx * ny)
    cell = flat % (nx * ny)
    i, j = cell // ny, cell % ny
    res = grid.resolution
    off = h["box_offset"][:, i, j]  # [2, K]
    size = torch.exp(h["box_size"][:, i, j].clamp(max=5.0))  # [3, K]; exp(5) = 148 m bounds garbage
    sin_cos = h["box_yaw"][:, i, j]  # [2, K]
    vel = h["velocity"][:, i, j]  # [2, K]
    xs = grid.x_min + (i.float() + 0.5) * res + off[0]
    ys = grid.y_min + (j.float() + 0.5) * res + off[1]
    yaws = torch.atan2(sin_cos[0], sin_cos[1])
    if "occupancy_logit" in h:
        evidence = torch.sigmoid(h["occupancy_logit"][0, i, j])
    else:
        evidence = torch.full_like(scores, math.nan)
    return torch.stack([xs, ys, yaws, size[0], size[1], size[2], vel[0], vel[1], (k + 1).float(), scores,
                        evidence, (scores >= 0).float()], 1)


def detections_from_table(table) -> list[Detection]:
    """Rows of ``decode_topk`` (a host array or tensor) -> Detection list in row order (best
    first); padding rows and non-finite detections are left out."""
    a = np.asarray(table.cpu() if isinstance(table, torch.Tensor) else table, dtype=np.float32)
    dets = []
    for r in a[a[:, 11] > 0.5].tolist():
        d = Detection(x=r[0], y=r[1], yaw=r[2], length=r[3], width=r[4], height=r[5], vx=r[6], vy=r[7],
                      cls=int(r[8]), score=r[9], evidence=r[10])
        if d.is_finite():
            dets.append(d)
    return dets


def decode_detections(
    heads: dict[str, torch.Tensor],
    grid: GridConfig,
    score_threshold: float = 0.3,
    max_detections: int = MAX_DETECTIONS,
) -> list[Detection]:
    """Heatmap peaks -> boxes in base_link, best score first.

    A peak is a cell whose sigmoid score is the maximum of its 3x3 neighbourhood in its own class
    channel (the CenterPoint-style max-pool NMS) and at least ``score_threshold``, the floor;
    per-class thresholds, circle NMS and evidence gating come after (``select_detections``, applied
    by the tracker). Each detection carries the occupancy head's P(occupied) at its peak cell as
    ``evidence`` when the heads have ``occupancy_logit``. Non-finite outputs never become detections.
    Decoded on the heads' device (``decode_topk``), read back in one copy."""
    return detections_from_table(decode_topk(heads, grid, score_threshold, max_detections))


def select_detections(dets: list[Detection], cfg: TrackingConfig) -> list[Detection]:
    """The detections worth tracking: finite with a positive size, above their class's score
    threshold, with enough occupancy evidence (when known), not within the NMS radius of a better one.

    The 3x3 max-pool in ``decode_detections`` only suppresses neighbouring cells; a poorly peaked
    heatmap still puts two or three peaks on one car (or a car and a truck peak on one vehicle), and
    each extra peak is a false positive and a spurious track. The circle NMS here (as CenterPoint's
    ``circle_nms``, greedy by score) removes them, with the larger of the two classes' radii, across
    compatible classes (car/truck). Works in any planar frame (distances are frame-invariant) and
    keeps the input order of the survivors. Written here: a dozen lines over a short list of boxes.
    """
    keep = _select_mask(_selection_arrays(dets), _thresholds(cfg.score_threshold, cfg.detection_threshold), cfg)
    return [d for d, k in zip(dets, keep, strict=True) if k]


def _thresholds(per_class, default: float) -> np.ndarray:
    """Per class id 0..NUM_OBJECT_CLASSES: the PerClass value, ``default`` for class 0."""
    return np.array([per_class.of(c, default) for c in range(NUM_OBJECT_CLASSES + 1)])


def _selection_arrays(dets: list[Detection]) -> dict[str, np.ndarray]:
    a = np.array([(d.x, d.y, d.yaw, d.length, d.width, d.height, d.score, d.evidence) for d in dets],
                 dtype=np.float64).reshape(len(dets), 8)
    return {"a": a, "cls": np.array([d.cls for d in dets], np.int64).reshape(len(dets))}


def nonzero2(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero of a 2-D mask, through the flat index (an order of magnitude faster for the
    small masks here with numpy 2.4)."""
    return np.divmod(mask.ravel().nonzero()[0], mask.shape[1])


def _select_mask(arr: dict[str, np.ndarray], thr: np.ndarray, cfg: TrackingConfig,
                 detection_threshold: float | None = None) -> np.ndarray:
    """The selection of ``select_detections`` as a boolean mask over the detections, in numpy: the
    candidates by masks, then the greedy circle NMS over a precomputed conflict matrix (one pass in
    score order; a kept detection blocks its conflicts); kernels.select runs the same selection
    compiled. ``detection_threshold``: instead of the config's (the weak stage)."""
    a, cls = arr["a"], arr["cls"]
    det_thr = cfg.detection_threshold if detection_threshold is None else detection_threshold
    n = a.shape[0]
    if n and kernels.available():  # the same selection in one compiled loop
        return kernels.select(a, cls, NUM_OBJECT_CLASSES, thr, det_thr, cfg.min_evidence,
                              _thresholds(cfg.nms_radius_m, 0.0), VEHICLES[0], VEHICLES[1])
    keep = np.zeros(n, bool)
    if n == 0:
        return keep
    known = (cls >= 0) & (cls <= NUM_OBJECT_CLASSES)
    c = np.where(known, cls, 0)
    score, evidence = a[:, 6], a[:, 7]
    with np.errstate(invalid="ignore"):
        cand = np.isfinite(a[:, :7]).all(1) & (a[:, 3:6].min(1) > 0.0)
        cand &= score >= np.where(known, thr[c], det_thr)
        cand &= ~(np.isfinite(evidence) & (evidence < cfg.min_evidence))
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return keep
    radius = _thresholds(cfg.nms_radius_m, 0.0)
    r = np.where(known[idx], radius[c[idx]], 0.0)
    ci = cls[idx]
    veh = (ci == VEHICLES[0]) | (ci == VEHICLES[1])
    compatible = (ci[:, None] == ci[None, :]) | (veh[:, None] & veh[None, :])
    dist = np.hypot(a[idx, 0][:, None] - a[idx, 0][None, :], a[idx, 1][:, None] - a[idx, 1][None, :])
    conflict = compatible & (dist < np.maximum(r[:, None], r[None, :]))
    blocked = np.zeros(idx.size, bool)
    for i in np.argsort(-score[idx], kind="stable").tolist():  # best first, ties in input order
        if not blocked[i]:
            keep[idx[i]] = True
            blocked |= conflict[i]
    return keep


def select_two_stage_masks(arr: dict[str, np.ndarray], cfg: TrackingConfig) -> tuple[np.ndarray, np.ndarray]:
    """``select_two_stage`` as two boolean masks over the rows of ``arr`` (``_selection_arrays``)."""
    thr = _thresholds(cfg.score_threshold, cfg.detection_threshold)
    strong = _select_mask(arr, thr, cfg)
    low = cfg.low_score_threshold
    if low <= 0.0:
        return strong, np.zeros_like(strong)
    weak = _select_mask(arr, np.minimum(thr, low), cfg, min(low, cfg.detection_threshold)) & ~strong
    return strong, weak


def select_two_stage(dets: list[Detection], cfg: TrackingConfig) -> tuple[list[Detection], list[Detection]]:
    """(strong, weak): ``select_detections`` as configured, and for the tracker's second association
    stage the detections that the same selection keeps at ``low_score_threshold`` but that are not
    strong (weak is empty when the stage is off). A strong detection suppresses weak ones near it."""
    strong, weak = select_two_stage_masks(_selection_arrays(dets), cfg)
    return ([d for d, k in zip(dets, strong, strict=True) if k], [d for d, k in zip(dets, weak, strict=True) if k])


def refine_with_radar(
    dets: list[Detection],
    radar_points_base: np.ndarray,
    sensor_xy: tuple[float, float] = (0.0, 0.0),
    margin_m: float = 0.5,
    min_points: int = 2,
) -> list[Detection]:
    """Replace the radial part of each detection's velocity by the radar's measurement.

    radar_points_base: [N, 3] (x, y, radial_velocity) in base_link, radial velocity already
    ego-motion compensated (over ground, positive = moving away from ``sensor_xy``). Radar measures
    the radial component far better than a BEV head, but says nothing about the tangential one,
    so only the component along the line of sight is replaced (median over the returns inside the
    box, robust to a clutter point or two); detections with fewer than ``min_points`` returns, or
    in another frame than base_link, are returned unchanged.
    """
    pts = np.asarray(radar_points_base, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.shape[0] == 0:
        return list(dets)
    if any(d.frame != "base_link" for d in dets):
        raise ValueError("refine_with_radar needs detections in base_link (radar points are in base_link)")
    if not dets:
        return []
    # All boxes against all returns at once ([D, N], the same float64 arithmetic as one box at a
    # time; cos/sin from math as before); only boxes with enough returns go through the loop below.
    box = np.array([(d.x, d.y, d.length / 2 + margin_m, d.width / 2 + margin_m) for d in dets], np.float64)
    cs = np.array([(math.cos(d.yaw), math.sin(d.yaw)) for d in dets], np.float64)
    dx, dy = pts[None, :, 0] - box[:, :1], pts[None, :, 1] - box[:, 1:2]
    c, s = cs[:, :1], cs[:, 1:]
    along, across = c * dx + s * dy, -s * dx + c * dy  # box frame
    inside_all = (np.abs(along) <= box[:, 2:3]) & (np.abs(across) <= box[:, 3:4])
    supported = inside_all.sum(1) >= min_points
    out = []
    for d, inside, ok in zip(dets, inside_all, supported, strict=True):
        if not ok:
            out.append(d)
            continue
        ray = np.array([d.x - sensor_xy[0], d.y - sensor_xy[1]])
        rng = float(np.linalg.norm(ray))
        if rng < 1e-3:
            out.append(d)
            continue
        u = ray / rng  # line of sight, unit
        vr = float(np.median(pts[inside, 2]))
        v = np.array([d.vx, d.vy]) if d.has_velocity else np.zeros(2)
        v = v + (vr - float(v @ u)) * u
        out.append(replace(d, vx=float(v[0]), vy=float(v[1])))
    return out


def detections_to_odom(dets: list[Detection], T_odom_base: np.ndarray) -> list[Detection]:
    """Move base_link detections into odom: rotate+translate positions, add the heading, rotate velocities.
    All detections at once (numpy), then one Detection per row."""
    return detections_to_odom_table(dets, T_odom_base)[0]


# Columns of the detection table of ``detections_to_odom_table`` (MultiObjectTracker.update_table's input)
TABLE_COLUMNS = ("x", "y", "yaw", "length", "width", "height", "score", "evidence", "vx", "vy")


def detections_to_odom_table(dets: list[Detection], T_odom_base: np.ndarray
                             ) -> tuple[list[Detection], np.ndarray, list[int]]:
    """(``detections_to_odom``'s detections, the same as a [n, 10] float64 table of TABLE_COLUMNS,
    their classes): the table holds the values of the odom detections' fields, so the tracker reads
    them without a pass over the objects."""
    T = np.asarray(T_odom_base, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError("T_odom_base must be a finite 4x4 transform")
    for d in dets:
        if d.frame != "base_link":
            raise ValueError(f"detection already in {d.frame!r}; detections_to_odom expects base_link")
    if not dets:
        return [], np.zeros((0, 10)), []
    yaw0 = yaw_of(T)
    c, s = math.cos(yaw0), math.sin(yaw0)
    a = np.array([(d.x, d.y, d.yaw, d.length, d.width, d.height, d.score, d.evidence, d.vx, d.vy) for d in dets],
                 np.float64)
    x, y, vx, vy = a[:, 0], a[:, 1], a[:, 8], a[:, 9]
    px = T[0, 0] * x + T[0, 1] * y + T[0, 3]  # z = 0 in base_link
    py = T[1, 0] * x + T[1, 1] * y + T[1, 3]
    a[:, 0], a[:, 1], a[:, 2] = px, py, wrap_angle(a[:, 2] + yaw0)
    a[:, 8], a[:, 9] = c * vx - s * vy, s * vx + c * vy
    cols = zip(*a[:, [0, 1, 2, 8, 9]].T.tolist(), strict=True)
    # Each odom detection: the base one's fields with the moved ones replaced, as the instance's
    # __dict__ in one step (what _new_detection does; frozen: set through object.__setattr__).
    out = []
    for d, (ox, oy, oyaw, ovx, ovy) in zip(dets, cols, strict=True):
        o = _object_new(Detection)
        _set(o, "__dict__", dict(d.__dict__, x=ox, y=oy, yaw=oyaw, vx=ovx, vy=ovy, frame="odom"))
        out.append(o)
    return out, a, [d.cls for d in dets]


def _new_detection(fields: dict) -> Detection:
    """Detection(**fields) without the frozen dataclass's __init__ (one object.__setattr__ per field,
    ~3 us of a ~5 us construction, paid per detection per frame): the instance's __dict__ filled
    at once. Same object (fields, equality, hash); only for values already of the right types."""
    d = _object_new(Detection)
    d.__dict__.update(fields)
    return d


_object_new = object.__new__
_set = object.__setattr__
