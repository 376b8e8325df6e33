"""rosbag2 IO through rosbags: builders round-trip, failed writes leave nothing, bad paths explain."""

import numpy as np
import pytest

from ssm_perception.geometry import se2_matrix
from ssm_perception.io import bag, track_fields
from ssm_perception.io.pointcloud2 import LIDAR_DTYPE, cloud_to_array


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_and_read_back(tmp_path, storage):
    path = tmp_path / "b"
    cloud = np.zeros(4, LIDAR_DTYPE)
    cloud["x"] = [1, 2, 3, 4]
    grid = np.zeros((6, 4), np.int8)
    grid[5, 0] = 100
    with bag.BagWriter(path, storage=storage, custom_data={"seed": "3"}) as w:
        w.add_topic("/pc", "sensor_msgs/msg/PointCloud2")
        w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        w.add_topic("/grid", "nav_msgs/msg/OccupancyGrid")
        w.add_topic("/objs", "ssm_perception/msg/TrackArray")
        w.add_topic("/img", "sensor_msgs/msg/Image")
        w.add_topic("/odom", "nav_msgs/msg/Odometry")
        w.write("/pc", 2_000, bag.pointcloud2_msg(cloud, 1_000, "lidar_top"))
        w.write("/tf_static", 500, bag.tf_message([(se2_matrix(1, 2, 0.3), 0, "base_link", "lidar_top")]))
        w.write("/grid", 1_500, bag.occupancy_grid_msg(grid, 0.5, (-1.5, -1.0), 1_000, "base_link"))
        w.write("/objs", 1_600, bag.track_array_msg(
            [{"id": 7, "cls": 1, "x": 1.0, "y": 2.0, "yaw": 0.5, "l": 4.0, "w": 2.0, "h": 1.5, "vx": 3.0, "vy": 0.0}], 1_000, "odom"))
        w.write("/img", 1_700, bag.image_msg(np.full((4, 6, 3), 9, np.uint8), 1_000, "cam"))
        w.write("/odom", 1_800, bag.odometry_msg(se2_matrix(3, 0, 0), (1, 0, 0), 0.1, 1_000))
    topics = bag.bag_topics(path)
    assert topics["/pc"] == ("sensor_msgs/msg/PointCloud2", 1)
    assert topics["/objs"] == ("ssm_perception/msg/TrackArray", 1)
    assert bag.bag_custom_data(path) == {"seed": "3"}
    msgs = list(bag.read_messages(path))
    assert [m[2] for m in msgs] == sorted(m[2] for m in msgs)
    by = {m[0]: m[3] for m in msgs}
    np.testing.assert_array_equal(cloud_to_array(by["/pc"])["x"], cloud["x"])
    assert by["/pc"].header.stamp.nanosec == 1_000
    np.testing.assert_array_equal(bag.occupancy_grid_to_array(by["/grid"]), grid)
    tr = by["/tf_static"].transforms[0]
    assert (tr.header.frame_id, tr.child_frame_id) == ("base_link", "lidar_top")
    assert tr.transform.translation.y == 2.0 and np.isclose(tr.transform.rotation.z, np.sin(0.15))
    t = by["/objs"].tracks[0]
    assert (t.track_number, t.classification[0].label, t.shape.dimensions.x) == (7, 1, 4.0)
    # velocity in the object frame (yaw 0.5): (3, 0) in odom -> (3 cos 0.5, -3 sin 0.5)
    assert np.isclose(t.twist.twist.linear.x, 3 * np.cos(0.5)) and np.isclose(t.twist.twist.linear.y, -3 * np.sin(0.5))
    assert len(t.object_id.uuid) == 16 and bytes(t.object_id.uuid) == track_fields.ground_truth_uuid(7)
    assert by["/img"].encoding == "rgb8" and by["/img"].data.size == 72
    assert [m[0] for m in bag.read_messages(path, topics=["/odom"])] == ["/odom"]


def test_exception_removes_partial_bag(tmp_path):
    path = tmp_path / "b"
    with pytest.raises(ZeroDivisionError), bag.BagWriter(path) as w:
        w.add_topic("/s", "std_msgs/msg/String")
        w.write("/s", 1, bag.string_msg("x"))
        raise ZeroDivisionError("mid-write failure")
    assert not path.exists()


def test_clear_errors(tmp_path):
    (tmp_path / "notabag").mkdir()
    (tmp_path / "notabag" / "hello.txt").write_text("x")
    with pytest.raises(bag.BagError, match="hello.txt"):
        bag.read_messages(tmp_path / "notabag")
    with pytest.raises(bag.BagError, match="no such file"):
        bag.bag_topics(tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(bag.BagError, match="afile is not a directory"):
        bag.BagWriter(tmp_path / "afile" / "dir" / "b").__enter__()
    with pytest.raises(bag.BagError, match="already exists"):
        bag.BagWriter(tmp_path / "notabag").__enter__()
    assert (tmp_path / "notabag" / "hello.txt").exists()


def test_typestore_hashes_match_rosidl():
    store = bag.typestore()
    # Value seen on real ROS 2 /tf topics (shared/notes/ros2-from-pip-wheels.md).
    assert store.hash_rihs01("tf2_msgs/msg/TFMessage") == (
        "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087")
    assert "ssm_perception/msg/Track" in store.types


def test_typestore_hashes_match_the_rosidl_build():
    """rosbags (from the msg/ text) and rosidl (the built interfaces, their type description JSON)
    agree on our type hashes, so bags written offline replay to real subscribers."""
    import json
    import os
    import sys
    from pathlib import Path

    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    share = next(Path(p) / "share" / "ssm_perception" / "msg" for p in prefixes
                 if (Path(p) / "share" / "ssm_perception" / "msg" / "Track.json").is_file())
    store = bag.typestore()
    for name in bag.MSG_NAMES:
        hashes = json.loads((share / f"{name}.json").read_text())["type_hashes"]
        rosidl = next(h["hash_string"] for h in hashes if h["type_name"] == f"ssm_perception/msg/{name}")
        assert store.hash_rihs01(f"ssm_perception/msg/{name}") == rosidl, name


def test_missing_parent_folders_are_made_and_removed_again_on_failure(tmp_path):
    """`-o out/heldout/bag` works on a fresh checkout (as mkdir -p); a bag that fails leaves no folder."""
    with bag.BagWriter(tmp_path / "out" / "heldout" / "b") as w:
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
    assert bag.bag_topics(tmp_path / "out" / "heldout" / "b")["/tf"][1] == 0
    with pytest.raises(RuntimeError, match="boom"), bag.BagWriter(tmp_path / "new" / "deeper" / "b"):
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()
