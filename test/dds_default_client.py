"""A ROS 2 client on default DDS settings (run with no Fast DDS variables): waits for the perception
node, its topics and its reset service, calls the service once, takes one /diagnostics message, and
prints what it saw as one JSON line.

    python dds_default_client.py TIMEOUT_S
"""

import json
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

TOPICS = ("/perception/occupancy_grid", "/perception/tracks", "/perception/markers", "/diagnostics")


def main() -> int:
    timeout = float(sys.argv[1])
    rclpy.init()
    node = rclpy.create_node("default_client")
    diags = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append,
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    client = node.create_client(Trigger, "/ssm_perception/reset")
    seen = {"node": False, "topics": [], "service": False, "answer": None, "diagnostics": False}
    future = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rclpy.spin_once(node, timeout_sec=0.1)
        seen["node"] = ("ssm_perception", "/") in node.get_node_names_and_namespaces()
        topics = dict(node.get_topic_names_and_types())
        seen["topics"] = sorted(t for t in TOPICS if t in topics)
        seen["service"] = client.service_is_ready()
        if seen["service"] and future is None:
            future = client.call_async(Trigger.Request())
        if future is not None and future.done():
            seen["answer"] = future.result().success
        seen["diagnostics"] = bool(diags)
        if seen["node"] and len(seen["topics"]) == len(TOPICS) and seen["answer"] is not None and diags:
            break
    seen["after_s"] = round(time.monotonic() - t0, 2)
    print(json.dumps(seen), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
