"""Multi-object tracking metrics, nuScenes style: per class, 2D centre distance, 2 m match threshold.

CLEAR-MOT (MOTA, MOTP, ID switches, fragmentations, MT/ML) and IDF1 come from motmetrics. HOTA is
written here because motmetrics has none; it follows the definition of Luiten et al. (IJCV 2021)
with a distance-based similarity ``max(0, 1 - d / 2 m)`` in place of IoU, so the HOTA alpha
thresholds 0.05..0.95 sweep the localisation threshold from 1.9 m down to 0.1 m. The test suite
cross-checks it against TrackEval's reference implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from ssm_perception.tracking.detections import CLASS_NAMES

MOTMETRICS_NAMES = {
    "mota": "mota",
    "motp": "motp",  # mean centre distance of matches [m] (motmetrics convention: lower is better)
    "idf1": "idf1",
    "id_switches": "num_switches",
    "fragmentations": "num_fragmentations",
    "mostly_tracked": "mostly_tracked",
    "mostly_lost": "mostly_lost",
    "false_positives": "num_false_positives",
    "misses": "num_misses",
    "num_gt": "num_objects",
    "num_matches": "num_matches",
    "num_gt_ids": "num_unique_objects",
}
HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)  # 19 thresholds
RANGE_EDGES_M = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 75.0)  # ego-distance buckets of the breakdown


class PlanarObject(Protocol):
    id: int
    cls: int
    x: float
    y: float


@dataclass(frozen=True)
class GroundTruthObject:
    """One ground-truth box (odom unless said otherwise)."""

    id: int
    cls: int
    x: float
    y: float
    yaw: float = 0.0
    vx: float = 0.0
    vy: float = 0.0
    length: float = 4.5
    width: float = 1.9
    height: float = 1.6
    num_points: int = -1  # LiDAR returns on the object this frame; -1 = not known
    observed: bool | None = None  # some LiDAR return hit it this frame (bags: Track.status); None = not known


@dataclass
class GtFrame:
    """Ground truth of one LiDAR frame: stamp, ego pose and the objects (in odom)."""

    stamp_s: float
    T_odom_base: np.ndarray  # [4, 4]
    objects: list[GroundTruthObject] | None  # None: no truth at this stamp (tracked, not scored)
    sensors: Any = None  # what a detection source needs besides the truth (e.g. the simulator's frame)
    # the scan's non-ground returns per cell, sparse (flat cell indices, counts): the track rule's input
    # (tracking/support.py), kept in the detection caches; None: not known
    nonground: tuple[np.ndarray, np.ndarray] | None = None
    band: tuple[np.ndarray, np.ndarray] | None = None  # the same for its returns in the evidence height band


def _distances(gt: Sequence[PlanarObject], hyp: Sequence[PlanarObject]) -> np.ndarray:
    """[G, H] Euclidean centre distances."""
    if not gt or not hyp:
        return np.zeros((len(gt), len(hyp)))
    g = np.array([[o.x, o.y] for o in gt], dtype=np.float64)
    h = np.array([[o.x, o.y] for o in hyp], dtype=np.float64)
    return np.linalg.norm(g[:, None, :] - h[None, :, :], axis=-1)


class MotEvaluator:
    """Accumulate frames of (ground truth, hypotheses); ``compute()`` gives metrics per class.

    Hypotheses are matched only to ground truth of their own class (nuScenes). Filter both sides to
    the evaluated region (e.g. the BEV grid) before ``update``.
    """

    def __init__(self, classes: Sequence[int] = (1, 2, 3, 4), max_distance_m: float = 2.0):
        if max_distance_m <= 0:
            raise ValueError("max_distance_m must be > 0")
        self.classes = tuple(int(c) for c in classes)
        self.max_distance_m = float(max_distance_m)
        import motmetrics as mm  # only where metrics are computed (detection caching runs without it)

        self._acc = {c: mm.MOTAccumulator(auto_id=False) for c in self.classes}
        # per class: list of (gt_ids [G], hyp_ids [H], similarity [G, H]) for HOTA
        self._hota_frames: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {c: [] for c in self.classes}
        self.num_frames = 0
        self._sequence = 0
        self._uids: dict[tuple[str, int, int], int] = {}  # (side, sequence, id) -> id unique over sequences
        # per class: (frame, side, uid, distance from the ego [m]) of every evaluated object, for
        # the range breakdown; filled when update() gets ego_xy
        self._ranges: dict[int, list[tuple[int, str, int, float]]] = {c: [] for c in self.classes}

    def start_sequence(self) -> None:
        """Begin an independent sequence (another bag or run): ids seen from now on never alias the
        earlier ones, so a tracker restarting at id 1 or a reused object id is not an ID switch."""
        self._sequence += 1

    def _uid(self, side: str, i: int) -> int:
        return self._uids.setdefault((side, self._sequence, int(i)), len(self._uids))

    def update(self, gt: Sequence[PlanarObject], hyp: Sequence[PlanarObject],
               ignored_gt: Sequence[PlanarObject] = (), ego_xy: tuple[float, float] | None = None) -> None:
        """One frame. ``ignored_gt``: objects that exist but cannot be seen (e.g. no LiDAR return);
        a hypothesis on one of them is neither a true nor a false positive and is dropped, as
        MOTChallenge does with its distractors, so coasting through an occlusion is not punished.
        ``ego_xy``: the ego position in the objects' frame, for ``range_breakdown``."""
        for o in list(gt) + list(hyp) + list(ignored_gt):
            if not (math.isfinite(o.x) and math.isfinite(o.y)):
                raise ValueError(f"non-finite position in evaluated object {o!r}")
        for c in self.classes:
            g = [o for o in gt if o.cls == c]
            h = [o for o in hyp if o.cls == c]
            ign = [o for o in ignored_gt if o.cls == c]
            if ign and h:
                h = self._drop_hypotheses_on_ignored(g, ign, h)
            d = _distances(g, h)
            if len({o.id for o in g}) != len(g) or len({o.id for o in h}) != len(h):
                raise ValueError(f"duplicate ids in one frame (class {c})")
            gids = np.array([self._uid("gt", o.id) for o in g], dtype=np.int64)
            hids = np.array([self._uid("hyp", o.id) for o in h], dtype=np.int64)
            dist = np.where(d <= self.max_distance_m, d, np.nan)  # NaN = may not be matched
            self._acc[c].update(gids.tolist(), hids.tolist(), dist, frameid=self.num_frames)
            sim = np.clip(1.0 - d / self.max_distance_m, 0.0, None)
            self._hota_frames[c].append((gids, hids, sim))
            if ego_xy is not None:
                for side, objs, uids in (("gt", g, gids), ("hyp", h, hids)):
                    self._ranges[c].extend((self.num_frames, side, int(u), math.hypot(o.x - ego_xy[0], o.y - ego_xy[1]))
                                           for o, u in zip(objs, uids))
        self.num_frames += 1

    def _drop_hypotheses_on_ignored(self, g, ign, h):
        # One assignment over all ground truth (counted and ignored), then drop the hypotheses that
        # went to an ignored object: a hypothesis between both goes where it fits best.
        d = _distances(list(g) + list(ign), h)
        rows, cols = linear_sum_assignment(np.where(d <= self.max_distance_m, d, 1e6))
        drop = {int(cc) for r, cc in zip(rows, cols) if r >= len(g) and d[r, cc] <= self.max_distance_m}
        return [o for k, o in enumerate(h) if k not in drop]

    def events(self, cls: int):
        """motmetrics' event table (MATCH, SWITCH, MISS, FP, ...) of class ``cls`` (internal ids)."""
        return self._acc[cls].mot_events

    def id_switches(self) -> list[tuple[str, int, int, int]]:
        """(class name, frame index, ground-truth id, new hypothesis id) of every ID switch (ids as given)."""
        original = {uid: i for (_, _, i), uid in self._uids.items()}
        out = []
        for c, acc in self._acc.items():
            ev = acc.mot_events
            for (frame, _), row in ev[ev["Type"] == "SWITCH"].iterrows():
                out.append((CLASS_NAMES.get(c, str(c)), int(frame), original[int(row["OId"])],
                            original[int(row["HId"])]))
        return out

    def range_breakdown(self, edges: Sequence[float] = RANGE_EDGES_M) -> dict[str, list[dict[str, float]]]:
        """{class name: one row per ego-distance bucket [lo, hi)}: ground truth count, recall (matched
        or switched ground truth / all), hypotheses and false positives, from motmetrics' event log.
        Shows where a detector loses objects and where its false tracks sit."""
        out: dict[str, list[dict[str, float]]] = {}
        for c, acc in self._acc.items():
            if not self._ranges[c]:
                continue
            ev = acc.mot_events
            matched = {(int(f), int(o)) for (f, _), o in ev[ev["Type"].isin(["MATCH", "SWITCH"])]["OId"].items()}
            false_pos = {(int(f), int(h)) for (f, _), h in ev[ev["Type"] == "FP"]["HId"].items()}
            rows = []
            for lo, hi in pairwise(edges):
                gt = [(f, u) for f, side, u, r in self._ranges[c] if side == "gt" and lo <= r < hi]
                hyp = [(f, u) for f, side, u, r in self._ranges[c] if side == "hyp" and lo <= r < hi]
                hit = sum(k in matched for k in gt)
                rows.append({"range_m": f"{lo:g}-{hi:g}", "num_gt": len(gt),
                             "recall": hit / len(gt) if gt else math.nan,
                             "num_hyp": len(hyp), "false_positives": sum(k in false_pos for k in hyp)})
            out[CLASS_NAMES.get(c, str(c))] = rows
        return out

    def compute(self) -> dict[str, dict[str, float]]:
        """{class name: {metric: value}} for every class with ground truth or hypotheses."""
        import motmetrics as mm

        mh = mm.metrics.create()
        out: dict[str, dict[str, float]] = {}
        for c in self.classes:
            frames = self._hota_frames[c]
            n_gt = sum(len(f[0]) for f in frames)
            n_hyp = sum(len(f[1]) for f in frames)
            if n_gt == 0 and n_hyp == 0:
                continue
            summary = mh.compute(self._acc[c], metrics=list(MOTMETRICS_NAMES.values()), name=str(c))
            row = {k: float(summary[v].iloc[0]) for k, v in MOTMETRICS_NAMES.items()}
            row.update(hota(frames))
            out[CLASS_NAMES.get(c, str(c))] = row
        return out


