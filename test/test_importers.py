"""`ssm-perception import`: each format, from small files the test writes in that format, becomes a
rosbag2 with /tf, /tf_static and PointCloud2 in the sensor frame at the sensor stamps (and labels);
every failure is one line with exit code 2 and leaves nothing behind."""

import json
import math

import numpy as np
import pytest
import transforms3d as t3
from typer.testing import CliRunner

from ssm_perception.cli import app
from ssm_perception.io.bag import read_messages
from ssm_perception.io.labels import read_labels
from ssm_perception.io.pointcloud2 import cloud_to_array
from ssm_perception.tf_buffer import TfBuffer

runner = CliRunner()
N = 3
RNG = np.random.default_rng(0)
POINTS = RNG.uniform(-20, 20, (N, 500, 3)).astype(np.float32)  # per scan, in the LiDAR frame
POINTS[..., 2] = RNG.uniform(-1.3, 1.0, (N, 500))
POINTS[:, 300:, 2] = -1.84  # ground 1.84 m under the LiDAR (nuScenes / AV2 tests: at ego z = 0)


def _import(*args):
    return runner.invoke(app, ["import", *map(str, args), "--no-progress"])


def _bag(path, topic="/sensing/lidar/points"):
    """(clouds [(stamp, frame_id, array)], TfBuffer with everything)."""
    tf = TfBuffer(100.0)
    clouds = []
    for t, _, _, msg in read_messages(path):
        if t in ("/tf", "/tf_static"):
            for tr in msg.transforms:
                T = np.eye(4)
                q = tr.transform.rotation
                T[:3, :3] = t3.quaternions.quat2mat([q.w, q.x, q.y, q.z])
                v = tr.transform.translation
                T[:3, 3] = [v.x, v.y, v.z]
                stamp = tr.header.stamp.sec * 10**9 + tr.header.stamp.nanosec
                tf.set_transform(T, tr.header.frame_id, tr.child_frame_id, stamp, static=t == "/tf_static")
        elif t == topic:
            clouds.append((msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, msg.header.frame_id,
                           cloud_to_array(msg)))
    return clouds, tf


def _assert_bag(out, frame, stamps, base_x, lidar_z, intensity=True):
    clouds, tf = _bag(out)
    assert [c[0] for c in clouds] == stamps and all(c[1] == frame for c in clouds)
    for k, (s, _, arr) in enumerate(clouds):
        assert np.allclose(arr["x"][:500], POINTS[k, :, 0], atol=1e-4) and ("intensity" in arr.dtype.names) == intensity
        T = tf.lookup("odom", "base_link", s, 0)
        assert abs(T[0, 3] - base_x[k]) < 1e-3, (k, T[0, 3])
    assert abs(tf.lookup("base_link", frame, stamps[0], 0)[2, 3] - lidar_z) < 1e-3
    return clouds, tf


def test_kitti_odometry_poses_and_tracking_labels(tmp_path):
    src = tmp_path / "seq"
    (src / "velodyne").mkdir(parents=True)
    for k in range(N):
        np.concatenate([POINTS[k], np.full((500, 1), 0.5, np.float32)], 1).tofile(src / "velodyne" / f"{k:06d}.bin")
    # cam0 poses: the car drives 2 m per scan along the camera's z (= velodyne x)
    (src / "poses.txt").write_text("".join(f"1 0 0 0 0 1 0 0 0 0 1 {2.0 * k}\n" for k in range(N)))
    tr = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], float)  # velodyne -> camera axes
    (src / "calib.txt").write_text("P0: " + " ".join(["0"] * 12) + "\nTr: " + " ".join(map(str, tr.ravel())) + "\n")
    (src / "times.txt").write_text("0.0\n0.1\n0.2\n")
    # a car 10 m ahead (camera z), 1 m right (camera x), on the ground (camera y = 1.73 down), facing forward
    (src / "label_02.txt").write_text(
        "1 7 Car 0 0 0 0 0 0 0 1.5 1.8 4.2 1.0 1.73 10.0 -1.5707963\n0 3 DontCare -1 -1 -10 0 0 0 0 -1 -1 -1 "
        "-1000 -1000 -1000 -10\n")
    out = tmp_path / "kitti_bag"
    r = _import("kitti", src, "-o", out)
    assert r.exit_code == 0, r.output
    _assert_bag(out, "velodyne", [10**9, 10**9 + 10**8, 10**9 + 2 * 10**8], [0.0, 2.0, 4.0], 1.73)
    (box,) = read_labels(out)[10**9 + 10**8]
    # scan 1: the ego is at odom x = 2, the box 10 m ahead and 1 m to the right
    assert box.cls == "car" and box.id == "7"
    assert np.allclose([box.x, box.y, box.z, box.l, box.yaw], [12.0, -1.0, 0.75, 4.2, 0.0], atol=1e-4)


