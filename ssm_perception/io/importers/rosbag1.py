"""ROS 1 bag -> rosbag2 (mcap), converted by rosbags (message definitions mapped to ROS 2).

The recording keeps its own topics and frames. The import checks what the node needs: a
sensor_msgs/PointCloud2 topic, and /tf with odom -> base_link (frame names as --odom-frame /
--base-frame are not offered: rename frames at the source). It names the PointCloud2 topics so the
configuration (topics.lidar) can point at the right one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ssm_perception.io.importers import ImportFailure, ImportOptions, atomic_output


def ros1_store():
    """rosbags' ROS 1 Noetic typestore plus tf2_msgs/TFMessage (not in the stock store)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    if "tf2_msgs/msg/TFMessage" not in store.types:
        store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms\n", "tf2_msgs/msg/TFMessage"))
    return store


def convert(src: Path, out: Path, opts: ImportOptions) -> dict:
    from rosbags.convert import convert as rb_convert
    from rosbags.rosbag1 import Reader as Reader1

    if not src.is_file():
        raise ImportFailure(f"{src}: a ROS 1 bag is a file")
    try:
        with Reader1(src) as r:
            topics = {c.topic: c.msgtype for c in r.connections}
            clouds = sorted(t for t, m in topics.items() if m == "sensor_msgs/msg/PointCloud2")
            has_tf = [c for c in r.connections if c.topic == "/tf"]
            pairs = set()
            store = ros1_store()
            for conn, _, raw in r.messages(connections=has_tf):
                for tr in store.deserialize_ros1(raw, conn.msgtype).transforms:
                    pairs.add((tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/")))
                if ("odom", "base_link") in pairs:
                    break
    except ImportFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for a corrupt bag
        raise ImportFailure(f"{src}: not a readable ROS 1 bag: {exc}") from None
    if not clouds:
        raise ImportFailure(f"{src}: no sensor_msgs/PointCloud2 topic (topics: {sorted(topics)})")
    if not has_tf:
        raise ImportFailure(f"missing poses: {src} has no /tf topic")
    if ("odom", "base_link") not in pairs:
        raise ImportFailure(f"missing poses: /tf has no odom -> base_link (found: "
                            f"{', '.join(f'{a} -> {b}' for a, b in sorted(pairs)) or 'none'})")
    tmp, bag_path = atomic_output(out)
    try:
        rb_convert([src], bag_path, "mcap", 9, None, "file", None, None, [], [], [], [])
        bag_path.rename(out)
    except Exception as exc:  # noqa: BLE001 - any conversion error: clean up, one line
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImportFailure(f"{src}: conversion failed: {exc}") from None
    shutil.rmtree(tmp, ignore_errors=True)
    notes = []
    if opts.lidar_topic not in clouds:
        notes.append(f"LiDAR topic(s) {clouds}: set topics.lidar to one of them in the configuration")
    return {"bag": str(out), "pointcloud_topics": clouds, "notes": notes}
