"""Multi-object tracker in odom: per-class EKFs, Hungarian assignment, track lifecycle.

One ``update`` per LiDAR frame:

    predict every track to the frame stamp
      -> cost = squared Mahalanobis distance (x, y, yaw; chi2 3 dof) between tracks and detections,
         infinite across incompatible classes or outside the gate
      -> scipy's Hungarian solver (linear_sum_assignment)
      -> matched: EKF update;  unmatched tracks: miss;  unmatched detections: new tentative tracks
      -> lifecycle: tentative --(confirm_hits hits)--> confirmed --(miss)--> coasting --(hit)--> confirmed
                    tentative --(miss)--> deleted;  coasting --(max_coast_s or existence < min)--> deleted

The tracker does not care where detections come from: the learned heads (temporal state) and an
AB3DMOT-style single-frame detector feed the same tracker, so comparing the two isolates the
detection source (see scripts/eval_tracking.py --detections).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from ssm_perception.config import TrackingConfig
from ssm_perception.tracking.detections import VEHICLES, Detection, select_two_stage
from ssm_perception.tracking.kalman import (
    GATE_COMPONENTS,
    BoxEKF,
    MotionNoise,
    fold_yaw,
    make_filter,
)

Status = Literal["tentative", "confirmed", "coasting"]
STATUS_CODES = {"tentative": 0, "confirmed": 1, "coasting": 2}  # msg/Track.msg STATUS_*

# Variance reported for quantities the tracker does not estimate (z, roll, pitch, vz, ...): large,
# so no consumer mistakes them for measured.
UNOBSERVED_VAR = 1.0e4
_POSE_XY_YAW = [0, 1, 5]  # rows of x, y, rot z in the 6x6 pose covariance


@dataclass(frozen=True)
class ClassModel:
    """Motion model, process noise and detection noise (1-sigma) for one object class."""

    kind: Literal["cv", "ctrv"]
    noise: MotionNoise
    pos_std: float  # [m]
    yaw_std: float  # [rad]
    vel_std: float  # [m/s] per axis

    def R(self) -> np.ndarray:
        """5x5 measurement covariance for z = [x, y, yaw, vx, vy]."""
        return np.diag([self.pos_std**2, self.pos_std**2, self.yaw_std**2, self.vel_std**2, self.vel_std**2])


# Vehicles and cyclists move along their heading (CTRV); pedestrians and unknowns turn on the spot
# (CV). Noise levels are typical for a 0.5 m BEV grid at 10 Hz.
DEFAULT_CLASS_MODELS: dict[int, ClassModel] = {
    0: ClassModel("cv", MotionNoise(accel_std=3.0, yaw_accel_std=1.0), 0.5, 1.0, 1.0),
    1: ClassModel("ctrv", MotionNoise(accel_std=3.0, yaw_accel_std=1.0), 0.3, 0.15, 0.6),
    2: ClassModel("ctrv", MotionNoise(accel_std=2.0, yaw_accel_std=0.6), 0.5, 0.12, 0.8),
    3: ClassModel("ctrv", MotionNoise(accel_std=2.0, yaw_accel_std=2.0), 0.3, 0.3, 0.6),
    4: ClassModel("cv", MotionNoise(accel_std=1.5, yaw_accel_std=1.0), 0.25, 1.0, 0.5),
}

_MAX_EXISTENCE = 0.999
_FALSE_ALARM_IN_GATE = 0.05  # chance that clutter produces a detection inside a track's gate in one frame
_SIZE_SMOOTHING = 0.3  # weight of a new detection in the box-size running average
_STAMP_TOLERANCE_S = 1e-6  # float seconds: 1.2 - 0.9 must count as 0.3


@dataclass
class TrackState:
    """One track as handed to the planner/ROS message (odom frame)."""

    id: int
    cls: int
    status: Status
    x: float
    y: float
    yaw: float
    vx: float
    vy: float
    yaw_rate: float
    length: float
    width: float
    height: float
    pose_cov: np.ndarray  # [6, 6] row-major (x, y, z, rot x, rot y, rot z)
    twist_cov: np.ndarray  # [6, 6] (vx, vy, vz, wx, wy, wz)
    existence: float
    age_s: float
    time_since_update_s: float
    score: float

    def as_msg_dict(self) -> dict:
        """Keys of ssm_perception.io.bag.track_array_msg (z = box centre above ground)."""
        return {
            "id": self.id, "cls": self.cls, "x": self.x, "y": self.y, "z": self.height / 2.0, "yaw": self.yaw,
            "l": self.length, "w": self.width, "h": self.height, "vx": self.vx, "vy": self.vy,
            "yaw_rate": self.yaw_rate, "confidence": self.score, "status": STATUS_CODES[self.status],
            "existence": self.existence, "age": self.age_s, "time_since_update": self.time_since_update_s,
            "pose_cov": self.pose_cov.reshape(36), "twist_cov": self.twist_cov.reshape(36),
        }


@dataclass
class _Track:
    id: int
    kf: BoxEKF
    size: np.ndarray  # [3] length, width, height
    class_votes: dict[int, float]
    born_s: float
    last_update_s: float
    existence: float
    hits: int = 1
    status: Status = "tentative"
    score_sum: float = 0.0

    @property
    def cls(self) -> int:
        return max(self.class_votes, key=self.class_votes.get)


class MultiObjectTracker:
    """Tracks in odom from per-frame detections in odom; see the module docstring for the cycle."""

    def __init__(self, cfg: TrackingConfig | None = None, class_models: dict[int, ClassModel] | None = None):
        self.cfg = cfg or TrackingConfig()
        self.models = dict(DEFAULT_CLASS_MODELS if class_models is None else class_models)
        self._ids = itertools.count(1)  # ids are never reused within one tracker's life
        self.reset()

    def reset(self) -> None:
        """Drop every track (ids keep counting up, so an old id never comes back with a new meaning)."""
        self._tracks: list[_Track] = []
        self._stamp: float | None = None

    @property
    def stamp(self) -> float | None:
        return self._stamp

    # ------------------------------------------------------------------ public step
    def update(self, detections_in_odom: list[Detection], stamp_s: float) -> list[TrackState]:
        """Advance to ``stamp_s`` and absorb the detections; returns all live tracks (any status).

        Bad input is absorbed, not raised: non-finite detections are dropped; a repeated stamp
        (dt == 0) or a slightly older one (out of order) leaves the tracks untouched; a jump back
        in time beyond max_coast_s (a bag replayed from the start) resets the tracker.
        """
        if not math.isfinite(stamp_s):
            return self.tracks()
        if self._stamp is not None:
            dt = stamp_s - self._stamp
            if dt == 0.0 or (dt < 0.0 and -dt <= self.cfg.max_coast_s):
                return self.tracks()
            if dt < 0.0:
                self.reset()
        dets, weak = self._valid(detections_in_odom)
        if self._stamp is not None:
            # Tracks unseen for longer than max_coast_s by now (a gap in the data) are gone before
            # association: a stale prediction must not capture a new object.
            self._tracks = [t for t in self._tracks if stamp_s - t.last_update_s <= self.cfg.max_coast_s]
            dt = stamp_s - self._stamp
            for t in self._tracks:
                t.kf.predict(dt)
        self._stamp = stamp_s

        matches, lone_tracks, lone_dets = self._associate(dets)
        for ti, di in matches:
            self._hit(self._tracks[ti], dets[di], stamp_s)
        # Second stage (ByteTrack): established tracks left over try the weak detections, which an
        # occluded or distant object often still produces; they never start a track.
        kept = [ti for ti in lone_tracks if self._tracks[ti].status != "tentative"]
        rescued: set[int] = set()
        if weak and kept:
            for k, di in self._associate(weak, kept)[0]:
                self._hit(self._tracks[kept[k]], weak[di], stamp_s)
                rescued.add(kept[k])
        for ti in lone_tracks:
            if ti not in rescued:
                self._miss(self._tracks[ti])
        for di in lone_dets:
            self._birth(dets[di], stamp_s)
        self._tracks = [t for t in self._tracks if not self._dead(t, stamp_s)]
        return self.tracks()

    def tracks(self) -> list[TrackState]:
        """Live tracks, except those coasting longer than ``report_coast_s``: a prediction without
        detections drifts, so it is withheld from the planner, but it lives on (up to max_coast_s)
        so that the object keeps its id when it is detected again."""
        now = self._stamp if self._stamp is not None else 0.0
        return [self._state(t, now) for t in sorted(self._tracks, key=lambda t: t.id)
                if now - t.last_update_s <= self.cfg.report_coast_s + _STAMP_TOLERANCE_S]

    # ------------------------------------------------------------------ steps
    def _valid(self, dets: list[Detection]) -> tuple[list[Detection], list[Detection]]:
        """Detections of a known class through the detection pre-processing of SimpleTrack's
        decomposition (``select_detections``): finite, per-class score threshold, evidence gate,
        circle NMS. Returns (detections, weak ones for the second stage: at least
        low_score_threshold but below their class threshold, and not near a kept detection)."""
        out = []
        for d in dets:
            if d.frame != "odom":
                raise ValueError(f"MultiObjectTracker.update expects detections in odom, got {d.frame!r} "
                                 "(use detections_to_odom)")
            if d.cls in self.models:
                out.append(d)
        return select_two_stage(out, self.cfg)

    def _measurement(self, d: Detection) -> np.ndarray:
        return np.array([d.x, d.y, d.yaw, d.vx, d.vy], dtype=np.float64)  # NaN velocity = not measured

    def cost_matrix(self, dets: list[Detection]) -> np.ndarray:
        """[tracks, detections] squared Mahalanobis distances over (x, y, yaw); inf across
        incompatible classes or beyond the gate. Batched over all pairs (numpy, no Python pair loop)."""
        n_t, n_d = len(self._tracks), len(dets)
        cost = np.full((n_t, n_d), np.inf)
        if n_t == 0 or n_d == 0:
            return cost
        gi = list(GATE_COMPONENTS)
        pred = [t.kf.gate_prediction() for t in self._tracks]
        z_pred = np.stack([p[0] for p in pred])  # [T, 3]
        hph = np.stack([p[1] for p in pred])  # [T, 3, 3]
        z = np.array([[d.x, d.y, d.yaw] for d in dets])  # [D, 3]
        r = np.stack([self.models[d.cls].R()[np.ix_(gi, gi)] for d in dets])  # [D, 3, 3]
        y = z[None, :, :] - z_pred[:, None, :]  # [T, D, 3]
        y[..., 2] = fold_yaw(y[..., 2])
        s = hph[:, None] + r[None, :]  # [T, D, 3, 3]
        d2 = np.einsum("tdi,tdi->td", y, np.linalg.solve(s, y[..., None])[..., 0])
        t_cls = np.array([t.cls for t in self._tracks])
        d_cls = np.array([d.cls for d in dets])
        compatible = (t_cls[:, None] == d_cls[None, :]) | (
            np.isin(t_cls, VEHICLES)[:, None] & np.isin(d_cls, VEHICLES)[None, :])
        ok = compatible & np.isfinite(d2) & (d2 <= self.cfg.gate_mahalanobis)
        cost[ok] = d2[ok]
        return cost

    def _associate(self, dets: list[Detection], track_rows: list[int] | None = None
                   ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Hungarian assignment of ``dets`` to the tracks (or to the tracks at ``track_rows``; the
        returned track indices then index that list)."""
        n_t = len(self._tracks) if track_rows is None else len(track_rows)
        n_d = len(dets)
        if n_t == 0 or n_d == 0:
            return [], list(range(n_t)), list(range(n_d))
        cost = self.cost_matrix(dets)
        if track_rows is not None:
            cost = cost[track_rows]
        big = self.cfg.gate_mahalanobis * 10.0 + 1.0  # finite stand-in for inf (solver needs finite)
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, big))
        matches = [(int(r), int(c)) for r, c in zip(rows, cols) if np.isfinite(cost[r, c])]
        mt = {r for r, _ in matches}
        md = {c for _, c in matches}
        return matches, [i for i in range(n_t) if i not in mt], [j for j in range(n_d) if j not in md]

    def _hit(self, t: _Track, d: Detection, stamp: float) -> None:
        t.kf.update(self._measurement(d), self.models[d.cls].R())
        t.size = (1 - _SIZE_SMOOTHING) * t.size + _SIZE_SMOOTHING * np.array([d.length, d.width, d.height])
        t.class_votes[d.cls] = t.class_votes.get(d.cls, 0.0) + d.score
        t.hits += 1
        t.score_sum += d.score
        t.last_update_s = stamp
        # Bayes in odds: a detection in the gate is P_D * score likely if the object exists and
        # _FALSE_ALARM_IN_GATE likely if it does not. Capped below 1 so that misses still count.
        odds = t.existence / (1.0 - t.existence) * self.cfg.detection_probability * d.score / _FALSE_ALARM_IN_GATE
        t.existence = min(_MAX_EXISTENCE, odds / (1.0 + odds))
        if t.status == "coasting" or (t.status == "tentative" and t.hits >= self.cfg.confirm_hits):
            t.status = "confirmed"

    def _miss(self, t: _Track) -> None:
        # Bayes in odds: no detection is (1 - P_D) likely if it exists, (1 - false alarm) if not.
        pd = self.cfg.detection_probability
        odds = t.existence / (1.0 - t.existence) * (1.0 - pd) / (1.0 - _FALSE_ALARM_IN_GATE)
        t.existence = odds / (1.0 + odds)
        if t.status == "confirmed":
            t.status = "coasting"

    def _birth(self, d: Detection, stamp: float) -> None:
        model = self.models[d.cls]
        kf = make_filter(model.kind, self._measurement(d), model.R(), model.noise)
        t = _Track(
            id=next(self._ids), kf=kf, size=np.array([d.length, d.width, d.height]),
            class_votes={d.cls: d.score}, born_s=stamp, last_update_s=stamp,
            existence=self.cfg.detection_probability * d.score, score_sum=d.score,
        )
        if self.cfg.confirm_hits <= 1:
            t.status = "confirmed"
        self._tracks.append(t)

    def _dead(self, t: _Track, now: float) -> bool:
        if not (np.all(np.isfinite(t.kf.x)) and np.all(np.isfinite(t.kf.P))):
            return True  # a numerically broken filter is dropped, never published
        if t.status == "tentative":
            return t.last_update_s < now  # a tentative track must be seen every frame
        return now - t.last_update_s > self.cfg.max_coast_s or t.existence < self.cfg.min_existence

    # ------------------------------------------------------------------ output
    def _state(self, t: _Track, now: float) -> TrackState:
        kf = t.kf
        pos_idx = [0, 1, kf.yaw_index]
        pose_cov = np.diag([UNOBSERVED_VAR] * 6)
        pose_cov[np.ix_(_POSE_XY_YAW, _POSE_XY_YAW)] = kf.P[np.ix_(pos_idx, pos_idx)]
        v, v_cov = kf.velocity()
        w, w_var = kf.yaw_rate()
        twist_cov = np.diag([UNOBSERVED_VAR] * 6)
        twist_cov[:2, :2] = v_cov
        if math.isfinite(w_var):
            twist_cov[5, 5] = w_var
        return TrackState(
            id=t.id, cls=t.cls, status=t.status, x=float(kf.x[0]), y=float(kf.x[1]), yaw=kf.yaw,
            vx=float(v[0]), vy=float(v[1]), yaw_rate=w, length=float(t.size[0]), width=float(t.size[1]),
            height=float(t.size[2]), pose_cov=pose_cov, twist_cov=twist_cov, existence=float(t.existence),
            age_s=now - t.born_s, time_since_update_s=now - t.last_update_s, score=t.score_sum / t.hits,
        )
