"""Occupancy metrics on the BEV grid: IoU/F1 split by static/dynamic, visible/occluded, range band,
and calibration (expected calibration error + reliability bins).

Definitions (the metrics.json schema documents the same):
- A cell is predicted occupied when P(occupied) > ``threshold`` (0.5): a claim needs evidence, so
  the classical filter's 'unknown' (exactly 0.5) counts as not occupied, not as a free hit.
- Counts (tp, fp, fn, tn) are summed over all frames, then IoU = tp / (tp + fp + fn) and
  F1 = 2 tp / (2 tp + fp + fn) (dataset-level, so empty frames do not dominate).
- Splits restrict the cells that count:
    static   : truth-dynamic cells are ignored (positives = static occupied cells)
    dynamic  : truth-static-occupied cells are ignored (positives = cells of moving objects)
    visible  : truth-visible cells only;  occluded: the others
    range_<a>_<b>: cells whose centre is a <= r < b metres from base_link
  and combinations ``static_visible``, ``dynamic_occluded``, ...
  The static/dynamic split scores the occupancy output itself, so the log-odds filter (which has
  no dynamic head) is measured on the same footing; free cells count in both splits (a trail left
  behind a moving object is a false positive of either).
- ``moving``: IoU of P(occupied and dynamic) > threshold against truth-dynamic cells (when the
  model gives a dynamic output).
- ECE: cells binned by predicted probability into ``n_bins`` equal-width bins;
  ECE = sum_b (n_b / N) |mean(truth)_b - mean(p)_b| over all cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RANGE_BANDS: tuple[tuple[float, float], ...] = ((0.0, 20.0), (20.0, 40.0), (40.0, math.inf))


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> Counts:
        """Accumulate boolean pred/truth over the cells in ``mask`` (all when None)."""
        if mask is not None:
            pred, truth = pred[mask], truth[mask]
        tp = int(np.count_nonzero(pred & truth))
        fp = int(np.count_nonzero(pred & ~truth))
        fn = int(np.count_nonzero(~pred & truth))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += int(pred.size) - tp - fp - fn
        return self

    @property
    def iou(self) -> float | None:
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else None  # None: nothing occupied in truth or prediction

    @property
    def f1(self) -> float | None:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else None

    @property
    def precision(self) -> float | None:
        d = self.tp + self.fp
        return self.tp / d if d else None

    @property
    def recall(self) -> float | None:
        d = self.tp + self.fn
        return self.tp / d if d else None

    def as_dict(self) -> dict:
        return {
            "iou": self.iou,
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def iou(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    return Counts().add(np.asarray(pred, bool), np.asarray(truth, bool), mask).iou


@dataclass
class Calibration:
    """Reliability bins accumulated over frames: count, sum of p, sum of truth per bin."""

    n_bins: int = 15
    count: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_p: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_y: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.count is None:
            self.count = np.zeros(self.n_bins, np.int64)
            self.sum_p = np.zeros(self.n_bins, np.float64)
            self.sum_y = np.zeros(self.n_bins, np.float64)

    def add(self, prob: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> Calibration:
        p = np.asarray(prob, np.float64)
        y = np.asarray(truth, np.float64)
        if mask is not None:
            p, y = p[mask], y[mask]
        p, y = p.ravel(), y.ravel()
        ok = np.isfinite(p)
        p, y = np.clip(p[ok], 0.0, 1.0), y[ok]
        b = np.minimum((p * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.count += np.bincount(b, minlength=self.n_bins)
        self.sum_p += np.bincount(b, weights=p, minlength=self.n_bins)
        self.sum_y += np.bincount(b, weights=y, minlength=self.n_bins)
        return self

    def ece(self) -> float | None:
        n = int(self.count.sum())
        if n == 0:
            return None
        nz = self.count > 0
        gap = np.abs(self.sum_y[nz] / self.count[nz] - self.sum_p[nz] / self.count[nz])
        return float(np.sum(self.count[nz] / n * gap))

    def bins(self) -> list[dict]:
        """Reliability diagram data: per bin its range, count, mean confidence, observed frequency."""
        out = []
        for k in range(self.n_bins):
            c = int(self.count[k])
            out.append(
                {
                    "lo": k / self.n_bins,
                    "hi": (k + 1) / self.n_bins,
                    "count": c,
                    "confidence": float(self.sum_p[k] / c) if c else None,
                    "frequency": float(self.sum_y[k] / c) if c else None,
                }
            )
        return out


def range_map(nx: int, ny: int, resolution: float, x_min: float, y_min: float) -> np.ndarray:
    """[H, W] distance of every cell centre from the base_link origin [m]."""
    xs = x_min + (np.arange(nx) + 0.5) * resolution
    ys = y_min + (np.arange(ny) + 0.5) * resolution
    return np.hypot(xs[:, None], ys[None, :])


def band_name(lo: float, hi: float) -> str:
    return f"range_{lo:g}_{'inf' if math.isinf(hi) else f'{hi:g}'}"


class OccupancyMetrics:
    """Accumulates occupancy metrics frame by frame for one model.

    ``add`` takes [H, W] arrays: prob (P occupied), truth occupied / dynamic / visible (bool) and
    optionally dyn_joint (P occupied and dynamic). Returns the frame's headline IoUs (for plots).
    """

    SPLITS = ("all", "static", "dynamic", "visible", "occluded",
              "static_visible", "static_occluded", "dynamic_visible", "dynamic_occluded")

    def __init__(self, ranges: np.ndarray, bands=DEFAULT_RANGE_BANDS, threshold: float = 0.5, n_bins: int = 15):
        self.threshold = threshold
        self.counts = {s: Counts() for s in self.SPLITS}
        self.band_masks = {band_name(lo, hi): (ranges >= lo) & (ranges < hi) for lo, hi in bands}
        self.counts.update({name: Counts() for name in self.band_masks})
        self.moving = Counts()
        self.has_dynamic_head = False
        self.calibration = Calibration(n_bins)
        self.frames = 0

    def add(self, prob, occupied, dynamic, visible, dyn_joint=None) -> dict[str, float | None]:
        prob = np.asarray(prob, np.float32)
        occ = np.asarray(occupied, bool)
        dyn = np.asarray(dynamic, bool) & occ
        vis = np.asarray(visible, bool)
        pred = prob > self.threshold
        not_dyn, not_static = ~dyn, ~(occ & ~dyn)
        masks = {
            "all": None,
            "static": not_dyn,
            "dynamic": not_static,
            "visible": vis,
            "occluded": ~vis,
            "static_visible": not_dyn & vis,
            "static_occluded": not_dyn & ~vis,
            "dynamic_visible": not_static & vis,
            "dynamic_occluded": not_static & ~vis,
        }
        masks.update(self.band_masks)
        frame = {}
        for name, m in masks.items():
            self.counts[name].add(pred, occ, m)
            if name in ("all", "static", "dynamic", "occluded"):
                frame[name] = Counts().add(pred, occ, m).iou
        if dyn_joint is not None:
            self.has_dynamic_head = True
            self.moving.add(np.asarray(dyn_joint, np.float32) > self.threshold, dyn)
        self.calibration.add(prob, occ)
        self.frames += 1
        return frame

    def merge(self, other: OccupancyMetrics) -> OccupancyMetrics:
        """Add another accumulator's counts (e.g. per-bag into a total)."""
        for k, c in other.counts.items():
            mine = self.counts.setdefault(k, Counts())
            mine.tp, mine.fp, mine.fn, mine.tn = mine.tp + c.tp, mine.fp + c.fp, mine.fn + c.fn, mine.tn + c.tn
        m = self.moving
        m.tp, m.fp, m.fn, m.tn = m.tp + other.moving.tp, m.fp + other.moving.fp, m.fn + other.moving.fn, \
            m.tn + other.moving.tn
        self.has_dynamic_head |= other.has_dynamic_head
        cal, oc = self.calibration, other.calibration
        cal.count += oc.count
        cal.sum_p += oc.sum_p
        cal.sum_y += oc.sum_y
        self.frames += other.frames
        return self

    def summary(self) -> dict:
        return {
            "frames": self.frames,
            "threshold": self.threshold,
            "splits": {k: v.as_dict() for k, v in self.counts.items()},
            "moving": self.moving.as_dict() if self.has_dynamic_head else None,
            "ece": self.calibration.ece(),
            "reliability": self.calibration.bins(),
        }
