"""Extended Kalman filters for one tracked object in odom: constant velocity and constant turn rate.

Both models share one measurement, a detected box: z = [x, y, yaw, vx, vy] (velocity components
may be missing). The heading of a box is ambiguous by pi for many detectors, so yaw innovations
are folded into [-pi/2, pi/2): a flipped box pulls the heading, it does not spin it around.

    CV   state [x, y, vx, vy, yaw]      yaw is a random walk (used for the box only)
    CTRV state [x, y, yaw, v, yaw_rate] vehicles and cyclists, whose velocity follows the heading

Written out by hand (filterpy is unmaintained and has no CTRV); the Jacobians are analytic and
checked against finite differences in the tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ssm_perception.tracking import kernels

# z = [x, y, yaw, vx, vy]
MEAS_DIM = 5
IDX_YAW_MEAS = 2
# Gating uses position and heading (3 dof): velocity from a single detection is too noisy to gate on.
GATE_COMPONENTS = (0, 1, 2)


def fold_yaw(a):
    """Wrap to [-pi/2, pi/2): headings differing by pi are the same box (floats or arrays)."""
    return (a + math.pi / 2) % math.pi - math.pi / 2


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


@dataclass(frozen=True)
class MotionNoise:
    """Per-class process noise and covariance limits."""

    accel_std: float  # longitudinal (CTRV) or per-axis (CV) acceleration [m/s^2]
    yaw_accel_std: float  # CTRV: yaw acceleration [rad/s^2]; CV: heading random walk [rad/sqrt(s)]
    max_dt: float = 2.0  # predictions longer than this use max_dt: the model is not trusted beyond
    max_pos_std: float = 30.0  # position covariance is capped here (a coasting track never explodes)
    max_speed: float = 40.0  # initial velocity uncertainty when a detection carries none [m/s]


class BoxEKF(ABC):
    """Common EKF machinery; subclasses provide f, F, Q, h, H and the state layout."""

    kind: Literal["cv", "ctrv"]
    dim: int
    pos_idx = (0, 1)
    _yaw_idx: int

    def __init__(self, x: np.ndarray, P: np.ndarray, noise: MotionNoise):
        self.x = np.asarray(x, dtype=np.float64).copy()
        self.P = np.asarray(P, dtype=np.float64).copy()
        self.noise = noise

    # ------------------------------------------------------------------ model (subclasses)
    @abstractmethod
    def _f(self, x: np.ndarray, dt: float) -> np.ndarray: ...

    @abstractmethod
    def _F(self, x: np.ndarray, dt: float) -> np.ndarray: ...

    @abstractmethod
    def _Q(self, x: np.ndarray, dt: float) -> np.ndarray: ...

    @abstractmethod
    def _h(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _H(self, x: np.ndarray) -> np.ndarray: ...

    # ------------------------------------------------------------------ outputs
    @property
    def yaw_index(self) -> int:
        return self._yaw_idx

    @property
    def yaw(self) -> float:
        return float(self.x[self._yaw_idx])

    def velocity(self) -> tuple[np.ndarray, np.ndarray]:
        """(vx, vy) over ground and its 2x2 covariance."""
        hz = self._h(self.x)
        Hv = self._H(self.x)[3:5]
        return hz[3:5].copy(), Hv @ self.P @ Hv.T

    def yaw_rate(self) -> tuple[float, float]:
        """(yaw rate, variance); (0, nan) when the model does not estimate it."""
        return 0.0, math.nan

    # ------------------------------------------------------------------ filter steps
    def predict(self, dt: float) -> bool:
        """Propagate by dt seconds. Returns False (and changes nothing) for dt <= 0 or non-finite."""
        if not math.isfinite(dt) or dt <= 0.0:
            return False
        dt = min(dt, self.noise.max_dt)
        F = self._F(self.x, dt)
        self.x = self._f(self.x, dt)
        self.x[self._yaw_idx] = _wrap(self.x[self._yaw_idx])
        self.P = F @ self.P @ F.T + self._Q(self.x, dt)
        self._cap_covariance()
        return True

    def _cap_covariance(self) -> None:
        # Scale the position block (with its correlations) so that no std exceeds max_pos_std:
        # long coasting keeps a sane, positive-definite covariance.
        self.P = 0.5 * (self.P + self.P.T)
        var = np.array([self.P[i, i] for i in self.pos_idx])
        limit = self.noise.max_pos_std**2
        if np.any(var > limit):
            scale = np.ones(self.dim)
            for i, v in zip(self.pos_idx, var):
                if v > limit:
                    scale[i] = math.sqrt(limit / v)
            self.P = self.P * np.outer(scale, scale)

    def innovation(self, z: np.ndarray, R: np.ndarray, components=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y, S, H) for the finite measurement components (optionally a subset of them)."""
        y, S, H, _ = self._innovation(z, R, components)
        return y, S, H

    def _innovation(self, z, R, components=None):
        z = np.asarray(z, dtype=np.float64)
        use = np.isfinite(z)
        if components is not None:
            mask = np.zeros(MEAS_DIM, dtype=bool)
            mask[list(components)] = True
            use &= mask
        idx = np.flatnonzero(use)
        H = self._H(self.x)[idx]
        y = z[idx] - self._h(self.x)[idx]
        yaw_pos = np.flatnonzero(idx == IDX_YAW_MEAS)
        y[yaw_pos] = fold_yaw(y[yaw_pos])
        Rs = np.asarray(R, dtype=np.float64)[idx][:, idx]
        return y, H @ self.P @ H.T + Rs, H, Rs

    def mahalanobis(self, z: np.ndarray, R: np.ndarray, components=GATE_COMPONENTS) -> float:
        """Squared Mahalanobis distance of a measurement (default: x, y, yaw -> chi2 with 3 dof)."""
        y, S, _ = self.innovation(z, R, components)
        if y.size == 0:
            return math.inf
        try:
            return float(y @ np.linalg.solve(S, y))
        except np.linalg.LinAlgError:
            return math.inf

    def update(self, z: np.ndarray, R: np.ndarray) -> bool:
        """Correct with a box measurement; NaN components are skipped. False if nothing usable."""
        y, S, H, Rs = self._innovation(z, R)
        if y.size == 0:
            return False
        K = np.linalg.solve(S, H @ self.P).T  # P H^T S^-1 (S symmetric)
        self.x = self.x + K @ y
        self.x[self._yaw_idx] = _wrap(self.x[self._yaw_idx])
        IKH = np.eye(self.dim) - K @ H
        self.P = IKH @ self.P @ IKH.T + K @ Rs @ K.T  # Joseph form: stays symmetric PSD
        self.P = 0.5 * (self.P + self.P.T)
        return True


