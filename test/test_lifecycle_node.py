"""Issue 18: the managed (lifecycle) perception node, driven over DDS through ~/change_state as a
lifecycle manager (nav2, Autoware) does: configure, activate, deactivate, cleanup, shutdown."""

import sys
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_helpers import TEST_OVERRIDES, Listener, Proc, reliable, wait_for, write_params

pytestmark = pytest.mark.ros
NODE = "/ssm_perception"


def _state(listener, timeout: float = 30.0) -> int:
    return listener.call(GetState, f"{NODE}/get_state", GetState.Request(), timeout).current_state.id


def _transition(listener, transition_id: int) -> bool:
    req = ChangeState.Request()
    req.transition.id = transition_id
    return listener.call(ChangeState, f"{NODE}/change_state", req, timeout=120.0).success


def _has_reset_service(listener) -> bool:
    return any(name == f"{NODE}/reset" for name, _ in listener.node.get_service_names_and_types())


def test_lifecycle_transitions_over_dds(tmp_path):
    params = write_params(tmp_path / "params.yaml", {**TEST_OVERRIDES, "model.kind": "logodds",
                                                    "diagnostics.period_s": 0.2})
    node = Proc([sys.executable, "-m", "ssm_perception.nodes.lifecycle_node", "--ros-args",
                 "--params-file", str(params)], tmp_path / "node.log")
    listener = Listener("lifecycle_manager")
    try:
        listener.subscribe("/diagnostics", DiagnosticArray, reliable(10))
        # the first answer waits for the process to start (imports take long on a loaded machine)
        assert _state(listener, timeout=180.0) == State.PRIMARY_STATE_UNCONFIGURED
        assert not _has_reset_service(listener)

        assert _transition(listener, Transition.TRANSITION_CONFIGURE)
        assert _state(listener) == State.PRIMARY_STATE_INACTIVE
        wait_for(lambda: _has_reset_service(listener), 10.0, "~/reset after configure", node)
        time.sleep(1.0)  # 5 diagnostics periods: none may come while inactive
        assert listener.get("/diagnostics") == []

        assert _transition(listener, Transition.TRANSITION_ACTIVATE)
        assert _state(listener) == State.PRIMARY_STATE_ACTIVE
        wait_for(lambda: len(listener.get("/diagnostics")) >= 2, 20.0, "/diagnostics while active", node)
        assert listener.call_trigger(f"{NODE}/reset", timeout=30.0).success

        assert _transition(listener, Transition.TRANSITION_DEACTIVATE)
        assert _state(listener) == State.PRIMARY_STATE_INACTIVE
        time.sleep(0.5)  # let a message in flight arrive
        n = len(listener.get("/diagnostics"))
        time.sleep(1.0)
        assert len(listener.get("/diagnostics")) == n, "diagnostics kept coming while inactive"

        assert _transition(listener, Transition.TRANSITION_CLEANUP)
        assert _state(listener) == State.PRIMARY_STATE_UNCONFIGURED
        wait_for(lambda: not _has_reset_service(listener), 10.0, "~/reset gone after cleanup", node)

        # configure again after cleanup: a fresh pipeline, then shut down from inactive
        assert _transition(listener, Transition.TRANSITION_CONFIGURE)
        assert _state(listener) == State.PRIMARY_STATE_INACTIVE
        assert _transition(listener, Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert _state(listener) == State.PRIMARY_STATE_FINALIZED
        assert node.alive()
    finally:
        listener.close()
        rc = node.stop()
    out = node.output()
    assert rc == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_inactive_node_drops_frames_active_node_takes_them(rclpy_context):
    """In process: LiDAR messages reach the frame step only while active; cleanup frees the pipeline
    and a second configure builds a new one."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2

    from ssm_perception.nodes.lifecycle_node import ManagedPerceptionNode

    node = ManagedPerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter("model.kind", value="logodds"), Parameter("grid.length_x", value=20.0),
        Parameter("grid.length_y", value=20.0), Parameter("sensors.use_camera", value=False)])
    try:
        assert not hasattr(node, "pipeline")  # unconfigured: nothing built yet
        node.trigger_configure()
        first = node.pipeline
        msg = PointCloud2()
        msg.header.stamp.sec = 1
        node._on_lidar(msg)
        assert node.frames_dropped_inactive == 1 and node.stats["lidar"].received == 0
        assert node.stats["lidar"].rejected == 0
        node.trigger_activate()
        node._on_lidar(msg)  # reaches the node's own LiDAR callback (an empty cloud: rejected there)
        assert node.frames_dropped_inactive == 1
        assert node.stats["lidar"].received + node.stats["lidar"].rejected == 1
        node.trigger_deactivate()
        node.trigger_cleanup()
        assert not hasattr(node, "pipeline") and not hasattr(node, "pub_tracks")
        node.trigger_configure()
        assert node.pipeline is not first
    finally:
        node.destroy_node()
