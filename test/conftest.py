"""Session-wide test setup.

Every test run gets its own random ROS_DOMAIN_ID (inherited by the subprocesses tests start), and
DDS discovery is kept on this host, so parallel runs and other machines never see our traffic.
"""

import os
import random

import pytest

os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# Keep torch from oversubscribing the 2 cores when several test processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture()
def rclpy_context():
    """An rclpy context of the test's own, shut down afterwards (nodes built in this process)."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)
