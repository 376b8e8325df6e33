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
import uuid
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from ssm_perception.config import TrackingConfig
from ssm_perception.tracking import kernels
from ssm_perception.tracking.detections import (
    VEHICLES,
    Detection,
    nonzero2,
    select_two_stage_masks,
)
from ssm_perception.tracking.kalman import (
    CTRVEKF,
    GATE_COMPONENTS,
    ConstantVelocityEKF,
    MotionNoise,
    batch_H,
    batch_h,
    batch_predict,
    batch_update,
    fold_yaw,
    yaw_index,
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
# existence_probability (P(the object is real), what the Track message publishes): a track is
# CONFIRMED only while it is at least this, whatever confirm_hits says, so a planner that keeps
# existence >= 0.5 keeps every confirmed track.
CONFIRM_EXISTENCE = 0.5
_FALSE_ALARM_IN_GATE = 0.05  # chance that clutter produces a detection inside a track's gate in one frame
_SIZE_SMOOTHING = 0.3  # weight of a new detection in the box-size running average
_STAMP_TOLERANCE_S = 1e-6  # float seconds: 1.2 - 0.9 must count as 0.3


@dataclass(slots=True)
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
    existence: float  # internal track score of the lifecycle (min_existence); see _bayes
    age_s: float
    time_since_update_s: float
    score: float
    existence_probability: float = 1.0  # P(real object), published; >= CONFIRM_EXISTENCE when confirmed
    uuid: bytes = b""  # 16 random bytes (uuid4) per track: never reused, also across resets
    class_probs: dict = field(default_factory=dict)  # {class: probability}: the summed scores, normalised

    def as_msg_dict(self) -> dict:
        """Keys of ssm_perception.io.bag.track_array_msg (z = box centre above ground)."""
        return {
            "id": self.id, "cls": self.cls, "x": self.x, "y": self.y, "z": self.height / 2.0, "yaw": self.yaw,
            "l": self.length, "w": self.width, "h": self.height, "vx": self.vx, "vy": self.vy,
            "yaw_rate": self.yaw_rate, "confidence": self.score, "status": STATUS_CODES[self.status],
            "existence": self.existence_probability, "age": self.age_s, "time_since_update": self.time_since_update_s,
            "pose_cov": self.pose_cov.reshape(36), "twist_cov": self.twist_cov.reshape(36),
            "class_probs": dict(self.class_probs) or {self.cls: 1.0}, "uuid": self.uuid,
        }


def _bayes(p, likelihood_ratio):
    """P(exists) after evidence with P(evidence | exists) / P(evidence | not) = likelihood_ratio (odds
    form; numpy arrays), capped below 1 so that misses still count.

    Two such filters run per track on the same evidence: ``existence``, started from the prior
    P_D * score, the internal score whose scale the lifecycle thresholds were tuned on
    (min_existence), and ``p_real``, started from even odds (a detection no track explains is as
    likely an object as clutter before its score is seen): the published P(real object), which also
    gates CONFIRMED. Deleting on p_real instead would need a re-tune (measured on the synthetic urban
    seeds 1000-1001 with the per-track tracker: car false positives 127 -> 387)."""
    odds = p / (1.0 - p) * likelihood_ratio
    return np.minimum(_MAX_EXISTENCE, odds / (1.0 + odds))


class _TrackView:
    """One row of the bank as a per-track object (its EKF rebuilt from the arrays): for tests and
    debugging; the tracker itself never builds these."""

    def __init__(self, bank: _Bank, i: int, models: dict[int, ClassModel]):
        self.id = int(bank.ids[i])
        self.cls = int(bank.cls()[i])
        self.status = _STATUS_NAMES[int(bank.status[i])]
        model = models.get(self.cls, models[min(models)])
        cls_ = CTRVEKF if bank.ctrv[i] else ConstantVelocityEKF
        self.kf = cls_(bank.x[i], bank.P[i], MotionNoise(bank.accel[i], bank.yaw_accel[i], bank.max_dt[i],
                                                          bank.max_pos_std[i], model.noise.max_speed))


_GATE = list(GATE_COMPONENTS)
assert _GATE == [0, 1, 2]  # x, y, yaw: the rows of h and H that select state entries (cost_matrix)
_STATUS_NAMES = ("tentative", "confirmed", "coasting")
_TENTATIVE, _CONFIRMED, _COASTING = 0, 1, 2
_NCLS = 5  # class ids 0..4 (votes are kept per class id)


class _Bank:
    """All tracks as arrays (one row per track, in id order): the filters and the lifecycle run on
    every track at once, which keeps a frame with 100+ tracks within a few milliseconds."""

    FIELDS = ("ids", "x", "P", "ctrv", "accel", "yaw_accel", "max_dt", "max_pos_std", "size", "votes", "born",
              "last", "existence", "p_real", "uuid", "hits", "status", "score_sum")

    def __init__(self):
        self.ids = np.zeros(0, np.int64)
        self.x = np.zeros((0, 5))
        self.P = np.zeros((0, 5, 5))
        self.ctrv = np.zeros(0, bool)
        self.accel = np.zeros(0)
        self.yaw_accel = np.zeros(0)
        self.max_dt = np.zeros(0)
        self.max_pos_std = np.zeros(0)
        self.size = np.zeros((0, 3))
        self.votes = np.zeros((0, _NCLS))
        self.born = np.zeros(0)
        self.last = np.zeros(0)
        self.existence = np.zeros(0)
        self.p_real = np.zeros(0)
        self.uuid = np.zeros((0, 16), np.uint8)
        self.hits = np.zeros(0, np.int64)
        self.status = np.zeros(0, np.int8)
        self.score_sum = np.zeros(0)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def keep(self, mask: np.ndarray) -> None:
        if mask.all():
            return
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f)[mask])

    def append(self, rows: dict[str, np.ndarray]) -> None:
        for f in self.FIELDS:
            setattr(self, f, np.concatenate([getattr(self, f), rows[f]]))

    def cls(self) -> np.ndarray:
        """Class of each track: the one with the largest summed detection score."""
        return self.votes.argmax(1)


