"""ros2 launch ssm_perception ssm_perception.launch.py [config:=FILE] [use_sim_time:=true]

The vehicle entry point (needs launch_ros, part of every ROS 2 install). Where launch_ros is not
installed (pip wheels), `ssm-perception launch [CONFIG] [--bag BAG]` starts the same node with the
same YAML. Without config:=, the CPU or the GPU default file is used, by what this machine has
(ssm_perception/defaults.py).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription


def generate_launch_description():
    from ssm_perception.defaults import default_config_name

    default_config = os.path.join(get_package_share_directory("ssm_perception"), "config", default_config_name())
    config = LaunchConfiguration("config")
    use_sim_time = LaunchConfiguration("use_sim_time")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="ROS 2 parameter file of the perception node"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="true when replaying a bag that publishes /clock"),
        Node(
            package="ssm_perception",
            executable="perception_node",
            name="ssm_perception",
            output="screen",
            emulate_tty=True,
            parameters=[config, {"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}],
        ),
    ])