def test_kitti_oxts(tmp_path):
    src = tmp_path / "raw"
    (src / "velodyne_points" / "data").mkdir(parents=True)
    (src / "oxts" / "data").mkdir(parents=True)
    lat0 = 49.0
    for k in range(N):
        np.concatenate([POINTS[k], np.zeros((500, 1), np.float32)], 1).tofile(
            src / "velodyne_points" / "data" / f"{k:010d}.bin")
        # heading north (yaw = pi/2), 3 m of latitude per scan
        lat = lat0 + math.degrees(3.0 * k / 6378137.0)  # Mercator y grows by er * dlat at scale cos(lat0)
        (src / "oxts" / "data" / f"{k:010d}.txt").write_text(
            " ".join(map(str, [lat, 8.4, 110.0, 0.0, 0.0, math.pi / 2] + [0] * 24)) + "\n")
    (src / "calib_imu_to_velo.txt").write_text("calib_time: x\nR: 1 0 0 0 1 0 0 0 1\nT: -0.8 0.3 -0.9\n")
    (src / "velodyne_points" / "timestamps.txt").write_text(
        "".join(f"2011-09-26 13:02:25.{k * 100_000_000:09d}\n" for k in range(N)))
    out = tmp_path / "oxts_bag"
    r = _import("kitti", src, "-o", out)
    assert r.exit_code == 0, r.output
    s0 = 1317042145 * 10**9
    _assert_bag(out, "velodyne", [s0, s0 + 10**8, s0 + 2 * 10**8], [0.0, 3.0, 6.0], 1.73)


def _nuscenes(root, with_annotations=True):
    tables = root / "v1.0-mini"
    tables.mkdir(parents=True)
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    q_yaw90 = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]  # ego heading +y in the global frame
    sd, ep, samples = [], [], []
    for k in range(N):
        fn = f"samples/LIDAR_TOP/n{k}.pcd.bin"
        np.concatenate([POINTS[k], np.full((500, 1), 30, np.float32), np.zeros((500, 1), np.float32)], 1).tofile(
            root / fn)
        ep.append({"token": f"ep{k}", "timestamp": 1_500_000_000_000_000 + 50_000 * k, "rotation": q_yaw90,
                   "translation": [100.0, 200.0 + 1.5 * k, 0.0]})
        samples.append({"token": f"s{k}", "timestamp": ep[-1]["timestamp"], "scene_token": "sc"})
        sd.append({"token": f"sd{k}", "sample_token": f"s{k}", "ego_pose_token": f"ep{k}",
                   "calibrated_sensor_token": "cs", "timestamp": ep[-1]["timestamp"], "filename": fn,
                   "is_key_frame": True})
    tab = {"sample_data": sd, "ego_pose": ep, "sample": samples, "scene": [{"token": "sc", "name": "scene-0001"}],
           "calibrated_sensor": [{"token": "cs", "sensor_token": "lt", "translation": [0.9, 0.0, 1.84],
                                  "rotation": [1, 0, 0, 0]}],
           "sensor": [{"token": "lt", "channel": "LIDAR_TOP", "modality": "lidar"}]}
    if with_annotations:  # a pedestrian 5 m ahead of the ego at sample 2 (global: +y is ahead)
        tab["sample_annotation"] = [{"token": "a", "sample_token": "s2", "instance_token": "i1",
                                     "translation": [100.0, 208.0, 0.9], "size": [0.6, 0.7, 1.8],
                                     "rotation": q_yaw90, "num_lidar_pts": 12}]
        tab["instance"] = [{"token": "i1", "category_token": "c1"}]
        tab["category"] = [{"token": "c1", "name": "human.pedestrian.adult"}]
    for name, rows in tab.items():
        (tables / f"{name}.json").write_text(json.dumps(rows))
    return root


