"""A small rosbag2 recorder (no `ros2 bag` on pip): raw CDR from rclpy subscriptions into mcap.

Used by the demo to collect what the node publishes. Messages are written as received (``raw``
subscriptions, no deserialization); the bag timestamp is the node clock at reception (sim time
when ``use_sim_time``), and every message keeps its own header stamp for matching.

    python -m ssm_perception.nodes.recorder OUT_DIR TOPIC:TYPE [TOPIC:TYPE ...] [--use-sim-time]
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path


class Recorder:
    """Subscribes ``topics`` {name: 'pkg/msg/Type'} on ``node`` and writes them to ``path`` (mcap)."""

    def __init__(self, node, path: str | Path, topics: dict[str, str], qos: dict | None = None):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer

        from ssm_perception.io.bag import typestore
        from ssm_perception.nodes.replay import ros_type

        self.node, self.path = node, Path(path)
        self.counts = {t: 0 for t in topics}
        self._lock = threading.Lock()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns = {}
        qos = dict(qos or {})
        for topic, msgtype in topics.items():
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=typestore())
            # Reliable + transient local matches the latched grid and also receives from volatile
            # publishers; best effort is needed for sensor topics (a reliable reader would not match).
            profile = qos.get(topic) or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                                                   durability=DurabilityPolicy.VOLATILE)
            node.create_subscription(ros_type(msgtype), topic, self._callback(topic), profile, raw=True)

    def _callback(self, topic: str):
        conn = self._conns[topic]

        def cb(raw: bytes) -> None:
            t = self.node.get_clock().now().nanoseconds
            with self._lock:
                if self._writer is not None:
                    self._writer.write(conn, t, raw)
                    self.counts[topic] += 1
        return cb

    def close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            from ssm_perception.io.bag import add_mcap_crcs

            for f in self.path.glob("*.mcap"):  # CRCs for check_bag (rosbags writes none)
                add_mcap_crcs(f)


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output rosbag2 directory (must not exist)")
    ap.add_argument("topics", nargs="+", help="TOPIC:pkg/msg/Type")
    ap.add_argument("--use-sim-time", action="store_true")
    args = ap.parse_args(argv)
    topics = dict(t.rsplit(":", 1) for t in args.topics)
    if Path(args.out).exists():
        print(f"[record] {args.out} already exists", file=sys.stderr)
        return 2
    rclpy.init()
    node = Node("ssm_perception_recorder",
                parameter_overrides=[Parameter("use_sim_time", value=bool(args.use_sim_time))])
    rec = Recorder(node, args.out, topics)
    print(f"[record] {args.out}: {', '.join(topics)}", file=sys.stderr, flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rec.close()
        node.destroy_node()
        rclpy.try_shutdown()
    print("[record] wrote " + ", ".join(f"{t}: {n}" for t, n in rec.counts.items()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
