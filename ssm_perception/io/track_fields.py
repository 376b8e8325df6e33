"""The numbers of a msg/Track.msg, computed once for both encoders (rclpy in io/ros_convert.py, rosbags
in io/bag.py) and for the decoder of ground truth (eval/tracking.py). ROS-free.

Conventions (README, "Tracks for planners"): class labels numbered as Autoware's
ObjectClassification; velocity and its covariance in the object frame (x along the heading);
footprint corners in the object frame.
"""

from __future__ import annotations

import math
import uuid

import numpy as np

# Our classes (model heads, tracker, config: 0 unknown, 1 car, 2 truck, 3 cyclist, 4 pedestrian) ->
# msg/ObjectClassification.msg labels (Autoware's numbering).
UNKNOWN, CAR, TRUCK, BUS, TRAILER, MOTORCYCLE, BICYCLE, PEDESTRIAN = range(8)
LABEL_OF_CLASS = {0: UNKNOWN, 1: CAR, 2: TRUCK, 3: BICYCLE, 4: PEDESTRIAN}
# Labels -> our classes for decoding; the labels we never publish fold into the nearest class.
CLASS_OF_LABEL = {UNKNOWN: 0, CAR: 1, TRUCK: 2, BUS: 2, TRAILER: 2, MOTORCYCLE: 3, BICYCLE: 3, PEDESTRIAN: 4}

# Ground truth (simulator) objects have integer ids; their UUIDs are derived from them, so the same
# object keeps the same UUID in every bag.
GROUND_TRUTH_NAMESPACE = uuid.UUID("6f1c1d2e-8a53-4c55-9a49-3b8f3c2a7e10")


def ground_truth_uuid(object_id: int) -> bytes:
    return uuid.uuid5(GROUND_TRUTH_NAMESPACE, str(int(object_id))).bytes


def classification(class_probs: dict[int, float]) -> list[tuple[int, float]]:
    """{our class: probability} -> [(label, probability)], most likely first, summing to 1."""
    total = sum(p for p in class_probs.values() if p > 0)
    if total <= 0:
        return [(UNKNOWN, 1.0)]
    out: dict[int, float] = {}
    for cls, p in class_probs.items():
        if p > 0:
            label = LABEL_OF_CLASS.get(int(cls), UNKNOWN)
            out[label] = out.get(label, 0.0) + p / total
    return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))


def class_of(classification_msgs) -> int:
    """Most probable of a message's ObjectClassification list -> our class."""
    best = max(classification_msgs, key=lambda c: c.probability, default=None)
    return 0 if best is None else CLASS_OF_LABEL.get(int(best.label), 0)


def footprint(length: float, width: float) -> list[tuple[float, float]]:
    """Box corners in the object frame, counter-clockwise from front left."""
    hl, hw = 0.5 * float(length), 0.5 * float(width)
    return [(hl, hw), (-hl, hw), (-hl, -hw), (hl, -hw)]


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def twist_to_object_frame(vx: float, vy: float, yaw: float, cov: np.ndarray | None = None
                          ) -> tuple[float, float, np.ndarray]:
    """Velocity (vx, vy) and 6x6 twist covariance in the parent frame -> in the object frame (x along
    the heading ``yaw``). The covariance is rotated as J C J^T, so it stays symmetric PSD."""
    R = _rot_z(float(yaw)).T  # parent -> object
    v = R @ np.array([float(vx), float(vy), 0.0])
    c = np.zeros((6, 6)) if cov is None else np.asarray(cov, dtype=np.float64).reshape(6, 6)
    J = np.eye(6)
    J[:3, :3] = R
    c = J @ c @ J.T
    return float(v[0]), float(v[1]), 0.5 * (c + c.T)


def velocity_in_parent_frame(vx_obj: float, vy_obj: float, yaw: float) -> tuple[float, float]:
    """Inverse of twist_to_object_frame for the velocity."""
    v = _rot_z(float(yaw)) @ np.array([float(vx_obj), float(vy_obj), 0.0])
    return float(v[0]), float(v[1])
