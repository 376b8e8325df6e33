"""TfBuffer: chained, time-interpolated lookups, static edges, extrapolation limits, bad data."""

import math

import numpy as np
import pytest

from ssm_perception.geometry import make_transform, se2_matrix, yaw_of, yaw_to_quat_xyzw
from ssm_perception.tf_buffer import (
    TfBuffer,
    TfDataError,
    TfExtrapolationError,
    TfLookupError,
)

S = 1_000_000_000


def _tree() -> TfBuffer:
    """map -> odom -> base_link -> lidar_top (static), base_link -> camera (static)."""
    tf = TfBuffer(cache_s=10.0)
    tf.set_transform(se2_matrix(100.0, 0.0, 0.0), "map", "odom", 1 * S)
    for k in range(11):  # ego drives along x at 10 m/s while turning at 0.2 rad/s, 10 Hz odometry
        t = k / 10
        tf.set_transform(se2_matrix(10.0 * t, 0.0, 0.2 * t), "odom", "base_link", S + int(t * S))
    tf.set_transform(make_transform((1.0, 0.0, 1.8)), "base_link", "lidar_top", 0, static=True)
    tf.set_transform(make_transform((2.0, 0.5, 1.2), (-0.5, 0.5, -0.5, 0.5)), "base_link", "camera", 0, static=True)
    return tf