class ConstantVelocityEKF(BoxEKF):
    """State [x, y, vx, vy, yaw]; linear, so the 'E' is only the yaw fold."""

    kind = "cv"
    dim = 5
    _yaw_idx = 4

    @classmethod
    def from_measurement(cls, z: np.ndarray, R: np.ndarray, noise: MotionNoise) -> ConstantVelocityEKF:
        z = np.asarray(z, dtype=np.float64)
        has_v = bool(np.all(np.isfinite(z[3:5])))
        x = np.array([z[0], z[1], z[3] if has_v else 0.0, z[4] if has_v else 0.0, z[2]])
        P = np.diag([R[0, 0], R[1, 1], R[3, 3] if has_v else noise.max_speed**2,
                     R[4, 4] if has_v else noise.max_speed**2, R[2, 2]])
        return cls(x, P, noise)

    def _f(self, x, dt):
        return np.array([x[0] + x[2] * dt, x[1] + x[3] * dt, x[2], x[3], x[4]])

    def _F(self, x, dt):
        F = np.eye(5)
        F[0, 2] = F[1, 3] = dt
        return F

    def _Q(self, x, dt):
        q = self.noise.accel_std**2
        Q = np.zeros((5, 5))
        for p, v in ((0, 2), (1, 3)):  # discrete white-acceleration model per axis
            Q[p, p] = dt**4 / 4 * q
            Q[p, v] = Q[v, p] = dt**3 / 2 * q
            Q[v, v] = dt**2 * q
        Q[4, 4] = self.noise.yaw_accel_std**2 * dt
        return Q

    def _h(self, x):
        return np.array([x[0], x[1], x[4], x[2], x[3]])

    def _H(self, x):
        H = np.zeros((MEAS_DIM, 5))
        H[0, 0] = H[1, 1] = H[2, 4] = H[3, 2] = H[4, 3] = 1.0
        return H


