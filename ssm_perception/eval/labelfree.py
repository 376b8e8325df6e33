"""Metrics of any recording, without ground truth, and with a label file when there is one.

Label-free (every bag), from the published values and the scan's own evidence (evidence.py):
- evidence coverage: share of cells with direct evidence (>= evidence.min_returns returns in the
  height band) that are published occupied (value > 50); also before the rule (the network alone)
  and for every cell with at least one non-ground return of any height (a looser definition);
- free-space contradictions: share of cells the scan sees through that are published occupied;
- track support: published tracks (confirmed, coasting) without a non-ground return of the current
  scan in their footprint (grown by ``SUPPORT_MARGIN_M``), per track instance; tracks that never
  move (``STATIC_MOVE_M`` over at least ``STATIC_MIN_S``) while sitting on returns in most frames:
  parked cars, or false tracks on walls and poles; a share to look at, not an error by itself.
  The same for confirmed tracks alone, and for the tracker's output before the track rule
  (tracking/support.py: the published tracks plus those it withheld), with the withheld counts.

With labels (io/labels.py), the simulator evaluation's matching rules (eval/mot.py): per class,
2 m centre distance, objects and tracks inside the grid, labelled boxes without a LiDAR return
(``num_points`` 0 or, without it, no non-ground return in the footprint) ignored; MOTA, IDF1, HOTA,
recall by range; and the share of published tracks more than 2 m from every labelled box (also
before the track rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ssm_perception.config import PerceptionConfig
from ssm_perception.evidence import OCCUPIED_THRESHOLD
from ssm_perception.tracking.support import footprint_cells as _footprint
from ssm_perception.tracking.support import to_base as _to_base

SUPPORT_MARGIN_M = 0.25  # a track's footprint grown by this for the support test
STATIC_MOVE_M = 1.0  # a track whose positions stay within this of its first position never moved ...
STATIC_MIN_S = 3.0  # ... when it lived at least this long
STATIC_SUPPORT = 0.8  # ... and had returns in at least this share of its frames
LABEL_STAMP_TOLERANCE_NS = 50_000_000  # a label set belongs to the LiDAR frame within this
FAR_FROM_LABELS_M = 2.0


@dataclass
class _TrackLife:
    first_s: float
    last_s: float
    x0: float
    y0: float
    max_move: float = 0.0
    frames: int = 0
    supported: int = 0
    path: list = field(default_factory=list)  # (x, y) in odom


def footprint_cells(grid, x: float, y: float, yaw: float, length: float, width: float,
                    margin: float = SUPPORT_MARGIN_M) -> np.ndarray:
    """[H, W] bool: cells whose centre lies in the oriented box (base_link), grown by ``margin``
    (the track rule's own footprint, tracking/support.py)."""
    return _footprint(grid, x, y, yaw, length, width, margin)


class LabelFreeMetrics:
    """Accumulates the metrics above over the frames of one model (``start_sequence`` per bag)."""

    def __init__(self, cfg: PerceptionConfig, with_labels: bool = False):
        self.cfg = cfg
        self.n = {k: 0 for k in ("frames", "evidence", "evidence_pub", "evidence_net", "nonground", "nonground_pub",
                                 "see_through", "see_through_pub", "track_instances", "track_unsupported",
                                 "confirmed_instances", "confirmed_unsupported", "rule_instances",
                                 "rule_unsupported", "withheld_unsupported", "withheld_static", "withheld_shape",
                                 "label_frames", "tracks_near_labels", "tracks_far_from_labels",
                                 "rule_near_labels", "rule_far_from_labels")}
        self.disagreement: list[float] = []
        self._lives: list[dict[int, _TrackLife]] = []
        self.mot = None
        if with_labels:
            from ssm_perception.eval.mot import MotEvaluator

            self.mot = MotEvaluator()
        self._label_ids: dict[str, int] = {}

    def start_sequence(self) -> None:
        self._lives.append({})
        if self.mot is not None:
            self.mot.start_sequence()

    def add(self, t_s: float, out, pub, labels: list | None = None) -> dict:
        """One frame: FrameOutputs, its PublishedGrids, and the label boxes of its stamp (or None)."""
        from ssm_perception.geometry import invert_transform

        if not self._lives:
            self.start_sequence()
        c, n = self.cfg, self.n
        n["frames"] += 1
        rec: dict = {}
        ev = out.evidence
        occupied = pub.occupancy > round(100 * OCCUPIED_THRESHOLD)
        if ev is not None:
            evidence = ev.evidence(c.evidence)
            nonground = ev.nonground_count > 0
            k_ev = int(evidence.sum())
            n["evidence"] += k_ev
            n["evidence_pub"] += int((evidence & occupied).sum())
            n["evidence_net"] += int((evidence & (out.occupancy > OCCUPIED_THRESHOLD)).sum())
            n["nonground"] += int(nonground.sum())
            n["nonground_pub"] += int((nonground & occupied).sum())
            n["see_through"] += int(ev.free_now.sum())
            n["see_through_pub"] += int((ev.free_now & occupied).sum())
            rec["evidence_coverage"] = float((evidence & occupied).sum() / k_ev) if k_ev else None
        if out.evidence_report is not None and out.evidence_report.disagreement is not None:
            self.disagreement.append(out.evidence_report.disagreement)
        T = None
        if out.T_odom_base is not None and np.all(np.isfinite(out.T_odom_base)):
            T = invert_transform(np.asarray(out.T_odom_base, np.float64))
        published = [tr for tr in out.tracks if tr.status != "tentative"]
        # the tracker's output before the track rule (tracking/support.py): published + withheld
        rule = getattr(out, "track_support", None)
        withheld = list(rule.withheld_tracks) if rule is not None else []
        if rule is not None:
            n["withheld_unsupported"] += len(rule.withheld_unsupported)
            n["withheld_static"] += len(rule.withheld_static)
            n["withheld_shape"] += len(rule.withheld_shape)

        def support(tr) -> bool | None:  # None: outside the grid, or nothing to judge with
            if T is None or ev is None:
                return None
            bx, by, byaw = _to_base(T, tr.x, tr.y, tr.yaw)
            cells = footprint_cells(c.grid, bx, by, byaw, tr.length, tr.width)
            return bool((ev.nonground_count[cells] > 0).any()) if cells.any() else None

        for tr in withheld:
            s = support(tr)
            if s is not None:
                n["rule_instances"] += 1
                n["rule_unsupported"] += not s
        lives = self._lives[-1]
        for tr in published:
            supported = support(tr)
            if supported is not None:
                n["track_instances"] += 1
                n["track_unsupported"] += not supported
                n["rule_instances"] += 1
                n["rule_unsupported"] += not supported
                if tr.status == "confirmed":
                    n["confirmed_instances"] += 1
                    n["confirmed_unsupported"] += not supported
            life = lives.get(tr.id)
            if life is None:
                life = lives[tr.id] = _TrackLife(t_s, t_s, tr.x, tr.y)
            life.last_s = t_s
            life.max_move = max(life.max_move, math.hypot(tr.x - life.x0, tr.y - life.y0))
            life.frames += 1
            life.supported += bool(supported)
            life.path.append((float(tr.x), float(tr.y)))
        if labels is not None and T is not None:
            self._add_labels(labels, published, T, ev, withheld)
        return rec

    def _add_labels(self, labels: list, published: list, T: np.ndarray, ev, withheld: list = ()) -> None:
        from ssm_perception.eval.mot import GroundTruthObject
        from ssm_perception.eval.tracking import in_grid

        g = self.cfg.grid
        T_odom_base = np.linalg.inv(T)
        seen, hidden = [], []
        for b in labels:
            if not in_grid(b.x, b.y, T_odom_base, g):
                continue
            uid = self._label_ids.setdefault(b.id, len(self._label_ids))
            obj = GroundTruthObject(id=uid, cls=b.cls_id, x=b.x, y=b.y, yaw=b.yaw, length=b.l, width=b.w)
            if b.num_points is not None:
                visible = b.num_points > 0
            elif ev is not None:
                bx, by, byaw = _to_base(T, b.x, b.y, b.yaw)
                visible = bool((ev.nonground_count[footprint_cells(g, bx, by, byaw, b.l, b.w, 0.0)] > 0).any())
            else:
                visible = True
            (seen if visible else hidden).append(obj)
        hyp = [GroundTruthObject(id=int(t.id), cls=int(t.cls), x=t.x, y=t.y) for t in published
               if in_grid(t.x, t.y, T_odom_base, g)]
        ego = (float(T_odom_base[0, 3]), float(T_odom_base[1, 3]))
        self.mot.update(seen, hyp, ignored_gt=hidden, ego_xy=ego)
        self.n["label_frames"] += 1
        boxes = seen + hidden
        for h in hyp:
            far = all(math.hypot(h.x - o.x, h.y - o.y) > FAR_FROM_LABELS_M for o in boxes)
            self.n["tracks_far_from_labels" if far else "tracks_near_labels"] += 1
            self.n["rule_far_from_labels" if far else "rule_near_labels"] += 1
        for t in withheld:  # before the rule: the withheld tracks were there too
            if in_grid(t.x, t.y, T_odom_base, g):
                far = all(math.hypot(t.x - o.x, t.y - o.y) > FAR_FROM_LABELS_M for o in boxes)
                self.n["rule_far_from_labels" if far else "rule_near_labels"] += 1

    def summary(self) -> dict:
        n = self.n

        def share(a: str, b: str):
            return n[a] / n[b] if n[b] else None

        lives = [life for seq in self._lives for life in seq.values()]
        static = [life for life in lives if life.last_s - life.first_s >= STATIC_MIN_S
                  and life.max_move < STATIC_MOVE_M and life.supported >= STATIC_SUPPORT * life.frames]
        out = {
            "frames": n["frames"],
            "evidence_cells": n["evidence"],
            "evidence_coverage": share("evidence_pub", "evidence"),
            "evidence_coverage_network": share("evidence_net", "evidence"),
            "nonground_cells": n["nonground"],
            "nonground_coverage": share("nonground_pub", "nonground"),
            "see_through_cells": n["see_through"],
            "free_space_contradiction_rate": share("see_through_pub", "see_through"),
            "disagreement_mean": float(np.mean(self.disagreement)) if self.disagreement else None,
            "tracks": {
                "instances_in_grid": n["track_instances"],
                "unsupported_instances": n["track_unsupported"],
                "unsupported_share": share("track_unsupported", "track_instances"),
                "confirmed_instances_in_grid": n["confirmed_instances"],
                "confirmed_unsupported_share": share("confirmed_unsupported", "confirmed_instances"),
                # the tracker's output before the track rule (published + withheld by it)
                "before_rule_instances_in_grid": n["rule_instances"],
                "before_rule_unsupported_share": share("rule_unsupported", "rule_instances"),
                "withheld_unsupported_instances": n["withheld_unsupported"],
                "withheld_static_instances": n["withheld_static"],
                "withheld_shape_instances": n["withheld_shape"],
                "ids": len(lives),
                "static_on_evidence_ids": len(static),
                "static_on_evidence_share": len(static) / len(lives) if lives else None,
            },
            "labels": None,
        }
        if self.mot is not None and self.mot.num_frames:
            far = n["tracks_far_from_labels"]
            far0 = n["rule_far_from_labels"]
            out["labels"] = {
                "frames": n["label_frames"],
                "tracking": self.mot.compute(),
                "recall_by_range": self.mot.range_breakdown(),
                "tracks_far_from_labels_share": far / (far + n["tracks_near_labels"])
                if far + n["tracks_near_labels"] else None,
                "tracks_far_from_labels_share_before_rule": far0 / (far0 + n["rule_near_labels"])
                if far0 + n["rule_near_labels"] else None,
                "tracks_compared_with_labels": far + n["tracks_near_labels"],
                "tracks_compared_with_labels_before_rule": far0 + n["rule_near_labels"],
            }
        return out

    def track_paths(self) -> list[dict[int, list]]:
        """Per sequence: {track id: [(x, y) odom, ...]} of the published tracks (pictures)."""
        return [{k: life.path for k, life in seq.items()} for seq in self._lives]


def labels_for_stamp(labels: dict[int, list] | None, stamps: np.ndarray | None, stamp_ns: int) -> list | None:
    """The label boxes annotated on this LiDAR stamp (nearest within LABEL_STAMP_TOLERANCE_NS), else None."""
    if not labels or stamps is None or stamps.size == 0:
        return None
    k = int(np.searchsorted(stamps, stamp_ns))
    best = min((j for j in (k - 1, k) if 0 <= j < stamps.size), key=lambda j: abs(int(stamps[j]) - stamp_ns))
    return labels[int(stamps[best])] if abs(int(stamps[best]) - stamp_ns) <= LABEL_STAMP_TOLERANCE_NS else None