class MultiObjectTracker:
    """Tracks in odom from per-frame detections in odom; see the module docstring for the cycle.

    The tracks live in one ``_Bank`` of arrays: predict, gate, update and the lifecycle are numpy
    over all tracks (kalman.batch_*: the equations of BoxEKF over a track axis), the assignment is
    scipy's Hungarian solver; the result equals the per-track loop it replaced (tested on a
    recorded 120-object sequence, test/test_tracking_vectorised.py)."""

    def __init__(self, cfg: TrackingConfig | None = None, class_models: dict[int, ClassModel] | None = None):
        self.cfg = cfg or TrackingConfig()
        kernels.warm()  # compiled (or loaded from numba's cache) now, not on the first frame
        self.models = dict(DEFAULT_CLASS_MODELS if class_models is None else class_models)
        self._ids = itertools.count(1)  # ids are never reused within one tracker's life
        # Per class id (0..4; NaN for classes without a model): motion model and noise, R's diagonal.
        self._known = np.array([c in self.models for c in range(_NCLS)])
        self._r_diag = np.full((_NCLS, 5), np.nan)
        for c, m in self.models.items():
            if 0 <= c < _NCLS:
                self._r_diag[c] = np.diag(m.R())
        # per class id: [ctrv, accel_std, yaw_accel_std, max_dt, max_pos_std, max_speed] (births in numpy)
        self._noise = np.full((_NCLS, 6), np.nan)
        for c, m in self.models.items():
            if 0 <= c < _NCLS:
                nz = m.noise
                self._noise[c] = (m.kind == "ctrv", nz.accel_std, nz.yaw_accel_std, nz.max_dt, nz.max_pos_std,
                                  nz.max_speed)
        self.reset()

    def reset(self) -> None:
        """Drop every track (ids keep counting up, so an old id never comes back with a new meaning)."""
        self._bank = _Bank()
        self._stamp: float | None = None
        self._out = (np.zeros((0, 5)), np.zeros(0, bool), [])

    @property
    def stamp(self) -> float | None:
        return self._stamp

    @property
    def _tracks(self) -> list[_TrackView]:
        return [_TrackView(self._bank, i, self.models) for i in range(len(self._bank))]

    # ------------------------------------------------------------------ public step
    def update_table(self, table: np.ndarray, cls: list[int], stamp_s: float) -> list[TrackState]:
        """``update`` with the detections (in odom) as the [n, 10] table of detections.TABLE_COLUMNS
        and their classes (``detections_to_odom_table``: what the tracking stage passes)."""
        return self.update([], stamp_s, table=(table, cls))

    def update(self, detections_in_odom: list[Detection], stamp_s: float, table=None) -> list[TrackState]:
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
        zd, zw = self._valid(detections_in_odom) if table is None else self._valid_table(*table)
        b = self._bank
        if self._stamp is not None:
            # Tracks unseen for longer than max_coast_s by now (a gap in the data) are gone before
            # association: a stale prediction must not capture a new object.
            b.keep(stamp_s - b.last <= self.cfg.max_coast_s)
            b.x, b.P = batch_predict(b.x, b.P, b.ctrv, stamp_s - self._stamp, b.accel, b.yaw_accel, b.max_dt,
                                     b.max_pos_std)
        self._stamp = stamp_s

        matches, lone_tracks, lone_dets = self._associate(zd)
        # Second stage (ByteTrack): established tracks left over try the weak detections, which an
        # occluded or distant object often still produces; they never start a track.
        kept = lone_tracks[b.status[lone_tracks] != _TENTATIVE]
        rescued = np.zeros((0, 2), np.int64)
        if zw["z"].shape[0] and kept.size:
            m2 = self._associate(zw, kept)[0]
            rescued = np.stack([kept[m2[:, 0]], m2[:, 1]], 1) if len(m2) else rescued
        self._hit(np.concatenate([matches[:, 0], rescued[:, 0]]),
                  {k: np.concatenate([v[matches[:, 1]], zw[k][rescued[:, 1]]]) for k, v in zd.items()}, stamp_s)
        missed = np.zeros(len(b), bool)
        missed[lone_tracks] = True
        missed[rescued[:, 0]] = False
        self._miss(np.flatnonzero(missed))
        self._birth({k: v[lone_dets] for k, v in zd.items()}, stamp_s)
        b.keep(~self._dead(stamp_s))
        return self.tracks()

    def tracks(self) -> list[TrackState]:
        """Live tracks, except those coasting longer than ``report_coast_s``: a prediction without
        detections drifts, so it is withheld from the planner, but it lives on (up to max_coast_s)
        so that the object keeps its id when it is detected again."""
        now = self._stamp if self._stamp is not None else 0.0
        b = self._bank
        rows = np.flatnonzero(now - b.last <= self.cfg.report_coast_s + _STAMP_TOLERANCE_S)
        return self._states(rows, now)

    # ------------------------------------------------------------------ steps
    def _valid(self, dets: list[Detection]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Detections of a known class through the detection pre-processing of SimpleTrack's
        decomposition (``select_two_stage``): finite, per-class score threshold, evidence gate,
        circle NMS. Returns (detections, weak ones for the second stage: at least
        low_score_threshold but below their class threshold, and not near a kept detection) as the
        arrays of ``_det_arrays``, in input order."""
        for d in dets:
            if d.frame != "odom":
                raise ValueError(f"MultiObjectTracker.update expects detections in odom, got {d.frame!r} "
                                 "(use detections_to_odom)")
        n = len(dets)
        # x, y, yaw, length, width, height, score, evidence (the selection's columns), then vx, vy
        a = np.array([(d.x, d.y, d.yaw, d.length, d.width, d.height, d.score, d.evidence, d.vx, d.vy) for d in dets],
                     dtype=np.float64).reshape(n, 10)
        return self._valid_table(a, [d.cls for d in dets])

    def _valid_table(self, a: np.ndarray, cls_list: list[int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``_valid`` of the detections as the [n, 10] table of detections.TABLE_COLUMNS."""
        n = a.shape[0]
        cls = np.array(cls_list, np.int64).reshape(n)
        models = self.models
        if not all(c in models for c in cls_list):
            known = np.array([c in models for c in cls_list], bool)
            a, cls = a[known], cls[known]
        strong, weak = select_two_stage_masks({"a": a[:, :8], "cls": cls}, self.cfg)
        return _rows_arrays(a, cls, strong), _rows_arrays(a, cls, weak)

    def cost_matrix(self, dets, track_rows: np.ndarray | None = None) -> np.ndarray:
        """[tracks, detections] squared Mahalanobis distances over (x, y, yaw); inf across
        incompatible classes or beyond the gate. Batched over all pairs (numpy, no Python loop).
        ``dets``: a list of Detection or the arrays of ``_det_arrays``; ``track_rows``: only these
        tracks (rows of the bank), in this order."""
        z_all = dets if isinstance(dets, dict) else _det_arrays(dets)
        b = self._bank
        x, P, ctrv, t_cls = b.x, b.P, b.ctrv, b.cls()
        if track_rows is not None:
            x, P, ctrv, t_cls = x[track_rows], P[track_rows], ctrv[track_rows], t_cls[track_rows]
        n_t, n_d = x.shape[0], z_all["z"].shape[0]
        cost = np.full((n_t, n_d), np.inf)
        if n_t == 0 or n_d == 0:
            return cost
        # h and H over (x, y, yaw) select state entries (x, y and the model's yaw index), so the
        # predicted measurement is x[:, gi] and H P H^T is the [gi, gi] block of P (exactly).
        gi = np.zeros((n_t, 3), np.int64)
        gi[:, 1] = 1
        gi[:, 2] = yaw_index(ctrv)
        ar = np.arange(n_t)[:, None]
        z_pred = x[ar, gi]  # [T, 3]
        hph = P[ar[:, :, None], gi[:, :, None], gi[:, None, :]]  # [T, 3, 3]
        z = z_all["z"][:, _GATE]  # [D, 3]
        d_cls = z_all["cls"]
        r_diag = self._r_diag[d_cls][:, _GATE]  # [D, 3]
        gate = self.cfg.gate_mahalanobis
        if kernels.available():  # the same tests and arithmetic per pair in one compiled loop
            kernels.gate_cost(np.ascontiguousarray(z_pred), np.ascontiguousarray(hph), t_cls, _is_vehicle(t_cls),
                              np.ascontiguousarray(z), np.ascontiguousarray(r_diag), d_cls, _is_vehicle(d_cls), gate,
                              cost)
            return cost
        compatible = (t_cls[:, None] == d_cls[None, :]) | (_is_vehicle(t_cls)[:, None] & _is_vehicle(d_cls)[None, :])
        # Only pairs that can be inside the gate get the 3x3 solve: for a positive definite S,
        # y_i^2 <= (y^T S^-1 y) S_ii, so |dx| or |dy| beyond sqrt(gate * S_ii) is outside it.
        dx = z[None, :, 0] - z_pred[:, 0, None]  # [T, D]
        dy = z[None, :, 1] - z_pred[:, 1, None]
        with np.errstate(invalid="ignore"):
            lim = gate * (1.0 + 1e-9)
            near = compatible & (dx * dx <= lim * (hph[:, 0, 0, None] + r_diag[None, :, 0])) \
                & (dy * dy <= lim * (hph[:, 1, 1, None] + r_diag[None, :, 1]))
        ti, di = nonzero2(near)
        if ti.size == 0:
            return cost
        y = z[di] - z_pred[ti]  # [K, 3]
        y[:, 2] = fold_yaw(y[:, 2])
        sk = hph[ti]  # [K, 3, 3], + R (diagonal)
        sk[:, [0, 1, 2], [0, 1, 2]] += r_diag[di]
        d2 = _mahalanobis3(sk, y)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(d2) & (d2 <= gate)
        cost[ti[ok], di[ok]] = d2[ok]
        return cost

    def _associate(self, z: dict, track_rows: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hungarian assignment of the detections ``z`` to the tracks (or to the tracks at
        ``track_rows``; the returned track indices then index that array). Returns (matches [M, 2]
        (track, detection), unmatched tracks, unmatched detections)."""
        n_t = len(self._bank) if track_rows is None else len(track_rows)
        n_d = z["z"].shape[0]
        none = np.zeros((0, 2), np.int64)
        if n_t == 0 or n_d == 0:
            return none, np.arange(n_t), np.arange(n_d)
        cost = self.cost_matrix(z, track_rows)
        finite = np.isfinite(cost)
        big = self.cfg.gate_mahalanobis * 10.0 + 1.0  # finite stand-in for inf (solver needs finite)
        rows, cols = linear_sum_assignment(np.where(finite, cost, big))
        good = finite[rows, cols]
        matches = np.stack([rows[good], cols[good]], 1).astype(np.int64)
        lone_t, lone_d = np.ones(n_t, bool), np.ones(n_d, bool)
        lone_t[matches[:, 0]] = False
        lone_d[matches[:, 1]] = False
        return matches, np.flatnonzero(lone_t), np.flatnonzero(lone_d)

    def _hit(self, rows: np.ndarray, z: dict, stamp: float) -> None:
        if rows.size == 0:
            return
        b = self._bank
        r_diag = self._r_diag[z["cls"]]
        if kernels.available():  # batch_update's equations in one compiled loop
            x, P = kernels.update(b.x[rows], b.P[rows], b.ctrv[rows], z["z"], r_diag)
        else:
            R = np.zeros((rows.size, 5, 5))
            R[:, range(5), range(5)] = r_diag
            x, P = batch_update(b.x[rows], b.P[rows], b.ctrv[rows], z["z"], R)
        b.x[rows], b.P[rows] = x, P
        b.size[rows] = (1 - _SIZE_SMOOTHING) * b.size[rows] + _SIZE_SMOOTHING * z["size"]
        b.votes[rows, z["cls"]] += z["score"]
        b.hits[rows] += 1
        b.score_sum[rows] += z["score"]
        b.last[rows] = stamp
        # Bayes in odds: a detection in the gate is P_D * score likely if the object exists and
        # _FALSE_ALARM_IN_GATE likely if it does not. Capped below 1 so that misses still count.
        ratio = self.cfg.detection_probability * z["score"] / _FALSE_ALARM_IN_GATE
        b.existence[rows] = _bayes(b.existence[rows], ratio)
        b.p_real[rows] = _bayes(b.p_real[rows], ratio)
        st = b.status[rows]
        promote = ((st == _COASTING) | ((st == _TENTATIVE) & (b.hits[rows] >= self.cfg.confirm_hits))) \
            & (b.p_real[rows] >= CONFIRM_EXISTENCE)
        b.status[rows] = np.where(promote, _CONFIRMED, st)

    def _miss(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        b = self._bank
        # Bayes in odds: no detection is (1 - P_D) likely if it exists, (1 - false alarm) if not.
        pd = self.cfg.detection_probability
        ratio = (1.0 - pd) / (1.0 - _FALSE_ALARM_IN_GATE)
        b.existence[rows] = _bayes(b.existence[rows], ratio)
        b.p_real[rows] = _bayes(b.p_real[rows], ratio)
        st = b.status[rows]
        b.status[rows] = np.where(st == _CONFIRMED, _COASTING, st)

    def _birth(self, z: dict, stamp: float) -> None:
        n = z["z"].shape[0]
        if n == 0:
            return
        x, P, noise = _initial_states(z["z"], self._r_diag[z["cls"]], self._noise[z["cls"]])
        votes = np.zeros((n, _NCLS))
        votes[np.arange(n), z["cls"]] = z["score"]
        p_real = _bayes(np.full(n, 0.5), self.cfg.detection_probability * z["score"] / _FALSE_ALARM_IN_GATE)
        self._bank.append({
            "ids": np.array([next(self._ids) for _ in range(n)], np.int64), "x": x, "P": P,
            "ctrv": noise[:, 0] > 0.5, "accel": noise[:, 1], "yaw_accel": noise[:, 2], "max_dt": noise[:, 3],
            "max_pos_std": noise[:, 4], "size": z["size"].copy(), "votes": votes,
            "born": np.full(n, stamp), "last": np.full(n, stamp),
            "existence": self.cfg.detection_probability * z["score"], "p_real": p_real,
            "uuid": np.frombuffer(b"".join(uuid.uuid4().bytes for _ in range(n)), np.uint8).reshape(n, 16),
            "hits": np.ones(n, np.int64),
            "status": np.where((self.cfg.confirm_hits <= 1) & (p_real >= CONFIRM_EXISTENCE), _CONFIRMED,
                               _TENTATIVE).astype(np.int8),
            "score_sum": z["score"].copy(),
        })

    def _dead(self, now: float) -> np.ndarray:
        b = self._bank
        broken = ~(np.isfinite(b.x).all(1) & np.isfinite(b.P).all((1, 2)))  # never published
        tentative = b.status == _TENTATIVE
        stale = (now - b.last > self.cfg.max_coast_s) | (b.existence < self.cfg.min_existence)
        return broken | np.where(tentative, b.last < now, stale)  # a tentative track must be seen every frame

    # ------------------------------------------------------------------ output
    def output_table(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The tracks the last ``update`` / ``tracks`` returned, as the track rule reads them: ([n, 5]
        x, y, yaw, length, width; [n] tentative; ids), the same values as their TrackState fields."""
        return self._out

    def _states(self, rows: np.ndarray, now: float) -> list[TrackState]:
        if rows.size == 0:
            self._out = (np.zeros((0, 5)), np.zeros(0, bool), [])
            return []
        b = self._bank
        x, P, ctrv = b.x[rows], b.P[rows], b.ctrv[rows]
        n = rows.size
        yi = yaw_index(ctrv)
        if kernels.available():  # the same entries in one compiled loop
            pose_cov, twist_cov, vel = kernels.track_outputs(x, P, ctrv, UNOBSERVED_VAR)
        else:
            pos_idx = np.stack([np.zeros(n, int), np.ones(n, int), yi], 1)  # [n, 3]
            pose_cov = np.broadcast_to(np.diag([UNOBSERVED_VAR] * 6), (n, 6, 6)).copy()
            pose_cov[:, np.array(_POSE_XY_YAW)[:, None], np.array(_POSE_XY_YAW)[None, :]] = \
                P[np.arange(n)[:, None, None], pos_idx[:, :, None], pos_idx[:, None, :]]
            vel = batch_h(x, ctrv)[:, 3:5]
            Hv = batch_H(x, ctrv)[:, 3:5]
            v_cov = Hv @ P @ Hv.transpose(0, 2, 1)
            twist_cov = np.broadcast_to(np.diag([UNOBSERVED_VAR] * 6), (n, 6, 6)).copy()
            twist_cov[:, :2, :2] = v_cov
            twist_cov[ctrv, 5, 5] = P[ctrv, 4, 4]
        w = np.where(ctrv, x[:, 4], 0.0)
        votes = b.votes[rows]
        yaw = x[np.arange(n), yi]
        cols = np.stack([x[:, 0], x[:, 1], yaw, vel[:, 0], vel[:, 1], w, b.size[rows, 0], b.size[rows, 1],
                         b.size[rows, 2], b.existence[rows], now - b.born[rows], now - b.last[rows],
                         b.score_sum[rows] / b.hits[rows], b.p_real[rows]]).tolist()  # [14][n] Python floats
        ids = b.ids[rows].tolist()
        st_codes = b.status[rows]
        # what the track rule reads of these tracks, as arrays (output_table)
        self._out = (np.stack([x[:, 0], x[:, 1], yaw, b.size[rows, 0], b.size[rows, 1]], 1), st_codes == _TENTATIVE, ids)
        probs = votes / np.maximum(votes.sum(1, keepdims=True), 1e-12)
        # {class: p} of the classes with p > 0, in class order (Python floats); most tracks have one
        # class, whose dict is made from its (class, p) pair directly
        top = votes.argmax(1)
        one = (probs > 0).sum(1) == 1
        p_top = probs[np.arange(n), top].tolist()
        class_probs = [{c: p} if o else {c: p for c, p in enumerate(row) if p > 0}
                       for c, p, o, row in zip(top.tolist(), p_top, one.tolist(), probs.tolist(), strict=True)]
        status = [_STATUS_NAMES[st] for st in st_codes.tolist()]
        uuids = b.uuid[rows].view("V16").ravel().tolist()  # 16 bytes each
        # positional, in TrackState's field order (map: the one Python step per track is the constructor)
        return list(map(TrackState, ids, top.tolist(), status, *cols[:9],
                        list(pose_cov), list(twist_cov), cols[9], cols[10], cols[11], cols[12], cols[13], uuids,
                        class_probs))


def _is_vehicle(cls: np.ndarray) -> np.ndarray:
    out = np.zeros(cls.shape, bool)
    for v in VEHICLES:
        out |= cls == v
    return out


def _det_arrays(dets: list[Detection]) -> dict[str, np.ndarray]:
    """Detections as arrays: z [D, 5] (x, y, yaw, vx, vy), cls [D], score [D], size [D, 3]."""
    n = len(dets)
    a = np.array([(d.x, d.y, d.yaw, d.vx, d.vy, d.length, d.width, d.height, d.score) for d in dets],
                 dtype=np.float64).reshape(n, 9)
    return {"z": a[:, :5], "size": a[:, 5:8], "score": a[:, 8], "cls": np.array([d.cls for d in dets], np.int64)}


def _rows_arrays(a: np.ndarray, cls: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``mask`` of the [n, 10] detection table of ``_valid`` as ``_det_arrays`` returns them."""
    m = a[mask]
    return {"z": m[:, [0, 1, 2, 8, 9]], "size": m[:, 3:6], "score": m[:, 6], "cls": cls[mask]}


def _mahalanobis3(S: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y^T S^-1 y for [K, 3, 3] symmetric S and [K, 3] y, by the adjugate (a few vector operations
    instead of a batched LAPACK solve; equal to it within rounding); inf or NaN for a singular S."""
    a, b, c = S[:, 0, 0], S[:, 0, 1], S[:, 0, 2]
    d, e, f = S[:, 1, 1], S[:, 1, 2], S[:, 2, 2]
    A, B, C = d * f - e * e, c * e - b * f, b * e - c * d
    D, E, F = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * A + b * B + c * C
    y0, y1, y2 = y[:, 0], y[:, 1], y[:, 2]
    q = y0 * y0 * A + y1 * y1 * D + y2 * y2 * F + 2.0 * (y0 * y1 * B + y0 * y2 * C + y1 * y2 * E)
    with np.errstate(divide="ignore", invalid="ignore"):
        return q / det


def _initial_states(z: np.ndarray, r: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_filter`` (ConstantVelocityEKF / CTRVEKF.from_measurement) for every new track at once:
    (x [n, 5], P [n, 5, 5], noise). ``r``: the diagonal of R per detection; ``noise``: the class's
    row of ``MultiObjectTracker._noise``. cos/sin from math, as from_measurement."""
    n = z.shape[0]
    ctrv, v_max2 = noise[:, 0] > 0.5, noise[:, 5] ** 2
    has_v = np.isfinite(z[:, 3]) & np.isfinite(z[:, 4])
    x, d = np.zeros((n, 5)), np.zeros((n, 5))
    # CV: [x, y, vx, vy, yaw], variances [R00, R11, R33 | v_max^2, R44 | v_max^2, R22]
    x[:, 0], x[:, 1] = z[:, 0], z[:, 1]
    x[:, 2], x[:, 3], x[:, 4] = np.where(has_v, z[:, 3], 0.0), np.where(has_v, z[:, 4], 0.0), z[:, 2]
    d[:, 0], d[:, 1], d[:, 4] = r[:, 0], r[:, 1], r[:, 2]
    d[:, 2], d[:, 3] = np.where(has_v, r[:, 3], v_max2), np.where(has_v, r[:, 4], v_max2)
    if ctrv.any():
        # CTRV: [x, y, yaw, v, 0]; v along the heading, the heading flipped when v < 0; variances
        # [R00, R11, R22, max(R33, R44) | v_max^2, 0.5^2]
        yaw = z[ctrv, 2]
        hv = has_v[ctrv]
        cs = np.array([(math.cos(a), math.sin(a)) for a in yaw.tolist()]).reshape(-1, 2)
        with np.errstate(invalid="ignore"):
            v = z[ctrv, 3] * cs[:, 0] + z[ctrv, 4] * cs[:, 1]
            flip = hv & (v < 0.0)
        yaw = np.where(flip, _wrap_angle(yaw + math.pi), yaw)
        v = np.where(hv, np.where(flip, -v, v), 0.0)
        rc = r[ctrv]
        x[ctrv, 2], x[ctrv, 3], x[ctrv, 4] = yaw, v, 0.0
        d[ctrv, 2] = rc[:, 2]
        d[ctrv, 3] = np.where(hv, np.maximum(rc[:, 3], rc[:, 4]), v_max2[ctrv])
        d[ctrv, 4] = 0.5**2  # yaw rate prior: |w| mostly < 0.5 rad/s
    P = np.zeros((n, 5, 5))
    P[:, range(5), range(5)] = d
    return x, P, noise


def _wrap_angle(a: np.ndarray) -> np.ndarray:
    return (a + math.pi) % (2 * math.pi) - math.pi
