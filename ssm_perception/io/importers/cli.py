"""`ssm-perception import FORMAT SRC -o BAG`: bring a recording in (see io/importers/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def import_recording(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="kitti | nuscenes | argoverse2 | pcd | rosbag1"),
    src: Path = typer.Argument(..., help="the dataset sequence / log directory, or the ROS 1 bag file"),  # noqa: B008
    out: Path = typer.Option(..., "-o", "--out", help="rosbag2 directory to create (must not exist)"),  # noqa: B008
    poses: Path = typer.Option(None, help="poses file (kitti: KITTI odometry; pcd: TUM or KITTI)"),  # noqa: B008
    calib: Path = typer.Option(None, help="kitti: calib.txt with Tr (velodyne -> cam0)"),  # noqa: B008
    labels: Path = typer.Option(None, help="kitti: tracking label file (label_02 format)"),  # noqa: B008
    times: Path = typer.Option(None, help="one time [s] per scan (kitti, pcd with KITTI poses)"),  # noqa: B008
    rate_hz: float = typer.Option(10.0, help="scan rate when the source has no times"),
    lidar_height: float = typer.Option(None, help="kitti/pcd: LiDAR height above the ground [m]"),
    poses_frame: str = typer.Option("auto", help="kitti: camera|lidar (auto = camera); pcd: lidar|base"),
    scene: str = typer.Option("", help="nuscenes: scene name (default: the first)"),
    lidar_topic: str = typer.Option("/sensing/lidar/points", help="PointCloud2 topic in the bag"),
    lidar_frame: str = typer.Option("", help="frame_id of the clouds (default: velodyne, lidar_top, up_lidar, lidar)"),
    max_scans: int = typer.Option(0, help="import only the first N scans (0 = all)"),
    progress: bool = typer.Option(True, help="progress bar"),
) -> None:
    """Import a recording into a rosbag2 with /tf, /tf_static and PointCloud2 (and labels.jsonl)."""
    import json

    from ssm_perception.io.importers import ImportFailure, ImportOptions, run_import

    opts = ImportOptions(poses=poses, calib=calib, labels=labels, times=times, rate_hz=rate_hz,
                         lidar_height=lidar_height, poses_frame=poses_frame, scene=scene, lidar_topic=lidar_topic,
                         lidar_frame=lidar_frame,
                         max_scans=max_scans)
    try:
        summary = run_import(fmt, src, out, opts, progress=progress)
    except ImportFailure as exc:
        typer.secho(f"import failed: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    for note in summary.get("notes", []):
        typer.echo(f"note: {note}")
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "notes"}))


def register(app: typer.Typer) -> None:
    app.command("import")(import_recording)
