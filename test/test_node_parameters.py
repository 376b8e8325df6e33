"""Issue 18: one ParameterDescriptor per parameter, generated from the configuration schema, seen over
DDS by `describe_parameters`; runtime changes validated by the schema, restart-only ones read-only."""

import pytest
import rclpy  # noqa: F401  (CI must fail, not skip, when ROS 2 did not install)
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import DescribeParameters, SetParameters
from rclpy.parameter import Parameter
from ros_helpers import Listener, running_node

from ssm_perception.config import PerceptionConfig
from ssm_perception.nodes import parameters
from ssm_perception.nodes.perception_node import PerceptionNode

pytestmark = pytest.mark.ros

SCHEMA_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def test_descriptors_follow_the_schema():
    descs = parameters.descriptors()
    flat = PerceptionConfig().to_ros_parameters()
    assert set(descs) == set(flat)
    assert len({id(d) for d in descs.values()}) == len(descs), "descriptor objects are shared"
    for name, d in descs.items():
        assert d.name == name and d.description
        assert d.type == SCHEMA_TYPES[type(flat[name])], name
        assert d.read_only == (not parameters.is_runtime(name))
    r = descs["tracking.detection_probability"].floating_point_range[0]  # gt=0, lt=1
    assert (r.from_value, r.to_value) == (0.0, 1.0)
    assert descs["tracking.confirm_hits"].integer_range[0].from_value == 1  # ge=1
    assert descs["model.d_model"].integer_range[0].from_value == 1  # gt=0 on an integer
    assert "one of: mamba" in descs["model.kind"].additional_constraints
    assert descs["tracking.score_threshold.car"].description.endswith(": car")
    assert descs["grid.resolution"].read_only and not descs["tracking.gate_mahalanobis"].read_only


def test_describe_parameters_over_dds(tmp_path):
    listener = Listener("describe_client")
    with running_node(tmp_path, listener, {"model.kind": "logodds"}):
        expected = parameters.descriptors()
        names = sorted(expected)
        req = DescribeParameters.Request(names=names)
        got = listener.call(DescribeParameters, "/ssm_perception/describe_parameters", req, 60.0).descriptors
        assert [d.name for d in got] == names  # each its own name, in the order asked
        for d in got:
            e = expected[d.name]
            assert (d.type, d.description, d.read_only) == (e.type, e.description, e.read_only), d.name
        assert {d.type for d in got} >= {ParameterType.PARAMETER_BOOL, ParameterType.PARAMETER_INTEGER,
                                         ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_STRING}

        # ros2 param set over DDS: a runtime threshold is taken, a restart-only one and an invalid
        # value are refused with a reason.
        req = SetParameters.Request(parameters=[Parameter("tracking.min_evidence", value=0.35).to_parameter_msg()])
        res = listener.call(SetParameters, "/ssm_perception/set_parameters", req).results[0]
        assert res.successful, res.reason
        req = SetParameters.Request(parameters=[Parameter("grid.resolution", value=0.25).to_parameter_msg()])
        res = listener.call(SetParameters, "/ssm_perception/set_parameters", req).results[0]
        assert not res.successful and "read-only" in res.reason
        req = SetParameters.Request(parameters=[Parameter("tracking.detection_probability", value=1.0)
                                                .to_parameter_msg()])
        res = listener.call(SetParameters, "/ssm_perception/set_parameters", req).results[0]
        assert not res.successful and "tracking.detection_probability" in res.reason


def test_runtime_change_reaches_the_tracker_and_is_validated(rclpy_context):
    node = PerceptionNode(context=rclpy_context, parameter_overrides=[
        Parameter("model.kind", value="logodds"), Parameter("grid.length_x", value=20),  # int for a float
        Parameter("grid.length_y", value=20.0), Parameter("sensors.use_camera", value=False)])
    try:
        assert node.describe_parameter("grid.length_x").type == ParameterType.PARAMETER_DOUBLE
        assert node.get_parameter("grid.length_x").value == 20.0
        tracker_cfg = node.pipeline.tracker.cfg
        assert node.set_parameters([Parameter("tracking.score_threshold.car", value=0.55),
                                    Parameter("diagnostics.latency_warn_ms", value=50.0)])[0].successful
        assert tracker_cfg.score_threshold.car == 0.55 and node.config.diagnostics.latency_warn_ms == 50.0
        # In the range rclpy checks (0..1 inclusive) but refused by the schema (lt=1): nothing changes.
        res = node.set_parameters([Parameter("tracking.detection_probability", value=1.0)])[0]
        assert not res.successful and "tracking.detection_probability" in res.reason
        assert tracker_cfg.detection_probability < 1.0
        res = node.set_parameters([Parameter("tracking.min_evidence", value=-0.5)])[0]
        assert not res.successful and tracker_cfg.min_evidence >= 0
        res = node.set_parameters([Parameter("topics.lidar", value="/other")])[0]
        assert not res.successful and "read-only" in res.reason
    finally:
        node.destroy_node()
