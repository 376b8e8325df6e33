"""A second process for the DDS tests: echoes what it receives, or publishes and exits.

Run as: python dds_peer.py echo   -> subscribes to /test/tracks_in, /test/cloud_in, /test/tf_in and
                                     republishes each message unchanged on the *_out topic.
"""

import sys

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from ssm_perception.msg import TrackArray
from tf2_msgs.msg import TFMessage

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def main() -> int:
    rclpy.init()
    node = Node("dds_echo_peer")
    pubs = {}
    for name, typ in (("tracks", TrackArray), ("cloud", PointCloud2), ("tf", TFMessage)):
        pub = node.create_publisher(typ, f"/test/{name}_out", QOS)
        pubs[name] = pub
        node.create_subscription(typ, f"/test/{name}_in", lambda msg, p=pub: p.publish(msg), QOS)
    print("peer ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
