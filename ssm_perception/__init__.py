"""ssm_perception: temporal BEV perception with a Mamba state-space model, as ROS 2 nodes.

The core (everything outside ``ssm_perception.nodes``) imports without rclpy.
"""

__version__ = "0.1.0"
