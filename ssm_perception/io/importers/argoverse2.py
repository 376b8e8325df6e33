"""Argoverse 2 sensor log: sensors/lidar/<timestamp_ns>.feather sweeps, city_SE3_egovehicle.feather,
calibration/egovehicle_SE3_sensor.feather, annotations.feather (optional); pyarrow reads feather.

Sweeps hold both LiDARs' returns in the ego-vehicle frame (x, y, z, intensity 0..255, laser_number,
offset_ns); the bag carries them in the up_lidar frame (base_link <- up_lidar from the calibration),
as a driver would publish them, with ring = laser_number. No per-point time: the sweeps are already
motion-compensated to the sweep stamp (av2-api, structures/sweep.py), so a `t` field would make the
encoder deskew them a second time. base_link is the AV2
ego-vehicle frame; odom is the first pose's position and heading in the city frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssm_perception.io.importers import (
    ImportFailure,
    ImportOptions,
    Recording,
    Scan,
    need_file,
    planar_odom,
    put_base_on_ground,
    quat_wxyz_matrix,
    structured,
    yaw_of_matrix,
)
from ssm_perception.io.labels import LabelBox

SENSOR = "up_lidar"
CLASS_MAP = {"REGULAR_VEHICLE": "car", "LARGE_VEHICLE": "truck", "BUS": "truck", "BOX_TRUCK": "truck",
             "TRUCK": "truck", "TRUCK_CAB": "truck", "VEHICULAR_TRAILER": "truck", "SCHOOL_BUS": "truck",
             "ARTICULATED_BUS": "truck", "MESSAGE_BOARD_TRAILER": "truck", "BICYCLIST": "cyclist",
             "MOTORCYCLIST": "cyclist", "BICYCLE": "cyclist", "MOTORCYCLE": "cyclist", "PEDESTRIAN": "pedestrian"}


def read_feather(path: Path) -> dict[str, np.ndarray]:
    from pyarrow import feather

    try:
        table = feather.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ImportFailure(f"{path}: unreadable feather file: {exc}") from None
    return {c: table.column(c).to_numpy() for c in table.column_names}


def _need(cols: dict, names: tuple[str, ...], path: Path) -> None:
    missing = [c for c in names if c not in cols]
    if missing:
        raise ImportFailure(f"{path}: missing columns {missing}")


def _pose(c: dict, i: int) -> np.ndarray:
    return quat_wxyz_matrix([c["qw"][i], c["qx"][i], c["qy"][i], c["qz"][i]], [c["tx_m"][i], c["ty_m"][i],
                                                                             c["tz_m"][i]])


def load(src: Path, opts: ImportOptions) -> Recording:
    lidar_dir = src / "sensors" / "lidar"
    sweeps = sorted(lidar_dir.glob("*.feather")) if lidar_dir.is_dir() else []
    if not sweeps:
        raise ImportFailure(f"{src}: no LiDAR sweeps in {lidar_dir}")
    try:
        stamps = [int(p.stem) for p in sweeps]
    except ValueError:
        raise ImportFailure(f"{lidar_dir}: sweep names must be integer nanosecond stamps") from None
    pose_path = need_file(src / "city_SE3_egovehicle.feather", "poses")
    poses = read_feather(pose_path)
    _need(poses, ("timestamp_ns", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"), pose_path)
    index = {int(t): i for i, t in enumerate(poses["timestamp_ns"])}
    missing = [t for t in stamps if t not in index]
    if missing:
        raise ImportFailure(f"missing poses: {len(missing)} of {len(stamps)} sweeps have no pose in {pose_path} "
                            f"(first at {missing[0]})")
    cal_path = need_file(src / "calibration" / "egovehicle_SE3_sensor.feather", "calibration")
    cal = read_feather(cal_path)
    _need(cal, ("sensor_name", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"), cal_path)
    names = [str(s) for s in cal["sensor_name"]]
    if SENSOR not in names:
        raise ImportFailure(f"{cal_path}: no {SENSOR} (has {names})")
    T_base_lidar = _pose(cal, names.index(SENSOR))
    T_lidar_base = np.linalg.inv(T_base_lidar)
    world = {t: _pose(poses, index[t]) for t in stamps}
    odom, T_odom_world = planar_odom([world[t] for t in stamps])

    def sweep(path: Path) -> np.ndarray:
        c = read_feather(path)
        _need(c, ("x", "y", "z", "intensity"), path)
        xyz = np.stack([c["x"], c["y"], c["z"]], 1).astype(np.float64) @ T_lidar_base[:3, :3].T + T_lidar_base[:3, 3]
        cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": c["intensity"].astype(np.float32)}
        if "laser_number" in c:
            cols["ring"] = c["laser_number"].astype(np.uint16)
        return structured(cols)

    scans = [Scan(t, (lambda p=p: sweep(p)), T) for t, p, T in zip(stamps, sweeps, odom, strict=True)]
    rec = Recording(scans, T_base_lidar, opts.lidar_frame or SENSOR)
    ann_path = src / "annotations.feather"
    if ann_path.is_file():
        a = read_feather(ann_path)
        _need(a, ("timestamp_ns", "track_uuid", "category", "length_m", "width_m", "height_m", "qw", "qx", "qy",
                  "qz", "tx_m", "ty_m", "tz_m"), ann_path)
        known = set(stamps)
        for i in range(len(a["timestamp_ns"])):
            t = int(a["timestamp_ns"][i])
            if t not in known:
                continue
            T = T_odom_world @ world[t] @ _pose(a, i)  # annotations are in the ego frame at t
            rec.boxes.append(LabelBox(t, str(a["track_uuid"][i]), CLASS_MAP.get(str(a["category"][i]), "other"),
                                      float(T[0, 3]), float(T[1, 3]), float(T[2, 3]), float(a["length_m"][i]),
                                      float(a["width_m"][i]), float(a["height_m"][i]), yaw_of_matrix(T),
                                      num_points=int(a["num_interior_pts"][i]) if "num_interior_pts" in a else None))
    put_base_on_ground(rec, "Argoverse 2 ego-vehicle")
    return rec
