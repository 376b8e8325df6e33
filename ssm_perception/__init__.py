"""ssm_perception: temporal BEV perception with a Mamba state-space model, as ROS 2 nodes.

The core (everything outside ``ssm_perception.nodes``) imports without rclpy.
"""

from ssm_perception.threads import limit_native_threads as _limit_native_threads

_limit_native_threads()  # before anything imports numpy: BLAS pools read the environment once (threads.py)

__version__ = "0.1.0"
