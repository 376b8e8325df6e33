"""Issue 19 (item 1): the node started by `ssm-perception launch` (with the packaged Fast DDS profile)
is discovered by a client with default DDS settings: node, topics, reset service, data."""

import json
import os
import signal
import subprocess
import sys

import pytest
from ros_helpers import ROOT, TEST_OVERRIDES, Proc, ros_env, wait_for, write_params

from ssm_perception.nodes.launcher import PROFILE_VARS

pytestmark = pytest.mark.ros
DDS_VARS = (*PROFILE_VARS, "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS")


def test_default_configured_client_sees_the_launched_node(tmp_path):
    params = write_params(tmp_path / "params.yaml", TEST_OVERRIDES)
    # The launcher chooses the transports itself (dds_env); discovery as on a vehicle (no LOCALHOST).
    env = {k: v for k, v in ros_env().items() if k not in DDS_VARS}
    launch = Proc([sys.executable, "-m", "ssm_perception.cli", "launch", str(params)], tmp_path / "launch.log", env=env)
    try:
        wait_for(lambda: "ready: grid" in launch.output(), 60, "the node to start", launch)
        assert "FASTDDS_DEFAULT_PROFILES_FILE=" in launch.output()
        client_env = {k: v for k, v in env.items() if k not in DDS_VARS}  # no DDS variables at all
        assert not any(k.startswith("FAST") for k in client_env)
        r = subprocess.run([sys.executable, str(ROOT / "test" / "dds_default_client.py"), "20"], env=client_env,
                           capture_output=True, text=True, timeout=60, check=False)
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        launch.p.send_signal(signal.SIGTERM)  # forwarded to the node as SIGINT
        rc = launch.wait(30)
    finally:
        launch.stop()
    out = launch.output()
    assert seen["node"], (seen, out[-2000:])
    assert seen["topics"] == sorted(["/perception/occupancy_grid", "/perception/tracks", "/perception/markers",
                                     "/diagnostics"]), seen
    assert seen["service"] and seen["answer"] is True, seen
    assert seen["diagnostics"], seen  # data flows from the profiled node to the default client
    assert rc == 0 and "Traceback" not in out and "context is invalid" not in out, out[-3000:]
    assert "perception_node -> 0" in out, out[-2000:]
    assert os.environ.get("ROS_DOMAIN_ID") == env["ROS_DOMAIN_ID"]
