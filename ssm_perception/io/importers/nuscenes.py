"""nuScenes layout: .pcd.bin scans (float32 x, y, z, intensity 0..255, ring) and the JSON tables.

SRC is the dataroot: samples/LIDAR_TOP/*.pcd.bin, sweeps/LIDAR_TOP/*.pcd.bin and a table directory
(v1.0-*/ or SRC itself) with sample_data, ego_pose, calibrated_sensor, sensor, sample, scene .json;
sample_annotation, instance and category .json for boxes (key frames). One scene is imported
(--scene NAME, default the first by name); key frames and sweeps of LIDAR_TOP, in time order.
base_link is the nuScenes ego frame; odom is the first ego pose's position and heading.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssm_perception.io.importers import (
    ImportFailure,
    ImportOptions,
    Recording,
    Scan,
    planar_odom,
    put_base_on_ground,
    quat_wxyz_matrix,
    structured,
    yaw_of_matrix,
)
from ssm_perception.io.labels import LabelBox

CHANNEL = "LIDAR_TOP"


def category_class(name: str) -> str:
    if name.startswith("vehicle.car"):
        return "car"
    if name.startswith(("vehicle.truck", "vehicle.bus", "vehicle.trailer", "vehicle.construction")):
        return "truck"
    if name.startswith(("vehicle.bicycle", "vehicle.motorcycle")):
        return "cyclist"
    if name.startswith("human.pedestrian"):
        return "pedestrian"
    return "other"


def read_pcd_bin(path: Path) -> np.ndarray:
    a = np.fromfile(path, dtype="<f4")
    if a.size % 5:
        raise ValueError(f"{path.name}: {a.size} floats, not a multiple of 5 (x, y, z, intensity, ring)")
    a = a.reshape(-1, 5)
    return structured({"x": a[:, 0], "y": a[:, 1], "z": a[:, 2], "intensity": a[:, 3],
                       "ring": np.clip(a[:, 4], 0, 65535).astype(np.uint16)})


def _table_dir(src: Path) -> Path:
    if (src / "sample_data.json").is_file():
        return src
    dirs = sorted(d for d in src.glob("v1.0-*") if (d / "sample_data.json").is_file())
    if not dirs:
        raise ImportFailure(f"{src}: no nuScenes tables (sample_data.json in {src} or {src}/v1.0-*/)")
    return dirs[0]


def _table(d: Path, name: str, required: bool = True) -> list[dict]:
    p = d / f"{name}.json"
    if not p.is_file():
        if required:
            raise ImportFailure(f"missing nuScenes table: {p}")
        return []
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise ImportFailure(f"{p}: not valid JSON: {exc}") from None


def load(src: Path, opts: ImportOptions) -> Recording:
    d = _table_dir(src)
    by = {name: {r["token"]: r for r in _table(d, name)}
          for name in ("sample_data", "ego_pose", "calibrated_sensor", "sensor", "sample", "scene")}
    scenes = sorted(by["scene"].values(), key=lambda s: s.get("name", ""))
    if not scenes:
        raise ImportFailure(f"{d}/scene.json: no scenes")
    scene = next((s for s in scenes if s.get("name") == opts.scene), None) if opts.scene else scenes[0]
    if scene is None:
        raise ImportFailure(f"no scene {opts.scene!r}; scenes: {', '.join(s.get('name', '?') for s in scenes)}")
    rows = []
    for sd in by["sample_data"].values():
        cs = by["calibrated_sensor"].get(sd.get("calibrated_sensor_token"))
        sensor = by["sensor"].get(cs["sensor_token"]) if cs else None
        sample = by["sample"].get(sd.get("sample_token"))
        if sensor is None or sensor.get("channel") != CHANNEL or sample is None:
            continue
        if sample.get("scene_token") == scene["token"] and str(sd.get("filename", "")).endswith(".pcd.bin"):
            rows.append(sd)
    if not rows:
        raise ImportFailure(f"scene {scene.get('name')}: no {CHANNEL} .pcd.bin sample_data")
    rows.sort(key=lambda r: r["timestamp"])
    cs0 = by["calibrated_sensor"][rows[0]["calibrated_sensor_token"]]
    T_base_lidar = quat_wxyz_matrix(cs0["rotation"], cs0["translation"])
    world = []
    for r in rows:
        ep = by["ego_pose"].get(r.get("ego_pose_token"))
        if ep is None:
            raise ImportFailure(f"missing poses: no ego_pose for sample_data {r['token']}")
        world.append(quat_wxyz_matrix(ep["rotation"], ep["translation"]))
    T_odom_base, T_odom_world = planar_odom(world)
    scans = []
    for r, T in zip(rows, T_odom_base, strict=True):
        path = src / r["filename"]
        if not path.is_file():
            raise ImportFailure(f"missing scan file: {path}")
        scans.append(Scan(int(r["timestamp"]) * 1000, (lambda p=path: read_pcd_bin(p)), T))
    rec = Recording(scans, T_base_lidar, opts.lidar_frame or "lidar_top")
    ann = _table(d, "sample_annotation", required=False)
    if ann:
        inst = {r["token"]: r for r in _table(d, "instance")}
        cat = {r["token"]: r for r in _table(d, "category")}
        key = {r["sample_token"]: int(r["timestamp"]) * 1000 for r in rows if r.get("is_key_frame")}
        for a in ann:
            stamp = key.get(a["sample_token"])
            if stamp is None:
                continue  # another scene
            name = cat[inst[a["instance_token"]]["category_token"]]["name"]
            T = T_odom_world @ quat_wxyz_matrix(a["rotation"], a["translation"])
            w, l_, h = (float(v) for v in a["size"])
            rec.boxes.append(LabelBox(stamp, a["instance_token"], category_class(name), float(T[0, 3]),
                                      float(T[1, 3]), float(T[2, 3]), l_, w, h, yaw_of_matrix(T),
                                      num_points=a.get("num_lidar_pts")))
    put_base_on_ground(rec, "nuScenes ego")
    return rec
