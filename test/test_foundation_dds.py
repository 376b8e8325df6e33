"""Issue 3: our own interface messages and standard types cross process boundaries over Fast DDS."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy  # CI must fail, not skip, when ROS 2 did not install
from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2, PointField
from ssm_perception.msg import ObjectClassification, Track, TrackArray
from tf2_msgs.msg import TFMessage

pytestmark = pytest.mark.ros
QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
PEER = Path(__file__).with_name("dds_peer.py")


def _track_array() -> TrackArray:
    msg = TrackArray()
    msg.header.frame_id = "odom"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    for i in range(3):
        t = Track()
        t.header = msg.header
        t.object_id.uuid = np.arange(16, dtype=np.uint8) + i  # 16 bytes must survive
        t.track_number = 2**40 + i  # uint64
        label = ObjectClassification.PEDESTRIAN if i == 2 else ObjectClassification.CAR
        t.classification = [ObjectClassification(label=label, probability=0.8),
                            ObjectClassification(label=ObjectClassification.UNKNOWN, probability=0.2)]
        t.status = Track.STATUS_CONFIRMED
        t.existence_probability = 0.25 * (i + 1)
        t.pose.pose.position.x, t.pose.pose.position.y = 10.0 + i, -3.5 * i
        t.pose.pose.orientation.z, t.pose.pose.orientation.w = 0.38268343, 0.92387953
        t.twist.twist.linear.x = 4.0 - i
        t.shape.dimensions.x, t.shape.dimensions.y, t.shape.dimensions.z = 4.5, 1.9, 1.6
        t.pose.covariance = np.arange(36, dtype=np.float64) * (i + 1)
        t.twist.covariance = np.eye(6).ravel() * 0.5
        msg.tracks.append(t)
    return msg


def _cloud(n: int = 5000) -> tuple[PointCloud2, np.ndarray]:
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])
    rng = np.random.default_rng(0)
    pts = np.zeros(n, dtype=dtype)
    for f in ("x", "y", "z", "intensity"):
        pts[f] = rng.normal(size=n).astype(np.float32)
    pts["ring"] = rng.integers(0, 32, size=n)
    msg = PointCloud2()
    msg.header.frame_id = "lidar_top"
    msg.height, msg.width = 1, n
    msg.fields = [
        PointField(name=name, offset=dtype.fields[name][1], datatype=dt, count=1)
        for name, dt in (("x", 7), ("y", 7), ("z", 7), ("intensity", 7), ("ring", 4))
    ]
    msg.is_bigendian = False
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * n
    msg.data = pts.tobytes()
    msg.is_dense = True
    return msg, pts


def _tf() -> TFMessage:
    msg = TFMessage()
    for parent, child, x in (("map", "odom", 1.0), ("odom", "base_link", 2.5)):
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = parent, child
        t.header.stamp.sec = 42
        t.transform.translation.x = x
        t.transform.rotation.z, t.transform.rotation.w = 0.70710678, 0.70710678
        msg.transforms.append(t)
    return msg


@pytest.fixture()
def peer():
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(PEER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "peer ready" in line, f"echo peer failed to start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_messages_cross_process_boundaries(peer):
    assert os.environ["ROS_DOMAIN_ID"]  # set per run by conftest
    rclpy.init()
    node = Node("dds_test_client")
    try:
        received: dict[str, object] = {}
        sent = {"tracks": _track_array(), "tf": _tf()}
        cloud_msg, cloud_pts = _cloud()
        sent["cloud"] = cloud_msg
        pubs = {}
        for name, typ in (("tracks", TrackArray), ("cloud", PointCloud2), ("tf", TFMessage)):
            pubs[name] = node.create_publisher(typ, f"/test/{name}_in", QOS)
            node.create_subscription(typ, f"/test/{name}_out", lambda m, k=name: received.setdefault(k, m), QOS)
        deadline = time.monotonic() + 30.0
        while len(received) < 3 and time.monotonic() < deadline:
            for name, pub in pubs.items():  # keep publishing until discovery completes and echoes arrive
                if name not in received:
                    pub.publish(sent[name])
            rclpy.spin_once(node, timeout_sec=0.2)
        assert set(received) == {"tracks", "cloud", "tf"}, f"only received {sorted(received)} within 30 s"

        got = received["tracks"]
        assert got.header.frame_id == "odom" and got.header.stamp.nanosec == 123456789
        assert [t.track_number for t in got.tracks] == [2**40, 2**40 + 1, 2**40 + 2]
        assert bytes(got.tracks[1].object_id.uuid) == bytes(range(1, 17))
        assert got.tracks[2].classification[0].label == ObjectClassification.PEDESTRIAN
        assert got.tracks[2].classification[1].probability == pytest.approx(0.2)
        np.testing.assert_array_equal(got.tracks[1].pose.covariance, np.arange(36) * 2.0)
        assert got.tracks[0].shape.dimensions.x == pytest.approx(4.5)
        assert got.tracks[2].existence_probability == pytest.approx(0.75)

        got = received["cloud"]
        assert (got.width, got.point_step, [f.name for f in got.fields]) == (
            cloud_msg.width, cloud_msg.point_step, ["x", "y", "z", "intensity", "ring"])
        echoed = np.frombuffer(bytes(got.data), dtype=cloud_pts.dtype)
        np.testing.assert_array_equal(echoed, cloud_pts)

        got = received["tf"]
        assert [(t.header.frame_id, t.child_frame_id) for t in got.transforms] == [("map", "odom"), ("odom", "base_link")]
        assert got.transforms[1].transform.translation.x == pytest.approx(2.5)
        assert got.transforms[0].transform.rotation.w == pytest.approx(0.70710678)
    finally:
        node.destroy_node()
        rclpy.shutdown()


def test_tf_message_type_matches_upstream_ros2():
    """Our locally built tf2_msgs must hash like upstream so /tf interoperates with real ROS 2 peers."""
    import json

    # rosidl writes the type hash it computed into the installed type description.
    desc = Path(sys.prefix) / "share" / "tf2_msgs" / "msg" / "TFMessage.json"
    hashes = {d["type_name"]: d["hash_string"] for d in json.loads(desc.read_text())["type_hashes"]}
    assert hashes["tf2_msgs/msg/TFMessage"] == (
        "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087")
