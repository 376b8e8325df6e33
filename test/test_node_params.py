"""PerceptionNode as an importable class: every config field is a declared ROS parameter, read back
into a PerceptionConfig; an invalid value raises ConfigError naming the field."""

import pytest
import rclpy  # noqa: F401  (CI must fail, not skip, when ROS 2 did not install)
from rclpy.parameter import Parameter

from ssm_perception.config import ConfigError, PerceptionConfig

pytestmark = pytest.mark.ros


def test_parameters_are_declared_and_read_back(rclpy_context):
    from ssm_perception.nodes.perception_node import PerceptionNode

    overrides = [Parameter("grid.length_x", value=30.0), Parameter("grid.length_y", value=20),  # int for a float
                 Parameter("sensors.use_camera", value=False), Parameter("topics.lidar", value="/my/lidar")]
    node = PerceptionNode(context=rclpy_context, parameter_overrides=overrides)
    try:
        schema = set(PerceptionConfig().to_ros_parameters())
        assert all(node.has_parameter(name) for name in schema)
        cfg = node.config
        assert (cfg.grid.nx, cfg.grid.ny) == (60, 40) and cfg.topics.lidar == "/my/lidar"
        assert node.get_topic_names_and_types() is not None
        subs = {name for name, _ in node.get_subscriber_names_and_types_by_node(node.get_name(), "/")}
        assert "/my/lidar" in subs and "/sensing/camera/front/image_raw" not in subs
        # Changing what needs a restart is refused: those parameters are read-only (nodes/parameters.py).
        result = node.set_parameters([Parameter("grid.resolution", value=0.25)])[0]
        assert not result.successful and "read-only" in result.reason
    finally:
        node.destroy_node()


def test_invalid_override_raises_config_error_naming_the_field(rclpy_context):
    from ssm_perception.nodes.perception_node import PerceptionNode

    with pytest.raises(ConfigError, match="reset.pose_jump_m"):
        PerceptionNode(context=rclpy_context, parameter_overrides=[Parameter("reset.pose_jump_m", value=-1.0)])