def test_nuscenes(tmp_path):
    src = _nuscenes(tmp_path / "nus")
    out = tmp_path / "nus_bag"
    r = _import("nuscenes", src, "-o", out)
    assert r.exit_code == 0, r.output
    stamps = [1_500_000_000_000_000_000 + 50_000_000 * k for k in range(N)]
    clouds, _ = _assert_bag(out, "lidar_top", stamps, [0.0, 1.5, 3.0], 1.84)
    assert np.all(clouds[0][2]["intensity"] == 30) and "ring" in clouds[0][2].dtype.names
    (box,) = read_labels(out)[stamps[2]]
    assert box.cls == "pedestrian" and np.allclose([box.x, box.y, box.yaw, box.l, box.w], [8.0, 0, 0, 0.7, 0.6])


def test_imported_bag_is_what_evaluate_replays(tmp_path):
    """evaluate's reader (the node's frame assembler over the bag's TF) gets every scan, in its
    frame, with the imported mount and poses."""
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.eval.evaluate import decode_bag, topic_roles

    out = tmp_path / "nus_bag"
    assert _import("nuscenes", _nuscenes(tmp_path / "nus"), "-o", out, "--lidar-frame", "roof").exit_code == 0
    cfg = PerceptionConfig()
    bag = decode_bag(out, cfg, topic_roles(cfg.topics), progress=False)
    assert len(bag.frames) == N and all(f.lidar_frame == "roof" for f in bag.frames)
    assert [round(f.T_odom_base[0, 3], 6) for f in bag.frames] == [0.0, 1.5, 3.0]
    assert np.allclose(bag.frames[1].T_base_lidar[:3, 3], [0.9, 0.0, 1.84])
    assert np.allclose(bag.frames[2].lidar["y"], POINTS[2, :, 1])