class CTRVEKF(BoxEKF):
    """State [x, y, yaw, v, yaw_rate]: constant speed along a circle (straight line when yaw_rate ~ 0)."""

    kind = "ctrv"
    dim = 5
    _yaw_idx = 2
    _EPS_W = 1e-4  # below this yaw rate a series expansion replaces v / w (no 0/0)

    @classmethod
    def from_measurement(cls, z: np.ndarray, R: np.ndarray, noise: MotionNoise) -> CTRVEKF:
        z = np.asarray(z, dtype=np.float64)
        yaw = z[2]
        if np.all(np.isfinite(z[3:5])):
            v = z[3] * math.cos(yaw) + z[4] * math.sin(yaw)
            if v < 0.0:  # box heading flipped w.r.t. the motion: trust the motion
                yaw, v = _wrap(yaw + math.pi), -v
            v_var = max(R[3, 3], R[4, 4])
        else:
            v, v_var = 0.0, noise.max_speed**2
        x = np.array([z[0], z[1], yaw, v, 0.0])
        P = np.diag([R[0, 0], R[1, 1], R[2, 2], v_var, 0.5**2])  # yaw rate prior: |w| mostly < 0.5 rad/s
        return cls(x, P, noise)

    def yaw_rate(self) -> tuple[float, float]:
        return float(self.x[4]), float(self.P[4, 4])

    def _f(self, x, dt):
        px, py, yaw, v, w = x
        if abs(w) > self._EPS_W:
            px = px + v / w * (math.sin(yaw + w * dt) - math.sin(yaw))
            py = py + v / w * (math.cos(yaw) - math.cos(yaw + w * dt))
        else:  # second-order expansion in w: continuous with the circle and differentiable in w
            px = px + v * dt * math.cos(yaw) - 0.5 * v * w * dt**2 * math.sin(yaw)
            py = py + v * dt * math.sin(yaw) + 0.5 * v * w * dt**2 * math.cos(yaw)
        return np.array([px, py, yaw + w * dt, v, w])

    def _F(self, x, dt):
        _, _, yaw, v, w = x
        F = np.eye(5)
        F[2, 4] = dt
        if abs(w) > self._EPS_W:
            s0, c0 = math.sin(yaw), math.cos(yaw)
            s1, c1 = math.sin(yaw + w * dt), math.cos(yaw + w * dt)
            F[0, 2] = v / w * (c1 - c0)
            F[0, 3] = (s1 - s0) / w
            F[0, 4] = v / w**2 * (s0 - s1) + v * dt * c1 / w
            F[1, 2] = v / w * (s1 - s0)
            F[1, 3] = (c0 - c1) / w
            F[1, 4] = v / w**2 * (c1 - c0) + v * dt * s1 / w
        else:
            s0, c0 = math.sin(yaw), math.cos(yaw)
            F[0, 2] = -v * dt * s0 - 0.5 * v * w * dt**2 * c0
            F[0, 3] = dt * c0 - 0.5 * w * dt**2 * s0
            F[0, 4] = -0.5 * v * dt**2 * s0
            F[1, 2] = v * dt * c0 - 0.5 * v * w * dt**2 * s0
            F[1, 3] = dt * s0 + 0.5 * w * dt**2 * c0
            F[1, 4] = 0.5 * v * dt**2 * c0
        return F

    def _Q(self, x, dt):
        yaw = x[2]
        G = np.array([  # noise inputs: longitudinal acceleration, yaw acceleration
            [0.5 * dt**2 * math.cos(yaw), 0.0],
            [0.5 * dt**2 * math.sin(yaw), 0.0],
            [0.0, 0.5 * dt**2],
            [dt, 0.0],
            [0.0, dt],
        ])
        Q = G @ np.diag([self.noise.accel_std**2, self.noise.yaw_accel_std**2]) @ G.T
        # A little lateral slack: real vehicles drift off a perfect circle.
        lat = 0.5 * dt**2 * self.noise.accel_std * 0.3
        Q[0, 0] += (lat * math.sin(yaw)) ** 2
        Q[1, 1] += (lat * math.cos(yaw)) ** 2
        return Q

    def _h(self, x):
        _, _, yaw, v, _ = x
        return np.array([x[0], x[1], yaw, v * math.cos(yaw), v * math.sin(yaw)])

    def _H(self, x):
        _, _, yaw, v, _ = x
        H = np.zeros((MEAS_DIM, 5))
        H[0, 0] = H[1, 1] = H[2, 2] = 1.0
        H[3, 2], H[3, 3] = -v * math.sin(yaw), math.cos(yaw)
        H[4, 2], H[4, 3] = v * math.cos(yaw), math.sin(yaw)
        return H


