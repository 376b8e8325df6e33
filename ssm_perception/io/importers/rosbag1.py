"""ROS 1 bag -> rosbag2 (mcap), converted by rosbags (message definitions mapped to ROS 2).

The recording keeps its own topics and frames. The import checks what the node needs: a
sensor_msgs/PointCloud2 topic, /tf with odom -> base_link, and a chain of /tf or /tf_static
transforms from base_link to the clouds' frame (frames are not renamed: do that at the source). It
names the PointCloud2 topics so the configuration (topics.lidar) can point at the right one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ssm_perception.io.bag import remove_made
from ssm_perception.io.importers import ImportFailure, ImportOptions, atomic_output


def ros1_store():
    """rosbags' ROS 1 Noetic typestore plus tf2_msgs/TFMessage (not in the stock store)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    if "tf2_msgs/msg/TFMessage" not in store.types:
        store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms\n", "tf2_msgs/msg/TFMessage"))
    return store


def _connected(pairs: set[tuple[str, str]], a: str, b: str) -> bool:
    """Whether frames a and b are linked by a chain of transforms (either direction)."""
    seen, todo = {a}, [a]
    while todo:
        f = todo.pop()
        if f == b:
            return True
        for p, c in pairs:
            for x, y in ((p, c), (c, p)):
                if x == f and y not in seen:
                    seen.add(y)
                    todo.append(y)
    return False


def convert(src: Path, out: Path, opts: ImportOptions) -> dict:
    from rosbags.convert import convert as rb_convert
    from rosbags.rosbag1 import Reader as Reader1

    if not src.is_file():
        raise ImportFailure(f"{src}: a ROS 1 bag is a file")
    try:
        with Reader1(src) as r:
            topics = {c.topic: c.msgtype for c in r.connections}
            clouds = sorted(t for t, m in topics.items() if m == "sensor_msgs/msg/PointCloud2")
            has_tf = any(c.topic == "/tf" for c in r.connections)
            pairs: set[tuple[str, str]] = set()
            frames: dict[str, str] = {}  # cloud topic -> frame_id of its first message
            store = ros1_store()
            wanted = [c for c in r.connections if c.topic in ("/tf", "/tf_static") or c.topic in clouds]
            for conn, _, raw in r.messages(connections=wanted):
                if conn.topic in ("/tf", "/tf_static"):
                    for tr in store.deserialize_ros1(raw, conn.msgtype).transforms:
                        pairs.add((tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/")))
                elif conn.topic not in frames:
                    frames[conn.topic] = store.deserialize_ros1(raw, conn.msgtype).header.frame_id.lstrip("/")
                if len(frames) == len(clouds) and ("odom", "base_link") in pairs and \
                        all(_connected(pairs, "base_link", f) for f in frames.values()):
                    break
    except ImportFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for a corrupt bag
        raise ImportFailure(f"{src}: not a readable ROS 1 bag: {exc}") from None
    if not clouds:
        raise ImportFailure(f"{src}: no sensor_msgs/PointCloud2 topic (topics: {sorted(topics)})")
    if not has_tf:
        raise ImportFailure(f"missing poses: {src} has no /tf topic")
    found = ", ".join(f"{a} -> {b}" for a, b in sorted(pairs)) or "none"
    if ("odom", "base_link") not in pairs:
        raise ImportFailure(f"missing poses: /tf has no odom -> base_link (found: {found})")
    unlinked = {t: f for t, f in frames.items() if not _connected(pairs, "base_link", f)}
    if frames and len(unlinked) == len(frames):
        raise ImportFailure(f"no transform from base_link to the PointCloud2 frame(s) "
                            f"{sorted(set(unlinked.values()))} in /tf or /tf_static (found: {found})")
    tmp, bag_path, made = atomic_output(out)
    try:
        rb_convert([src], bag_path, "mcap", 9, None, "file", None, None, [], [], [], [])
        bag_path.rename(out)
    except Exception as exc:  # noqa: BLE001 - any conversion error: clean up, one line
        shutil.rmtree(tmp, ignore_errors=True)
        remove_made(made)
        raise ImportFailure(f"{src}: conversion failed: {exc}") from None
    shutil.rmtree(tmp, ignore_errors=True)
    notes = [f"{t}: frame {f} has no transform to base_link; the node would drop its scans"
             for t, f in sorted(unlinked.items())]
    if opts.lidar_topic not in clouds:
        notes.append(f"LiDAR topic(s) {clouds}: set topics.lidar to one of them in the configuration")
    return {"bag": str(out), "pointcloud_topics": clouds, "notes": notes}
