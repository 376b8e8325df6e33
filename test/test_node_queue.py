"""Issue 19 (items 2-3) inside one process: the frame queue's decisions (ready, waiting, expired with
its cause, overloaded: newest wins) and the "output" diagnostics status, without DDS timing."""

import time

import numpy as np
import pytest
import rclpy  # noqa: F401  (CI must fail, not skip, when ROS 2 did not install)
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2

from ssm_perception.geometry import make_transform, se2_matrix

pytestmark = pytest.mark.ros
S = 1_000_000_000


@pytest.fixture()
def node(rclpy_context):
    from ssm_perception.nodes.perception_node import PerceptionNode

    n = PerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter("grid.length_x", value=20.0), Parameter("grid.length_y", value=20.0),
        Parameter("model.kind", value="logodds"), Parameter("sensors.use_camera", value=False)])
    n.tf.set_transform(make_transform((1.0, 0.0, 1.8)), "base_link", "lidar_top", 0, static=True)
    yield n
    n.destroy_node()


def _frame(stamp_s: float, frame_id: str = "lidar_top", waited_s: float = 0.0):
    from ssm_perception.nodes.perception_node import _Frame

    m = PointCloud2()
    m.header.frame_id = frame_id
    return _Frame(m, np.zeros(0), int(stamp_s * S), time.monotonic() - waited_s)


def _odom(node, *stamps_s: float) -> None:
    for t in stamps_s:
        node.tf.set_transform(se2_matrix(t, 0.0, 0.0), "odom", "base_link", int(t * S))


def test_causes_are_named(node):
    from ssm_perception.nodes.perception_node import TfWaitError

    with pytest.raises(TfWaitError) as e:
        node._transforms(_frame(1.0), 0)
    assert e.value.cause == "TF missing"
    _odom(node, 1.0, 1.05)
    assert node._transforms(_frame(1.02), 0)[1][0, 3] == pytest.approx(1.02)
    with pytest.raises(TfWaitError) as e:
        node._transforms(_frame(1.5), node._tf_limit_ns)
    assert e.value.cause == "TF late" and e.value.flag == "tf_extrapolation"
    with pytest.raises(TfWaitError) as e:
        node._transforms(_frame(1.02, "nowhere"), 0)
    assert e.value.cause == "frame unknown" and e.value.flag == "tf_frame_unknown"


def test_waiting_then_expiry_names_the_cause_in_diagnostics(node):
    from ssm_perception.nodes.perception_node import ERROR

    _odom(node, 1.0, 1.05)
    wait_s = node.config.sensors.tf_wait_s
    with node._wake:
        node._queue[:] = [_frame(1.3)]  # TF reaches 1.05 only: waits
        assert node._select() is None and len(node._queue) == 1
        node._queue[0].arrived -= wait_s + 0.1  # waited too long, and 0.25 s is beyond the extrapolation limit
        assert node._select() is None and node._queue == []
    assert node.frames_dropped_tf == 1 and node.flags["tf_extrapolation"] == 1
    node._lidar_msg_wall = time.monotonic()
    node._no_output_since = time.monotonic() - node.config.diagnostics.no_output_error_s - 1.0
    out = next(s for s in node.diagnostics().status if s.name.endswith(": output"))
    level = out.level[0] if isinstance(out.level, bytes) else int(out.level)
    assert level == ERROR and "no frame produced" in out.message and "TF late" in out.message, out.message


def test_ready_frames_in_order_unless_overloaded_then_newest_wins(node):
    _odom(node, 1.0, 1.5)
    with node._wake:
        node._queue[:] = [_frame(1.1), _frame(1.2), _frame(1.3)]
        assert node._select().stamp == int(1.1 * S)  # keeping up: in order, nothing skipped
        assert node.frames_dropped_busy == 0 and [f.stamp for f in node._queue] == [int(1.2 * S), int(1.3 * S)]
        node._proc_s.extend([0.3, 0.3, 0.3])  # 300 ms per frame ...
        node._arrival_wall.extend([0.0, 0.1, 0.2, 0.3])  # ... for a LiDAR every 100 ms
        assert node.overloaded()
        assert node._select().stamp == int(1.3 * S)
        assert node.frames_dropped_busy == 1 and node._skipped == [int(1.2 * S)] and node._queue == []