def make_filter(kind: Literal["cv", "ctrv"], z: np.ndarray, R: np.ndarray, noise: MotionNoise) -> BoxEKF:
    if kind == "cv":
        return ConstantVelocityEKF.from_measurement(z, R, noise)
    if kind == "ctrv":
        return CTRVEKF.from_measurement(z, R, noise)
    raise ValueError(f"unknown motion model {kind!r} (expected 'cv' or 'ctrv')")


# ---------------------------------------------------------------------------------------- batched
# The same filters over many tracks at once (the tracker keeps its tracks as arrays: tracker.py).
# Each function is the per-track method above, written over a leading track axis, so a bank of
# tracks follows exactly the equations of BoxEKF (checked against it in the tests); ``ctrv`` [T]
# bool says which rows are CTRV (the others are CV).
_CV_H = np.zeros((MEAS_DIM, 5))
_CV_H[0, 0] = _CV_H[1, 1] = _CV_H[2, 4] = _CV_H[3, 2] = _CV_H[4, 3] = 1.0
_CV_MEAS_ORDER = [0, 1, 4, 2, 3]  # h(x) of CV: [x, y, yaw, vx, vy]


def _wrap_array(a: np.ndarray) -> np.ndarray:
    return (a + math.pi) % (2 * math.pi) - math.pi


def yaw_index(ctrv: np.ndarray) -> np.ndarray:
    return np.where(ctrv, CTRVEKF._yaw_idx, ConstantVelocityEKF._yaw_idx)


def batch_h(x: np.ndarray, ctrv: np.ndarray) -> np.ndarray:
    """[T, 5] states -> [T, 5] predicted measurements [x, y, yaw, vx, vy]."""
    out = x[:, _CV_MEAS_ORDER].copy()
    if ctrv.any():
        yaw, v = x[ctrv, 2], x[ctrv, 3]
        out[ctrv] = np.stack([x[ctrv, 0], x[ctrv, 1], yaw, v * np.cos(yaw), v * np.sin(yaw)], 1)
    return out


def batch_H(x: np.ndarray, ctrv: np.ndarray) -> np.ndarray:
    """[T, 5] states -> [T, 5, 5] measurement Jacobians."""
    H = np.broadcast_to(_CV_H, (x.shape[0], MEAS_DIM, 5)).copy()
    if ctrv.any():
        yaw, v = x[ctrv, 2], x[ctrv, 3]
        Hc = np.zeros((int(ctrv.sum()), MEAS_DIM, 5))
        Hc[:, 0, 0] = Hc[:, 1, 1] = Hc[:, 2, 2] = 1.0
        Hc[:, 3, 2], Hc[:, 3, 3] = -v * np.sin(yaw), np.cos(yaw)
        Hc[:, 4, 2], Hc[:, 4, 3] = v * np.cos(yaw), np.sin(yaw)
        H[ctrv] = Hc
    return H


