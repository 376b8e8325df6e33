"""Issues 6 and 11: bad input on every topic keeps the node alive with a diagnostics flag, and an
invalid configuration stops it at start with a one-line reason naming the field."""

import math
import time

import numpy as np
import pytest
import rclpy  # noqa: F401  (CI must fail, not skip, when ROS 2 did not install)
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import (
    DIAGNOSTICS,
    Listener,
    Proc,
    diag_flags,
    diag_level,
    diag_values,
    reliable,
    running_node,
    wait_for,
    write_params,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from tf2_msgs.msg import TFMessage

pytestmark = pytest.mark.ros


def _now(listener):
    return listener.node.get_clock().now().to_msg()


def _cloud(stamp, frame="lidar_top", n=100, point_step=16, truncate=0, datatype=7):
    m = PointCloud2()
    m.header.stamp, m.header.frame_id = stamp, frame
    m.height, m.width = 1, n
    m.fields = [PointField(name=c, offset=4 * i, datatype=datatype, count=1) for i, c in enumerate("xyz")]
    m.fields.append(PointField(name="intensity", offset=12, datatype=7, count=1))
    m.point_step, m.row_step = point_step, point_step * n
    m.data = np.zeros(max(point_step * n - truncate, 0), dtype=np.uint8).tobytes()
    m.is_dense = True
    return m


def _bad_inputs(lis):
    """(topic, message, expected flag) for every input topic."""
    now = _now(lis)
    far = _now(lis)
    far.sec += 3600
    zero = _now(lis)
    zero.sec, zero.nanosec = 0, 0
    img = Image()
    img.header.stamp, img.header.frame_id = now, "camera_front_optical"
    img.height, img.width, img.encoding, img.step = 4, 4, "no_such_encoding", 12
    img.data = bytes(48)
    short = Image()
    short.header = img.header
    short.height, short.width, short.encoding, short.step = 4, 4, "rgb8", 12
    short.data = bytes(10)  # step * height = 48 bytes expected
    info = CameraInfo()
    info.header = img.header
    info.width, info.height = 640, 384  # K all zeros: degenerate
    tf = TFMessage()
    t = TransformStamped()
    t.header.stamp, t.header.frame_id, t.child_frame_id = now, "odom", "base_link"
    t.transform.rotation.x = math.nan
    tf.transforms = [t]
    return [
        ("/sensing/lidar/points", _cloud(now, truncate=7), "lidar_malformed"),
        ("/sensing/lidar/points", _cloud(now, point_step=8), "lidar_malformed"),
        ("/sensing/lidar/points", _cloud(far), "lidar_stamp_future"),
        ("/sensing/lidar/points", _cloud(zero), "lidar_stamp_zero"),
        ("/sensing/lidar/points", _cloud(now), "tf_missing"),  # well formed, but no TF at all
        ("/sensing/radar/points", _cloud(now, frame="radar_front", datatype=42), "radar_malformed"),
        ("/sensing/camera/front/image_raw", img, "camera_image_malformed"),
        ("/sensing/camera/front/image_raw", short, "camera_image_malformed"),
        ("/sensing/camera/front/camera_info", info, "camera_info_malformed"),
        ("/tf", tf, "tf_malformed"),
    ]


def test_malformed_messages_on_every_input_keep_the_node_alive(tmp_path):
    lis = Listener("fault_injector", {DIAGNOSTICS: DiagnosticArray})
    with running_node(tmp_path, lis, {"sensors.use_camera": True}, use_sim_time=False) as node:
        pubs = {}
        for topic, typ in (("/sensing/lidar/points", PointCloud2), ("/sensing/radar/points", PointCloud2),
                           ("/sensing/camera/front/image_raw", Image),
                           ("/sensing/camera/front/camera_info", CameraInfo)):
            pubs[topic] = lis.node.create_publisher(typ, topic, qos_profile_sensor_data)
        pubs["/tf"] = lis.node.create_publisher(TFMessage, "/tf", reliable())
        wait_for(lambda: lis.get(DIAGNOSTICS), 40, "diagnostics from the node", node)
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 20, "node subscriptions", node)

        expected = set()
        for topic, msg, flag in _bad_inputs(lis):
            expected.add(flag)
            for _ in range(3):  # best effort: repeat so that a single loss does not matter
                pubs[topic].publish(msg)
                time.sleep(0.05)

        def flags():
            for arr in reversed(lis.get(DIAGNOSTICS)):
                if diag_values(arr, ": input"):
                    return set(diag_flags(arr))
            return set()

        wait_for(lambda: expected <= flags(), 20, f"flags {sorted(expected)}", node)
        last = lis.get(DIAGNOSTICS)[-1]
        assert diag_level(last, ": input") == 1  # WARN while problems are recent
        assert node.alive(), node.output()
        # Every problem logged with its flag name; a flood is throttled to one line per flag.
        out = node.output()
        for flag in expected:
            assert f"[{flag}]" in out
        assert out.count("[lidar_malformed]") == 1
    assert node.stop() == 0, node.output()


@pytest.mark.parametrize("bad, field", [
    ({"grid.resolution": -0.5}, "grid.resolution"),
    ({"grid.lenght_x": 10.0}, "grid.lenght_x"),  # a typo is an error, not a silent default
    ({"model.device": "gpu"}, "model.device"),
])
def test_invalid_config_file_exits_with_a_one_line_reason(tmp_path, bad, field):
    import yaml

    from ssm_perception.nodes.launcher import node_command

    params = write_params(tmp_path / "ok.yaml")
    data = yaml.safe_load(params.read_text())
    data["ssm_perception"]["ros__parameters"].update(bad)
    params.write_text(yaml.safe_dump(data))
    proc = Proc(node_command(params), tmp_path / "node.log")
    rc = proc.wait(30)
    lines = [ln for ln in proc.output().splitlines() if ln.strip()]
    assert rc == 2
    assert len(lines) == 1 and field in lines[0] and "invalid configuration" in lines[0], lines


def test_invalid_parameter_override_exits_with_a_one_line_reason(tmp_path):
    from ssm_perception.nodes.launcher import node_command

    cmd = node_command(write_params(tmp_path / "ok.yaml")) + ["-p", "reset.max_time_gap_s:=-1.0"]
    proc = Proc(cmd, tmp_path / "node.log")
    rc = proc.wait(60)
    lines = [ln for ln in proc.output().splitlines() if ln.strip()]
    assert rc == 2
    assert len(lines) == 1 and "reset.max_time_gap_s" in lines[0], lines


def test_parameter_file_with_other_nodes_is_accepted(tmp_path):
    """Only this node's sections are validated: a vehicle-wide file may configure other nodes too."""
    from ssm_perception.config import ConfigError
    from ssm_perception.nodes.perception_node import validate_params_file

    f = tmp_path / "vehicle.yaml"
    f.write_text("other_node:\n  ros__parameters:\n    anything: 1\n"
                 "/**:\n  ros__parameters:\n    use_sim_time: true\n"
                 "/vehicle/ssm_perception:\n  ros__parameters:\n    grid:\n      resolution: 0.25\n")
    validate_params_file(f)
    f.write_text(f.read_text().replace("resolution: 0.25", "resolution: -0.25"))
    with pytest.raises(ConfigError, match="grid.resolution"):
        validate_params_file(f)
