"""Rigid-body geometry shared by every module (ROS-free).

Conventions (REP-103): right-handed, x forward, y left, z up, yaw counter-clockwise.
Quaternions are stored ``(x, y, z, w)`` like geometry_msgs; transforms3d uses ``(w, x, y, z)``,
so conversion happens only here. A transform ``T_a_b`` is a 4x4 matrix that maps points
expressed in frame ``b`` into frame ``a`` (``p_a = T_a_b @ p_b``), the same meaning as a
TF lookup of target ``a`` and source ``b``.
"""

from __future__ import annotations

import math

import numpy as np
import transforms3d.quaternions as tq


def quat_xyzw_to_matrix(q) -> np.ndarray:
    """3x3 rotation from an (x, y, z, w) quaternion; normalizes, raises on zero/non-finite."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion must be 4 finite numbers, got {q!r}")
    n = float(np.linalg.norm(q))
    if n < 1e-9:
        raise ValueError("quaternion has zero norm")
    x, y, z, w = q / n
    return tq.quat2mat([w, x, y, z])


def matrix_to_quat_xyzw(r: np.ndarray) -> np.ndarray:
    w, x, y, z = tq.mat2quat(np.asarray(r, dtype=np.float64)[:3, :3])
    q = np.array([x, y, z, w])
    # Canonical sign (w >= 0) keeps serialized output deterministic.
    return -q if q[3] < 0 else q


def yaw_to_quat_xyzw(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)])


def make_transform(translation=(0.0, 0.0, 0.0), quat_xyzw=(0.0, 0.0, 0.0, 1.0)) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = quat_xyzw_to_matrix(quat_xyzw)
    t[:3, 3] = np.asarray(translation, dtype=np.float64)
    return t


def se2_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 transform of a planar pose (z = 0, roll = pitch = 0)."""
    c, s = math.cos(yaw), math.sin(yaw)
    t = np.eye(4)
    t[0, 0], t[0, 1], t[1, 0], t[1, 1] = c, -s, s, c
    t[0, 3], t[1, 3] = x, y
    return t


def invert_transform(t: np.ndarray) -> np.ndarray:
    inv = np.eye(4)
    r = t[:3, :3]
    inv[:3, :3] = r.T
    inv[:3, 3] = -r.T @ t[:3, 3]
    return inv


def yaw_of(t: np.ndarray) -> float:
    """Heading of the x axis projected on the ground plane (robust to small roll/pitch)."""
    return math.atan2(t[1, 0], t[0, 0])


def se2_from_se3(t: np.ndarray) -> tuple[float, float, float]:
    """(x, y, yaw) of a 3D transform: the planar part used by the BEV warp."""
    return float(t[0, 3]), float(t[1, 3]), yaw_of(t)


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to an [N, 3] array (float64 math, input dtype kept)."""
    p = np.asarray(points)
    out = p.astype(np.float64) @ t[:3, :3].T + t[:3, 3]
    return out.astype(p.dtype, copy=False)


def wrap_angle(a):
    """Wrap to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def slerp_xyzw(q0, q1, alpha: float) -> np.ndarray:
    """Spherical interpolation between two (x, y, z, w) quaternions, shortest path."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly identical: linear interpolation is exact enough and stable
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(1.0, d))
    s = math.sin(theta)
    return (math.sin((1 - alpha) * theta) * q0 + math.sin(alpha * theta) * q1) / s


def interpolate_transform(t0: np.ndarray, t1: np.ndarray, alpha: float) -> np.ndarray:
    """Transform at fraction ``alpha`` between two transforms (lerp translation, slerp rotation)."""
    q = slerp_xyzw(matrix_to_quat_xyzw(t0), matrix_to_quat_xyzw(t1), alpha)
    p = (1 - alpha) * t0[:3, 3] + alpha * t1[:3, 3]
    return make_transform(p, q)
