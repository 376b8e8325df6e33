"""KITTI: velodyne .bin scans (float32 x, y, z, reflectance in 0..1) with poses or OXTS.

Layout (SRC is a sequence directory; files found by these names unless given as options):
  velodyne/*.bin (odometry, tracking) or velodyne_points/data/*.bin (raw)
  poses: --poses FILE or SRC/poses.txt (KITTI odometry: 12 numbers per line, a 3x4 pose per scan,
         of the left camera cam0 unless --poses-frame lidar), with calib.txt (line "Tr:" or
         "Tr_velo_cam", velodyne -> cam0) for camera poses;
  or OXTS: SRC/oxts/data/*.txt (raw) or SRC/oxts.txt (tracking), with calib_imu_to_velo.txt (R, T)
  times: --times FILE or SRC/times.txt (s) or SRC/velodyne_points/timestamps.txt; else --rate-hz
  labels: --labels FILE or SRC/label_02.txt (tracking: frame id type ... h w l x y z ry, camera frame)
base_link is on the ground under the LiDAR, axes of the velodyne (x forward, y left, z up); its
height is --lidar-height or 1.73 m, the mounting height in the KITTI setup description.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np

from ssm_perception.io.importers import (
    NS,
    ImportFailure,
    ImportOptions,
    Recording,
    Scan,
    planar_odom,
    structured,
    translation,
    yaw_of_matrix,
)
from ssm_perception.io.labels import LabelBox

KITTI_LIDAR_HEIGHT = 1.73  # [m] velodyne above the ground (KITTI sensor setup)
CLASS_MAP = {"Car": "car", "Van": "car", "Truck": "truck", "Tram": "truck", "Pedestrian": "pedestrian",
             "Person_sitting": "pedestrian", "Person": "pedestrian", "Cyclist": "cyclist", "Misc": "other"}


def read_bin(path: Path) -> np.ndarray:
    a = np.fromfile(path, dtype="<f4")
    if a.size % 4:
        raise ValueError(f"{path.name}: {a.size} floats, not a multiple of 4 (x, y, z, reflectance)")
    a = a.reshape(-1, 4)
    return structured({"x": a[:, 0], "y": a[:, 1], "z": a[:, 2], "intensity": a[:, 3]})


def _rows(path: Path, n: int) -> np.ndarray:
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise ImportFailure(f"{path}:{k}: not numbers") from None
        if len(vals) != n:
            raise ImportFailure(f"{path}:{k}: {len(vals)} numbers, expected {n}")
        rows.append(vals)
    return np.array(rows, dtype=np.float64).reshape(-1, n)


def kitti_poses(path: Path) -> list[np.ndarray]:
    out = []
    for r in _rows(path, 12):
        T = np.eye(4)
        T[:3, :] = r.reshape(3, 4)
        out.append(T)
    return out


def read_calib(path: Path) -> dict[str, np.ndarray]:
    d = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            key, _, rest = line.partition(" ")
        else:
            key, _, rest = line.partition(":")
        try:
            d[key.strip()] = np.array([float(v) for v in rest.split()])
        except ValueError:
            continue  # e.g. calib_time
    return d


def _velo_to_cam(calib: dict) -> np.ndarray | None:
    for key in ("Tr", "Tr_velo_cam", "Tr_velo_to_cam"):
        if key in calib and calib[key].size == 12:
            T = np.eye(4)
            T[:3, :] = calib[key].reshape(3, 4)
            return T
    if "R" in calib and "T" in calib and calib["R"].size == 9:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = calib["R"].reshape(3, 3), calib["T"]
        return T
    return None


def oxts_poses(rows: np.ndarray) -> list[np.ndarray]:
    """World (east, north, up; Mercator at the first latitude) <- IMU for OXTS rows (lat, lon, alt,
    roll, pitch, yaw, ...), the projection the KITTI raw data description uses."""
    import transforms3d as t3

    er = 6378137.0
    scale = math.cos(math.radians(rows[0, 0]))
    out = []
    for lat, lon, alt, roll, pitch, yaw in rows[:, :6]:
        T = np.eye(4)
        T[0, 3] = scale * math.radians(lon) * er
        T[1, 3] = scale * er * math.log(math.tan(math.radians(90.0 + lat) / 2.0))
        T[2, 3] = alt
        T[:3, :3] = t3.euler.euler2mat(roll, pitch, yaw, axes="sxyz")
        out.append(T)
    return out


def _times(src: Path, opts: ImportOptions, n: int, notes: list[str]) -> list[int]:
    path = opts.times or next((p for p in (src / "times.txt",) if p.is_file()), None)
    if path is not None:
        t = _rows(Path(path), 1)[:, 0]
        if len(t) != n:
            raise ImportFailure(f"{path}: {len(t)} times for {n} scans")
        return [opts.start_ns + round(v * NS) for v in t]
    ts = src / "velodyne_points" / "timestamps.txt"
    if ts.is_file():
        lines = [s for s in ts.read_text().splitlines() if s.strip()]
        if len(lines) != n:
            raise ImportFailure(f"{ts}: {len(lines)} timestamps for {n} scans")
        out = []
        for s in lines:
            day, _, frac = s.strip().partition(".")
            t = dt.datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
            out.append(int(t.timestamp()) * NS + int((frac + "000000000")[:9]))
        return out
    notes.append(f"no times file: scans stamped at {opts.rate_hz:g} Hz")
    return [opts.start_ns + round(k * NS / opts.rate_hz) for k in range(n)]


def load(src: Path, opts: ImportOptions) -> Recording:
    notes: list[str] = []
    bins = next((sorted(d.glob("*.bin")) for d in (src / "velodyne", src / "velodyne_points" / "data", src)
                 if d.is_dir() and any(d.glob("*.bin"))), [])
    if not bins:
        raise ImportFailure(f"{src}: no velodyne .bin scans (looked in velodyne/, velodyne_points/data/, .)")
    n = len(bins)
    h = KITTI_LIDAR_HEIGHT if opts.lidar_height is None else opts.lidar_height
    T_base_velo = translation(h)
    poses_path = opts.poses or (src / "poses.txt" if (src / "poses.txt").is_file() else None)
    calib_path = opts.calib or next((p for p in (src / "calib.txt", src / "calib_velo_to_cam.txt")
                                     if p.is_file()), None)
    calib = {} if calib_path is None else read_calib(Path(calib_path))
    Tr = _velo_to_cam(calib)
    if poses_path is not None:
        P = kitti_poses(Path(poses_path))
        if len(P) != n:
            raise ImportFailure(f"{poses_path}: {len(P)} poses for {n} scans")
        frame = opts.poses_frame if opts.poses_frame != "auto" else "camera"
        if frame not in ("camera", "lidar"):
            raise ImportFailure(f"--poses-frame must be camera or lidar for kitti, got {frame!r}")
        if frame == "camera":
            if Tr is None:
                raise ImportFailure(f"camera poses ({poses_path}) need the velodyne -> cam0 transform: calib.txt "
                                    "with a 'Tr:' line (or --calib), or --poses-frame lidar")
            velo = [T @ Tr for T in P]
        else:
            velo = P
        # odom = the velodyne frame of the first scan (the KITTI camera world is not z-up)
        inv0 = np.linalg.inv(velo[0])
        T_odom_base = [T_base_velo @ inv0 @ T @ np.linalg.inv(T_base_velo) for T in velo]
    else:
        oxts_files = sorted((src / "oxts" / "data").glob("*.txt")) if (src / "oxts" / "data").is_dir() else []
        if oxts_files:
            rows = np.stack([_rows(f, 30)[0] for f in oxts_files])
        elif (src / "oxts.txt").is_file():
            rows = _rows(src / "oxts.txt", 30)
        else:
            raise ImportFailure(f"missing poses: no --poses, {src / 'poses.txt'}, {src / 'oxts'}/data or "
                                f"{src / 'oxts.txt'}")
        if len(rows) != n:
            raise ImportFailure(f"{len(rows)} OXTS records for {n} scans")
        imu_calib = src / "calib_imu_to_velo.txt"
        if not imu_calib.is_file():
            raise ImportFailure(f"OXTS poses need the IMU -> velodyne calibration: missing {imu_calib}")
        T_velo_imu = _velo_to_cam(read_calib(imu_calib))
        if T_velo_imu is None:
            raise ImportFailure(f"{imu_calib}: no R and T lines")
        world_velo = [T @ np.linalg.inv(T_velo_imu) for T in oxts_poses(rows)]
        T_odom_base, _ = planar_odom([T @ np.linalg.inv(T_base_velo) for T in world_velo])
    stamps = _times(src, opts, n, notes)
    scans = [Scan(s, (lambda p=p: read_bin(p)), T) for s, p, T in zip(stamps, bins, T_odom_base, strict=True)]
    rec = Recording(scans, T_base_velo, opts.lidar_frame or "velodyne", notes=notes)
    label_path = opts.labels or (src / "label_02.txt" if (src / "label_02.txt").is_file() else None)
    if label_path is not None:
        if Tr is None:
            raise ImportFailure(f"labels ({label_path}) are in the camera frame: calib with 'Tr_velo_cam' needed")
        rec.boxes = _labels(Path(label_path), rec, Tr, T_base_velo)
    return rec


def _labels(path: Path, rec: Recording, Tr: np.ndarray, T_base_velo: np.ndarray) -> list[LabelBox]:
    """KITTI tracking labels (camera frame, bottom centre, yaw about camera y) -> boxes in odom."""
    inv_tr = np.linalg.inv(Tr)
    boxes = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 17:
            raise ImportFailure(f"{path}:{k}: {len(f)} fields, a KITTI tracking label has 17")
        frame, tid, typ = int(f[0]), f[1], f[2]
        if typ == "DontCare":
            continue
        if frame >= len(rec.scans):
            raise ImportFailure(f"{path}:{k}: frame {frame} but only {len(rec.scans)} scans")
        h, w, l_, x, y, z, ry = (float(v) for v in f[10:17])
        c_velo = inv_tr @ np.array([x, y - h / 2.0, z, 1.0])
        T_odom_velo = rec.scans[frame].T_odom_base @ T_base_velo
        c = T_odom_velo @ c_velo
        yaw = -ry - math.pi / 2.0 + yaw_of_matrix(T_odom_velo)
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        boxes.append(LabelBox(rec.scans[frame].stamp_ns, tid, CLASS_MAP.get(typ, "other"), float(c[0]), float(c[1]),
                              float(c[2]), l_, w, h, yaw))
    return boxes