def _ctrv_predict(x: np.ndarray, dt: np.ndarray, accel: np.ndarray, yaw_accel: np.ndarray):
    """CTRV rows: (new x [N, 5], F [N, 5, 5], Q [N, 5, 5]) as CTRVEKF._f/_F/_Q (Q at the new state)."""
    px, py, yaw, v, w = x.T
    n = x.shape[0]
    turning = np.abs(w) > CTRVEKF._EPS_W
    ws = np.where(turning, w, 1.0)
    s0, c0 = np.sin(yaw), np.cos(yaw)
    s1, c1 = np.sin(yaw + w * dt), np.cos(yaw + w * dt)
    nx = np.empty_like(x)
    nx[:, 0] = np.where(turning, px + v / ws * (s1 - s0), px + v * dt * c0 - 0.5 * v * w * dt**2 * s0)
    nx[:, 1] = np.where(turning, py + v / ws * (c0 - c1), py + v * dt * s0 + 0.5 * v * w * dt**2 * c0)
    nx[:, 2] = yaw + w * dt
    nx[:, 3] = v
    nx[:, 4] = w
    F = np.broadcast_to(np.eye(5), (n, 5, 5)).copy()
    F[:, 2, 4] = dt
    F[:, 0, 2] = np.where(turning, v / ws * (c1 - c0), -v * dt * s0 - 0.5 * v * w * dt**2 * c0)
    F[:, 0, 3] = np.where(turning, (s1 - s0) / ws, dt * c0 - 0.5 * w * dt**2 * s0)
    F[:, 0, 4] = np.where(turning, v / ws**2 * (s0 - s1) + v * dt * c1 / ws, -0.5 * v * dt**2 * s0)
    F[:, 1, 2] = np.where(turning, v / ws * (s1 - s0), v * dt * c0 - 0.5 * v * w * dt**2 * s0)
    F[:, 1, 3] = np.where(turning, (c0 - c1) / ws, dt * s0 + 0.5 * w * dt**2 * c0)
    F[:, 1, 4] = np.where(turning, v / ws**2 * (c1 - c0) + v * dt * s1 / ws, 0.5 * v * dt**2 * c0)
    nx[:, 2] = _wrap_array(nx[:, 2])
    yq = nx[:, 2]  # Q is evaluated at the predicted state, as in BoxEKF.predict
    G = np.zeros((n, 5, 2))
    G[:, 0, 0] = 0.5 * dt**2 * np.cos(yq)
    G[:, 1, 0] = 0.5 * dt**2 * np.sin(yq)
    G[:, 2, 1] = 0.5 * dt**2
    G[:, 3, 0] = dt
    G[:, 4, 1] = dt
    q = np.zeros((n, 2, 2))
    q[:, 0, 0], q[:, 1, 1] = accel**2, yaw_accel**2
    Q = G @ q @ G.transpose(0, 2, 1)
    lat = 0.5 * dt**2 * accel * 0.3
    Q[:, 0, 0] += (lat * np.sin(yq)) ** 2
    Q[:, 1, 1] += (lat * np.cos(yq)) ** 2
    return nx, F, Q


def _cv_predict(x: np.ndarray, dt: np.ndarray, accel: np.ndarray, yaw_accel: np.ndarray):
    n = x.shape[0]
    nx = x.copy()
    nx[:, 0] = x[:, 0] + x[:, 2] * dt
    nx[:, 1] = x[:, 1] + x[:, 3] * dt
    nx[:, 4] = _wrap_array(x[:, 4])
    F = np.broadcast_to(np.eye(5), (n, 5, 5)).copy()
    F[:, 0, 2] = F[:, 1, 3] = dt
    q = accel**2
    Q = np.zeros((n, 5, 5))
    for p, v in ((0, 2), (1, 3)):
        Q[:, p, p] = dt**4 / 4 * q
        Q[:, p, v] = Q[:, v, p] = dt**3 / 2 * q
        Q[:, v, v] = dt**2 * q
    Q[:, 4, 4] = yaw_accel**2 * dt
    return nx, F, Q