def test_chain_and_inverse():
    tf = _tree()
    T = tf.lookup("odom", "lidar_top", S + S // 2)
    expected = se2_matrix(5.0, 0.0, 0.1) @ make_transform((1.0, 0.0, 1.8))
    np.testing.assert_allclose(T, expected, atol=1e-9)
    Tinv = tf.lookup("lidar_top", "odom", S + S // 2)
    np.testing.assert_allclose(T @ Tinv, np.eye(4), atol=1e-9)
    # Sibling frames through their common parent (static only: any time works).
    Tcl = tf.lookup("camera", "lidar_top", 123)
    np.testing.assert_allclose(Tcl, np.linalg.inv(tf.lookup("base_link", "camera", 0)) @ tf.lookup("base_link", "lidar_top", 0), atol=1e-9)
    assert tf.lookup("odom", "odom", 5) is not None and np.array_equal(tf.lookup("x", "x", 5), np.eye(4))


def test_interpolation_between_samples():
    tf = TfBuffer()
    tf.set_transform(se2_matrix(0, 0, 0.0), "odom", "base_link", 0 * S + 1)
    tf.set_transform(se2_matrix(2, 4, 1.0), "odom", "base_link", S + 1)
    T = tf.lookup("odom", "base_link", S // 4 + 1)
    assert T[0, 3] == pytest.approx(0.5) and T[1, 3] == pytest.approx(1.0)
    assert yaw_of(T) == pytest.approx(0.25)


def test_latest_common_time_with_stamp_zero():
    tf = _tree()
    tf.set_transform(se2_matrix(100.0, 0.0, 0.0), "map", "odom", int(1.5 * S))
    T = tf.lookup("map", "base_link", 0)  # latest common = 1.5 s (map->odom newest), odom->base_link at 1.5
    assert T[0, 3] == pytest.approx(100.0 + 10.0 * 0.5, abs=1e-6)


def test_extrapolation_limit_and_message():
    tf = _tree()
    with pytest.raises(TfExtrapolationError, match=r"0\.500 s into the future"):
        tf.lookup("odom", "base_link", int(2.5 * S))
    with pytest.raises(TfExtrapolationError, match="into the past"):
        tf.lookup("odom", "base_link", int(0.9 * S))
    # Within the limit: constant-velocity extrapolation continues the motion.
    T = tf.lookup("odom", "base_link", int(2.05 * S), extrapolation_limit_ns=S // 10)
    assert T[0, 3] == pytest.approx(10.0 * 1.05 * math.cos(0) , rel=1e-3)
    assert yaw_of(T) == pytest.approx(0.21, abs=1e-6)
    assert not tf.can_transform("odom", "base_link", int(2.5 * S))
    assert tf.can_transform("odom", "base_link", int(2.05 * S), S // 10)


def test_unknown_and_disconnected_frames_list_known_frames():
    tf = _tree()
    with pytest.raises(TfLookupError, match="unknown") as ei:
        tf.lookup("odom", "radar_front", S)
    assert "lidar_top" in str(ei.value)
    tf.set_transform(np.eye(4), "world2", "island", S)
    with pytest.raises(TfLookupError, match="no common root"):
        tf.lookup("odom", "island", S)
    assert issubclass(TfLookupError, LookupError) and issubclass(TfExtrapolationError, TfLookupError)


def test_bad_data_is_rejected():
    tf = _tree()
    with pytest.raises(TfDataError, match="second parent"):
        tf.set_transform(np.eye(4), "map", "base_link", 2 * S)
    with pytest.raises(TfDataError, match="cycle"):
        tf.set_transform(np.eye(4), "lidar_top", "map", 2 * S)
    with pytest.raises(TfDataError, match="itself"):
        tf.set_transform(np.eye(4), "a", "a", 2 * S)
    with pytest.raises(TfDataError, match="non-finite"):
        tf.set_transform(np.full((4, 4), np.nan), "odom", "x", S)
    with pytest.raises(TfDataError, match="cannot normalize"):
        tf.set_translation_quat((0, 0, 0), (0, 0, 0, 0), "odom", "x", S)
    with pytest.raises(TfDataError, match="finite"):
        tf.set_translation_quat((0, 0, 0), (np.nan, 0, 0, 1), "odom", "x", S)
    with pytest.raises(TfDataError, match="rotation"):
        tf.set_transform(np.diag([2.0, 1.0, 1.0, 1.0]), "odom", "x", S)
    with pytest.raises(TfDataError, match="static"):
        tf.set_transform(np.eye(4), "base_link", "lidar_top", 2 * S)
    with pytest.raises(TfDataError, match="empty"):
        tf.set_transform(np.eye(4), "", "x", S)
    with pytest.raises(TfDataError, match="negative"):
        tf.set_transform(np.eye(4), "odom", "x", -5)
    assert issubclass(TfDataError, ValueError)
    # Nothing bad was stored.
    assert "x" not in tf.frames() and "a" not in tf.frames()


def test_non_normalized_quaternion_is_normalized():
    tf = TfBuffer()
    q = 3.0 * yaw_to_quat_xyzw(0.7)
    tf.set_translation_quat((1, 2, 3), q, "odom", "base_link", S)
    T = tf.lookup("odom", "base_link", S)
    assert yaw_of(T) == pytest.approx(0.7)
    np.testing.assert_allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)


def test_cache_is_bounded_and_clear_keeps_static():
    tf = TfBuffer(cache_s=1.0)
    tf.set_transform(make_transform((0, 0, 1)), "base_link", "lidar", 0, static=True)
    for k in range(1000):
        tf.set_transform(se2_matrix(k * 0.01, 0, 0), "odom", "base_link", k * S // 100)
    edge = tf._edges["base_link"]
    assert len(edge.stamps) <= 101 and edge.stamps[0] >= 9 * S - S // 100
    assert tf.set_transform(np.eye(4), "odom", "base_link", S) is False  # older than the cache
    tf.clear()
    assert tf.frames() == ["base_link", "lidar"]
    tf.set_transform(np.eye(4), "other_parent", "base_link", S)  # re-parenting allowed after clear
    assert tf.parent_of("base_link") == "other_parent"


def test_set_from_message_rclpy_and_rosbags():
    from geometry_msgs.msg import TransformStamped
    from rosbags.typesys import Stores, get_typestore

    m = TransformStamped()
    m.header.stamp.sec, m.header.stamp.nanosec = 3, 500
    m.header.frame_id, m.child_frame_id = "odom", "base_link"
    m.transform.translation.x = 1.5
    m.transform.rotation.z, m.transform.rotation.w = math.sin(0.2), math.cos(0.2)
    tf = TfBuffer()
    tf.set_from_message(m)
    T = tf.lookup("odom", "base_link", 3 * S + 500)
    assert T[0, 3] == 1.5 and yaw_of(T) == pytest.approx(0.4)

    ts = get_typestore(Stores.ROS2_KILTED)
    R = ts.types
    rb = R["geometry_msgs/msg/TransformStamped"](
        header=R["std_msgs/msg/Header"](stamp=R["builtin_interfaces/msg/Time"](sec=4, nanosec=0), frame_id="/odom"),
        child_frame_id="base_link",
        transform=R["geometry_msgs/msg/Transform"](
            translation=R["geometry_msgs/msg/Vector3"](x=2.5, y=0.0, z=0.0),
            rotation=R["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
    )
    tf.set_from_message(rb)  # leading slash is stripped, like tf2
    assert tf.lookup("odom", "base_link", int(3.75 * S))[0, 3] == pytest.approx(2.25, abs=1e-6)
    m.header.stamp.nanosec = 0
    m.transform.rotation.w = float("nan")
    with pytest.raises(TfDataError):
        tf.set_from_message(m)
