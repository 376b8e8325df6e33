"""Session-wide test setup.

Every test run gets its own random ROS_DOMAIN_ID (inherited by the subprocesses tests start), and
DDS discovery is kept on this host, so parallel runs and other machines never see our traffic.
"""

import os
import random

os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# Keep torch from oversubscribing the 2 cores when several test processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