@pytest.mark.parametrize("ego_above_ground", [0.0, 0.35])
def test_argoverse2(tmp_path, ego_above_ground):
    """AV2 sweeps are in the ego frame, whose origin (rear axle) is ~0.35 m above the ground; the
    import puts base_link on the ground (lidar 1.84 m above it either way)."""
    import pyarrow as pa
    from pyarrow import feather

    src = tmp_path / "log"
    (src / "sensors" / "lidar").mkdir(parents=True)
    (src / "calibration").mkdir()
    stamps = [315_969_000_000_000_000 + 100_000_000 * k for k in range(N)]
    lidar_z = 1.84 - ego_above_ground
    for k, s in enumerate(stamps):  # sweeps are in the ego frame: the LiDAR-frame points + its height
        feather.write_feather(pa.table({
            "x": POINTS[k, :, 0], "y": POINTS[k, :, 1], "z": POINTS[k, :, 2] + lidar_z,
            "intensity": np.full(500, 12, np.uint8), "laser_number": np.arange(500, dtype=np.uint8) % 32,
            "offset_ns": np.arange(500, dtype=np.int32) * 1000}), src / "sensors" / "lidar" / f"{s}.feather")
    one = np.ones(N)
    feather.write_feather(pa.table({"timestamp_ns": np.array(stamps, np.int64), "qw": one, "qx": 0 * one,
                                    "qy": 0 * one, "qz": 0 * one, "tx_m": 500.0 + 1.2 * np.arange(N),
                                    "ty_m": 300.0 * one, "tz_m": 20.0 * one}), src / "city_SE3_egovehicle.feather")
    feather.write_feather(pa.table({"sensor_name": ["up_lidar", "down_lidar"], "qw": [1.0, 1.0], "qx": [0.0, 0.0],
                                    "qy": [0.0, 0.0], "qz": [0.0, 0.0], "tx_m": [1.35, 1.35], "ty_m": [0.0, 0.0],
                                    "tz_m": [lidar_z, 1.5]}), src / "calibration" / "egovehicle_SE3_sensor.feather")
    feather.write_feather(pa.table({"timestamp_ns": [stamps[1]], "track_uuid": ["u1"], "category": ["BUS"],
                                    "length_m": [12.0], "width_m": [2.5], "height_m": [3.2], "qw": [1.0],
                                    "qx": [0.0], "qy": [0.0], "qz": [0.0], "tx_m": [20.0], "ty_m": [-3.0],
                                    "tz_m": [1.6], "num_interior_pts": [300]}), src / "annotations.feather")
    out = tmp_path / "av2_bag"
    r = _import("argoverse2", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert ("lowered 0.35 m" in r.output) == (ego_above_ground > 0)
    clouds, tf = _bag(out)
    assert [c[0] for c in clouds] == stamps and clouds[0][1] == "up_lidar"
    arr = clouds[1][2]
    assert np.allclose(arr["x"], POINTS[1, :, 0] - 1.35, atol=1e-4) and np.allclose(arr["z"], POINTS[1, :, 2], atol=1e-4)
    assert "t" not in arr.dtype.names and arr["ring"][33] == 1  # sweeps are motion-compensated already
    assert abs(tf.lookup("base_link", "up_lidar", stamps[0], 0)[2, 3] - 1.84) < 0.02
    T = tf.lookup("odom", "base_link", stamps[2], 0)
    assert abs(T[0, 3] - 2.4) < 1e-6 and abs(T[2, 3]) < 1e-6
    (box,) = read_labels(out)[stamps[1]]
    # 1.6 m above the ego origin = 1.6 + ego_above_ground above the ground
    assert box.cls == "truck" and np.allclose([box.x, box.y, box.z], [21.2, -3.0, 1.6 + ego_above_ground], atol=0.02)


def test_pcd_sequence_with_tum_poses(tmp_path):
    import open3d as o3d

    src = tmp_path / "pcds"
    src.mkdir()
    ground = np.stack(np.meshgrid(np.linspace(-15, 15, 40), np.linspace(-15, 15, 40)), -1).reshape(-1, 2)
    lines = []
    for k in range(N):
        pts = np.concatenate([POINTS[k], np.c_[ground, np.full(len(ground), -1.6)]]).astype(np.float32)
        pts[:500] = POINTS[k]
        pc = o3d.t.geometry.PointCloud(o3d.core.Tensor(pts))
        o3d.t.io.write_point_cloud(str(src / f"{k:04d}.pcd"), pc)
        lines.append(f"{100.0 + 0.1 * k} {2.0 * k} 0 1.6 0 0 0 1")  # LiDAR poses, 2 m per scan
    (src / "poses.txt").write_text("# t x y z qx qy qz qw\n" + "\n".join(lines) + "\n")
    out = tmp_path / "pcd_bag"
    r = _import("pcd", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert "estimated" in r.output  # the height came from the ground, and the user is told
    _assert_bag(out, "lidar", [100 * 10**9 + 10**8 * k for k in range(N)], [0.0, 2.0, 4.0], 1.6, intensity=False)


@pytest.mark.parametrize("ext", ["pcd", "ply"])
def test_pcd_reader_keeps_points_and_intensity(tmp_path, ext):
    import open3d as o3d

    from ssm_perception.io.importers.pcd import read_cloud

    rng = np.random.default_rng(0)
    pos = rng.normal(size=(100, 3)).astype(np.float32)
    inten = rng.uniform(0, 255, (100, 1)).astype(np.float32)
    pc = o3d.t.geometry.PointCloud()
    pc.point.positions = o3d.core.Tensor(pos)
    pc.point.intensity = o3d.core.Tensor(inten)
    path = tmp_path / f"scan.{ext}"
    assert o3d.t.io.write_point_cloud(str(path), pc)
    scan = read_cloud(path)
    assert scan.dtype.names == ("x", "y", "z", "intensity")
    assert np.allclose(np.c_[scan["x"], scan["y"], scan["z"]], pos)
    assert np.allclose(scan["intensity"], inten[:, 0])
    with pytest.raises(ValueError, match="no points"):
        read_cloud(tmp_path / "missing.pcd")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "scan.xyz").write_text("0 0 0\n")
    r = _import("pcd", tmp_path / "other", "-o", tmp_path / "out_bag")
    assert r.exit_code == 2 and "no .pcd or .ply files" in r.output, r.output


def _ros1_bag(path, with_mount=True):
    from rosbags.rosbag1 import Writer

    from ssm_perception.io.importers.rosbag1 import ros1_store

    store = ros1_store()
    T = store.types

    def header(k, frame):
        return T["std_msgs/msg/Header"](seq=k, stamp=T["builtin_interfaces/msg/Time"](sec=10 + k, nanosec=0),
                                         frame_id=frame)

    def tf_msg(k, parent, child, x, z):
        tr = T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=x, y=0.0, z=z),
                                              rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
        ts = T["geometry_msgs/msg/TransformStamped"](header=header(k, parent), child_frame_id=child, transform=tr)
        return store.serialize_ros1(T["tf2_msgs/msg/TFMessage"](transforms=[ts]), "tf2_msgs/msg/TFMessage")

    with Writer(path) as w:
        tf_conn = w.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=store)
        static = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=store)
        pc_conn = w.add_connection("/velodyne_points", "sensor_msgs/msg/PointCloud2", typestore=store)
        if with_mount:
            w.write(static, 10 * 10**9, tf_msg(0, "base_link", "velodyne", 0.0, 1.7))
        for k in range(N):
            w.write(tf_conn, (10 + k) * 10**9, tf_msg(k, "odom", "base_link", float(k), 0.0))
            fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1)
                      for i, n in enumerate("xyz")]
            data = np.ascontiguousarray(POINTS[k]).view(np.uint8).reshape(-1)
            msg = T["sensor_msgs/msg/PointCloud2"](header=header(k, "velodyne"), height=1, width=500, fields=fields,
                                                   is_bigendian=False, point_step=12, row_step=6000, data=data,
                                                   is_dense=True)
            w.write(pc_conn, (10 + k) * 10**9, store.serialize_ros1(msg, "sensor_msgs/msg/PointCloud2"))
    return path