def batch_predict(x: np.ndarray, P: np.ndarray, ctrv: np.ndarray, dt: float, accel: np.ndarray,
                  yaw_accel: np.ndarray, max_dt: np.ndarray, max_pos_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BoxEKF.predict for every row (same dt; nothing changes for dt <= 0 or non-finite)."""
    if x.shape[0] == 0 or not math.isfinite(dt) or dt <= 0.0:
        return x, P
    if kernels.available():  # the same equations in one compiled loop (tracking/kernels.py)
        return kernels.predict(x, P, ctrv, dt, accel, yaw_accel, max_dt, max_pos_std)
    d = np.minimum(dt, max_dt)
    nx, F, Q = np.empty_like(x), np.empty_like(P), np.empty_like(P)
    for rows, fn in ((ctrv, _ctrv_predict), (~ctrv, _cv_predict)):
        if rows.any():
            nx[rows], F[rows], Q[rows] = fn(x[rows], d[rows], accel[rows], yaw_accel[rows])
    P = F @ P @ F.transpose(0, 2, 1) + Q
    return nx, cap_covariance(P, max_pos_std)


def cap_covariance(P: np.ndarray, max_pos_std: np.ndarray) -> np.ndarray:
    """BoxEKF._cap_covariance for every row (the position block of both models is rows 0 and 1)."""
    P = 0.5 * (P + P.transpose(0, 2, 1))
    var = P[:, [0, 1], [0, 1]]  # [T, 2]
    limit = (max_pos_std**2)[:, None]
    over = var > limit
    if over.any():
        scale = np.ones((P.shape[0], 5))
        scale[:, :2] = np.where(over, np.sqrt(limit / np.where(over, var, 1.0)), 1.0)
        P = P * (scale[:, :, None] * scale[:, None, :])
    return P


def batch_update(x: np.ndarray, P: np.ndarray, ctrv: np.ndarray, z: np.ndarray, R: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """BoxEKF.update for every row with its own measurement z [T, 5] (NaN components skipped) and
    R [T, 5, 5]: rows are grouped by which components they have, each group solved at once (h and
    H evaluated once for all rows; the common case, every component, without regrouping).
    (kernels.update: the same for a diagonal R in one compiled loop; the tracker calls that one.)"""
    x, P = x.copy(), P.copy()
    use_all = np.isfinite(z)
    hz, H = batch_h(x, ctrv), batch_H(x, ctrv)
    if use_all.all():
        groups = [(slice(None), np.arange(MEAS_DIM))]
    else:
        keys = np.packbits(use_all, axis=1)[:, 0]
        groups = []
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            groups.append((rows, np.flatnonzero(use_all[rows[0]])))
    for rows, idx in groups:
        if idx.size == 0:
            continue
        every = idx.size == MEAS_DIM
        xr, Pr, cr = x[rows], P[rows], ctrv[rows]
        Hg = H[rows] if every else H[rows][:, idx]  # [G, m, 5]
        y = z[rows] - hz[rows] if every else z[rows][:, idx] - hz[rows][:, idx]
        yaw_pos = np.flatnonzero(idx == IDX_YAW_MEAS)
        y[:, yaw_pos] = fold_yaw(y[:, yaw_pos])
        Rs = R[rows] if every else R[rows][:, idx][:, :, idx]
        HP = Hg @ Pr
        S = HP @ Hg.transpose(0, 2, 1) + Rs
        K = np.linalg.solve(S, HP).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
        xr = xr + (K @ y[:, :, None])[:, :, 0]
        n = xr.shape[0]
        yi = yaw_index(cr)
        xr[np.arange(n), yi] = _wrap_array(xr[np.arange(n), yi])
        IKH = np.eye(5) - K @ Hg
        Pr = IKH @ Pr @ IKH.transpose(0, 2, 1) + K @ Rs @ K.transpose(0, 2, 1)
        x[rows], P[rows] = xr, 0.5 * (Pr + Pr.transpose(0, 2, 1))
    return x, P