def hota(frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """HOTA, DetA, AssA, LocA (averaged over alpha = 0.05..0.95) from per-frame similarities.

    frames: (gt_ids [G], hyp_ids [H], similarity [G, H] in [0, 1]) per frame. Steps:
    1. global alignment score A(g, h): how much g and h co-occur over the whole sequence, from the
       soft per-frame overlap (similarity normalised like an IoU within the frame);
    2. per frame, one Hungarian matching maximising A * similarity; at threshold alpha a matched
       pair counts as a true positive if its similarity >= alpha;
    3. DetA = TP / (TP + FN + FP); AssA = mean over TPs of the association IoU of their (g, h) pair,
       TPA / (TPA + FNA + FPA) = m / (n_g + n_h - m); HOTA = sqrt(DetA * AssA); LocA = mean
       similarity of the TPs. All are averaged over alpha (LocA only over alphas that have a TP).
    """
    gt_index = {int(i): n for n, i in enumerate(sorted({int(i) for f in frames for i in f[0]}))}
    hyp_index = {int(i): n for n, i in enumerate(sorted({int(i) for f in frames for i in f[1]}))}
    n_alpha = len(HOTA_ALPHAS)
    n_gt_dets = sum(len(f[0]) for f in frames)
    n_hyp_dets = sum(len(f[1]) for f in frames)
    zero = {"hota": 0.0, "deta": 0.0, "assa": 0.0, "loca": 0.0, "deta_re": 0.0, "deta_pr": 0.0}
    if n_gt_dets == 0 or n_hyp_dets == 0:
        return zero

    gid_count = np.zeros(len(gt_index))
    hid_count = np.zeros(len(hyp_index))
    overlap = np.zeros((len(gt_index), len(hyp_index)))
    idx_frames = []
    for gids, hids, sim in frames:
        g = np.array([gt_index[int(i)] for i in gids], dtype=np.int64)
        h = np.array([hyp_index[int(i)] for i in hids], dtype=np.int64)
        sim = np.asarray(sim, dtype=np.float64).reshape(len(g), len(h))
        idx_frames.append((g, h, sim))
        gid_count[g] += 1
        hid_count[h] += 1
        if len(g) and len(h):
            denom = sim.sum(axis=1, keepdims=True) + sim.sum(axis=0, keepdims=True) - sim
            overlap[np.ix_(g, h)] += np.divide(sim, denom, out=np.zeros_like(sim), where=denom > 0)
    alignment = overlap / (gid_count[:, None] + hid_count[None, :] - overlap)

    tp = np.zeros(n_alpha)
    fn = np.zeros(n_alpha)
    fp = np.zeros(n_alpha)
    loc = np.zeros(n_alpha)
    pair_matches = np.zeros((n_alpha, len(gt_index), len(hyp_index)))
    for g, h, sim in idx_frames:
        if len(g) == 0 or len(h) == 0:
            fn += len(g)
            fp += len(h)
            continue
        r, c = linear_sum_assignment(-(alignment[np.ix_(g, h)] * sim))
        s = sim[r, c]
        for a, alpha in enumerate(HOTA_ALPHAS):
            ok = s >= alpha - 1e-9
            n = int(ok.sum())
            tp[a] += n
            fn[a] += len(g) - n
            fp[a] += len(h) - n
            loc[a] += s[ok].sum()
            pair_matches[a, g[r[ok]], h[c[ok]]] += 1

    deta = tp / np.maximum(tp + fn + fp, 1)
    ass_iou = pair_matches / np.maximum(gid_count[None, :, None] + hid_count[None, None, :] - pair_matches, 1)
    assa = (pair_matches * ass_iou).sum(axis=(1, 2)) / np.maximum(tp, 1)
    # LocA is undefined at thresholds without a TP: averaged over the others (TrackEval reports 1 there).
    loca = loc[tp > 0] / tp[tp > 0]
    return {
        "hota": float(np.mean(np.sqrt(deta * assa))),
        "deta": float(np.mean(deta)),
        "assa": float(np.mean(assa)),
        "loca": float(np.mean(loca)) if loca.size else 0.0,
        "deta_re": float(np.mean(tp / n_gt_dets)),
        "deta_pr": float(np.mean(tp / n_hyp_dets)),
    }