def test_rosbag1(tmp_path):
    path = _ros1_bag(tmp_path / "drive.bag")
    out = tmp_path / "ros2_bag"
    r = _import("rosbag1", path, "-o", out)
    assert r.exit_code == 0, r.output
    assert "/velodyne_points" in r.output  # the user is told which topic to configure
    clouds, tf = _bag(out, "/velodyne_points")
    assert [c[0] for c in clouds] == [(10 + k) * 10**9 for k in range(N)]
    assert np.allclose(clouds[2][2]["y"], POINTS[2, :, 1]) and tf.lookup("odom", "base_link", 12 * 10**9, 0)[0, 3] == 2
    assert tf.lookup("base_link", "velodyne", 12 * 10**9, 0)[2, 3] == 1.7


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith("bag"))


@pytest.mark.parametrize("case", ["unknown_format", "missing_poses", "count_mismatch", "unreadable_scan",
                                  "nuscenes_missing_file", "rosbag1_no_odom", "rosbag1_no_mount"])
def test_failures_are_one_line_exit_2_and_leave_nothing(tmp_path, case):
    src = tmp_path / "seq"
    (src / "velodyne").mkdir(parents=True)
    for k in range(N):
        np.zeros((10, 4), np.float32).tofile(src / "velodyne" / f"{k:06d}.bin")
    (src / "calib.txt").write_text("Tr: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    fmt = "kitti"
    if case == "unknown_format":
        fmt = "lyft"
    elif case == "count_mismatch":
        (src / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n" * (N - 1))
    elif case == "unreadable_scan":
        (src / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n" * N)
        (src / "velodyne" / f"{N - 1:06d}.bin").write_bytes(b"\x00" * 10)  # not a multiple of 16 bytes
    elif case == "nuscenes_missing_file":
        fmt, src = "nuscenes", _nuscenes(tmp_path / "nus", with_annotations=False)
        (src / "samples" / "LIDAR_TOP" / "n1.pcd.bin").unlink()
    elif case == "rosbag1_no_odom":
        from rosbags.rosbag1 import Writer

        from ssm_perception.io.importers.rosbag1 import ros1_store

        store = ros1_store()
        fmt, src = "rosbag1", tmp_path / "x.bag"
        with Writer(src) as w:
            w.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=store)
            w.add_connection("/points", "sensor_msgs/msg/PointCloud2", typestore=store)
    elif case == "rosbag1_no_mount":  # odom -> base_link but nothing links base_link to the cloud's frame
        fmt, src = "rosbag1", _ros1_bag(tmp_path / "y.bag", with_mount=False)
    out = tmp_path / "out_bag"
    r = _import(fmt, src, "-o", out)
    assert r.exit_code == 2, r.output
    lines = [s for s in r.output.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("import failed: "), r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
