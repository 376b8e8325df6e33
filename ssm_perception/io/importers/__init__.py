"""Importers: public dataset layouts and ROS 1 bags -> a rosbag2 the node, `replay` and `evaluate` read.

Output bag (mcap): /tf_static base_link -> <lidar frame> (latched), /tf odom -> base_link at every
scan stamp, the LiDAR as sensor_msgs/PointCloud2 in its own frame at its own stamp (fields x, y, z,
intensity as the dataset gives it, ring where known; no per-point time) on the configured
LiDAR topic, and, where the dataset has boxes, labels.jsonl (io/labels.py) inside the bag directory.
Every failure is an ``ImportFailure`` with one line; nothing is left at the output path (the bag is
written in a hidden temporary directory next to it and renamed at the end).

One module per format (kitti, nuscenes, argoverse2, pcd, rosbag1); each turns its source into a
``Recording`` and ``write_recording`` writes it, except rosbag1 (converted by rosbags).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssm_perception.io.labels import LABEL_FILE, LabelBox, write_labels

FORMATS = ("kitti", "nuscenes", "argoverse2", "pcd", "rosbag1")
NS = 1_000_000_000


class ImportFailure(RuntimeError):
    """A source that cannot be imported; the message is one line for the user."""


@dataclass
class ImportOptions:
    poses: Path | None = None  # poses file (kitti, pcd)
    calib: Path | None = None  # calibration file (kitti)
    labels: Path | None = None  # label file of the source (kitti tracking)
    times: Path | None = None  # one time [s] per scan (kitti, pcd with KITTI poses)
    rate_hz: float = 10.0  # scan rate when the source has no times
    lidar_height: float | None = None  # [m] base_link (ground) -> LiDAR; None: the format's rule
    poses_frame: str = "auto"  # kitti/pcd: "camera" (KITTI odometry cam0 poses), "lidar", "auto"
    scene: str = ""  # nuscenes: scene name (default: the first)
    lidar_topic: str = "/sensing/lidar/points"
    lidar_frame: str = ""  # default: the format's name of its LiDAR
    max_scans: int = 0  # 0 = all
    start_ns: int = NS  # stamp of the first scan when the source has only relative times


@dataclass
class Scan:
    stamp_ns: int
    load: Callable[[], np.ndarray]  # structured points (x, y, z, intensity?, t?, ring?) in the LiDAR frame
    T_odom_base: np.ndarray  # 4x4


@dataclass
class Recording:
    scans: list[Scan]
    T_base_lidar: np.ndarray
    lidar_frame: str
    boxes: list[LabelBox] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ helpers
def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ImportFailure(f"missing {what}: {path}")
    return path


def planar_odom(T_world_base: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Poses in an odom frame at the first pose's position and heading, z up kept (for gravity-aligned
    worlds: UTM/ENU/city frames). Returns (T_odom_base list, T_odom_world)."""
    T0 = T_world_base[0]
    yaw = np.arctan2(T0[1, 0], T0[0, 0])
    W = np.eye(4)
    W[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    W[:3, 3] = T0[:3, 3]
    T_odom_world = np.linalg.inv(W)
    return [T_odom_world @ T for T in T_world_base], T_odom_world


def quat_wxyz_matrix(q, t) -> np.ndarray:
    import transforms3d as t3

    T = np.eye(4)
    T[:3, :3] = t3.quaternions.quat2mat(np.asarray(q, dtype=np.float64))
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    return T


def translation(z: float) -> np.ndarray:
    T = np.eye(4)
    T[2, 3] = z
    return T


def structured(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Structured cloud from named columns (x, y, z float32; intensity, t float32; ring uint16)."""
    kinds = {"ring": "<u2"}
    n = len(columns["x"])
    out = np.empty(n, dtype=[(k, kinds.get(k, "<f4")) for k in columns])
    for k, v in columns.items():
        out[k] = v
    return out


def yaw_of_matrix(T: np.ndarray) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def put_base_on_ground(rec: Recording, what: str, scans: int = 3, tolerance_m: float = 0.1) -> None:
    """Move base_link onto the ground when the dataset's ego frame is above it (Argoverse 2's origin is
    the rear axle, ~0.35 m up): the ground height in the ego frame is fitted on the first scans
    (bev.lidar_input.fit_ground, median); beyond ``tolerance_m`` base_link becomes the ego frame
    lowered by it; odom (at the first base_link) moves down with it, and poses, mount and boxes follow."""
    from ssm_perception.bev.lidar_input import fit_ground

    T = rec.T_base_lidar
    zs = []
    for s in rec.scans[:scans]:
        try:
            p = s.load()
        except (OSError, ValueError):
            continue
        xyz = np.stack([p["x"], p["y"], p["z"]], 1).astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        fit = fit_ground(xyz, T[:3, 3])
        if fit is not None:
            zs.append(fit[1])
    if not zs:
        rec.notes.append(f"ground not found in the first scans: base_link kept as the {what} frame")
        return
    z0 = float(np.median(zs))
    if abs(z0) <= tolerance_m:
        return
    T_ego_base = translation(z0)  # base_link: on the ground under the ego origin
    T_base_ego = np.linalg.inv(T_ego_base)
    rec.T_base_lidar = T_base_ego @ T
    for s in rec.scans:
        s.T_odom_base = T_base_ego @ s.T_odom_base @ T_ego_base  # odom moves down with base_link
    for b in rec.boxes:
        b.z -= z0
    rec.notes.append(f"base_link = the {what} frame lowered {-z0:.2f} m onto the ground (fitted on the first "
                     f"scans); LiDAR at {rec.T_base_lidar[2, 3]:.2f} m")


def check_stamps(stamps: list[int]) -> None:
    if any(b <= a for a, b in itertools.pairwise(stamps)):
        raise ImportFailure("scan stamps are not strictly increasing")


# ------------------------------------------------------------------------------------ writing
def atomic_output(out: Path):
    """(hidden build directory next to ``out``, the bag path inside it, the parent folders created for
    ``out``): the bag is built there and renamed to ``out`` when complete."""
    out = Path(out)
    if out.exists():
        raise ImportFailure(f"{out}: already exists, not overwriting")
    from ssm_perception.io.bag import BagError, make_parents

    try:
        made = make_parents(out)
    except BagError as exc:
        raise ImportFailure(str(exc)) from None
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    return tmp, tmp / out.name, made


def write_recording(rec: Recording, out: Path, opts: ImportOptions, progress: bool = True) -> dict:
    """Write ``rec`` as a rosbag2 at ``out`` (see the module docstring); returns a summary dict."""
    from tqdm import tqdm

    from ssm_perception.io import bag as B

    if not rec.scans:
        raise ImportFailure("no scans to import")
    check_stamps([s.stamp_ns for s in rec.scans])
    tmp, bag_path, made = atomic_output(out)
    n_points = 0
    try:
        with B.BagWriter(bag_path, storage="mcap", custom_data={"ssm_perception.import": rec.lidar_frame}) as bag:
            bag.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
            bag.add_topic("/tf", "tf2_msgs/msg/TFMessage")
            bag.add_topic(opts.lidar_topic, "sensor_msgs/msg/PointCloud2")
            t0 = rec.scans[0].stamp_ns
            bag.write("/tf_static", t0, B.tf_message([(rec.T_base_lidar, t0, "base_link", rec.lidar_frame)]))
            for s in tqdm(rec.scans, unit="scan", desc="import", disable=not progress, leave=False):
                try:
                    pts = s.load()
                except (OSError, ValueError) as exc:
                    raise ImportFailure(f"unreadable scan at {s.stamp_ns * 1e-9:.3f} s: {exc}") from None
                if not np.all(np.isfinite(s.T_odom_base)):
                    raise ImportFailure(f"non-finite pose at {s.stamp_ns * 1e-9:.3f} s")
                bag.write("/tf", s.stamp_ns, B.tf_message([(s.T_odom_base, s.stamp_ns, "odom", "base_link")]))
                bag.write(opts.lidar_topic, s.stamp_ns, B.pointcloud2_msg(pts, s.stamp_ns, rec.lidar_frame))
                n_points += len(pts)
        if rec.boxes:
            write_labels(bag_path / LABEL_FILE, rec.boxes)
        os.rename(bag_path, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        B.remove_made(made)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return {"bag": str(out), "scans": len(rec.scans), "points": n_points, "boxes": len(rec.boxes),
            "lidar_frame": rec.lidar_frame, "duration_s": (rec.scans[-1].stamp_ns - t0) * 1e-9, "notes": rec.notes}


def run_import(fmt: str, src: Path, out: Path, opts: ImportOptions, progress: bool = True) -> dict:
    """Import ``src`` in format ``fmt`` into the bag ``out``; ImportFailure on any problem."""
    import importlib

    if fmt not in FORMATS:
        raise ImportFailure(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    src = Path(src)
    if not src.exists():
        raise ImportFailure(f"{src}: no such file or directory")
    mod = importlib.import_module(f"ssm_perception.io.importers.{fmt}")
    if hasattr(mod, "convert"):  # formats that are bags already (rosbag1)
        return mod.convert(src, Path(out), opts)
    rec = mod.load(src, opts)
    if opts.max_scans:
        rec.scans = rec.scans[: opts.max_scans]
        last = rec.scans[-1].stamp_ns
        rec.boxes = [b for b in rec.boxes if b.stamp_ns <= last]
    return write_recording(rec, Path(out), opts, progress)
