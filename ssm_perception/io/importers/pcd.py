"""Generic PCD/PLY sequence (read with open3d) with a poses file of the LiDAR (or base_link).

SRC: a directory of .pcd or .ply files, in name order, one scan each. Poses: --poses FILE or
SRC/poses.txt, one line per scan: TUM (timestamp tx ty tz qx qy qz qw; the stamps come from it) or
KITTI (12 numbers, a 3x4 pose; stamps from --times FILE or --rate-hz). The poses are of the LiDAR
(--poses-frame lidar, the default) or of base_link (--poses-frame base), in any fixed world frame;
odom is the first pose's frame. base_link is on the ground under the LiDAR with the LiDAR's axes;
its height is --lidar-height, else estimated from the first scan's ground plane (and printed).
Intensity is carried when the file has it (else absent: the node then uses the training median).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssm_perception.io.importers import (
    NS,
    ImportFailure,
    ImportOptions,
    Recording,
    Scan,
    structured,
    translation,
)


def read_cloud(path: Path) -> np.ndarray:
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pcd.point or len(pcd.point.positions) == 0:
        raise ValueError(f"{path.name}: no points could be read")
    pos = pcd.point.positions.numpy().astype(np.float32).reshape(-1, 3)
    cols = {"x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2]}
    if "intensity" in pcd.point:
        cols["intensity"] = pcd.point.intensity.numpy().reshape(-1).astype(np.float32)
    return structured(cols)


def read_poses(path: Path) -> tuple[list[np.ndarray], list[float] | None]:
    """(4x4 poses, TUM times or None) from a TUM or KITTI pose file (format from the column count)."""
    import transforms3d as t3

    poses, times, width = [], [], None
    for k, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            v = [float(x) for x in line.replace(",", " ").split()]
        except ValueError:
            raise ImportFailure(f"{path}:{k}: not numbers") from None
        if len(v) not in (8, 12) or (width is not None and len(v) != width):
            raise ImportFailure(f"{path}:{k}: {len(v)} numbers; TUM has 8 per line, KITTI 12")
        width = len(v)
        T = np.eye(4)
        if width == 8:
            times.append(v[0])
            T[:3, 3] = v[1:4]
            T[:3, :3] = t3.quaternions.quat2mat([v[7], v[4], v[5], v[6]])
        else:
            T[:3, :] = np.array(v).reshape(3, 4)
        poses.append(T)
    if not poses:
        raise ImportFailure(f"{path}: no poses")
    return poses, (times if width == 8 else None)


def load(src: Path, opts: ImportOptions) -> Recording:
    from ssm_perception.bev.lidar_input import fit_ground

    if not src.is_dir():
        raise ImportFailure(f"{src}: expected a directory of .pcd/.ply files")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".pcd", ".ply"))
    if not files:
        raise ImportFailure(f"{src}: no .pcd or .ply files")
    pose_path = opts.poses or src / "poses.txt"
    if not Path(pose_path).is_file():
        raise ImportFailure(f"missing poses: {pose_path} (pass --poses FILE, TUM or KITTI format)")
    poses, times = read_poses(Path(pose_path))
    if len(poses) != len(files):
        raise ImportFailure(f"{pose_path}: {len(poses)} poses for {len(files)} scans")
    notes = []
    if times is not None:
        stamps = [round(t * NS) for t in times]
        if stamps[0] <= 0:
            stamps = [s + opts.start_ns for s in stamps]
    elif opts.times is not None:
        t = [float(x) for x in Path(opts.times).read_text().split()]
        if len(t) != len(files):
            raise ImportFailure(f"{opts.times}: {len(t)} times for {len(files)} scans")
        stamps = [opts.start_ns + round(v * NS) for v in t]
    else:
        stamps = [opts.start_ns + round(k * NS / opts.rate_hz) for k in range(len(files))]
        notes.append(f"KITTI poses without --times: scans stamped at {opts.rate_hz:g} Hz")
    h = opts.lidar_height
    if h is None:
        try:
            first = read_cloud(files[0])
        except (OSError, ValueError, RuntimeError) as exc:
            raise ImportFailure(f"unreadable scan {files[0]}: {exc}") from None
        xyz = np.stack([first["x"], first["y"], first["z"]], 1).astype(np.float64)
        fit = fit_ground(xyz, np.zeros(3))
        if fit is None:
            raise ImportFailure(f"cannot find the ground in {files[0].name} to estimate the LiDAR height: pass "
                                "--lidar-height")
        h = -fit[1]
        notes.append(f"LiDAR height {h:.2f} m estimated from the ground in {files[0].name} (--lidar-height to set it)")
    T_base_lidar = translation(h)
    if opts.poses_frame in ("auto", "lidar"):
        base = [T @ np.linalg.inv(T_base_lidar) for T in poses]
    elif opts.poses_frame == "base":
        base = poses
    else:
        raise ImportFailure(f"--poses-frame must be lidar or base for pcd, got {opts.poses_frame!r}")
    inv0 = np.linalg.inv(base[0])
    scans = [Scan(s, (lambda p=p: read_cloud(p)), inv0 @ T) for s, p, T in zip(stamps, files, base, strict=True)]
    return Recording(scans, T_base_lidar, opts.lidar_frame or "lidar", notes=notes)
