"""One frame of decoded sensor data -> the BEV feature tensor the model consumes.

Every sensor is optional: a missing one contributes zeros and its ``*_valid`` channel is 0, so the
channel layout (``FEATURE_CHANNELS``) never changes and models know C_in statically.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.camera import CAMERA_CHANNELS, encode_camera
from ssm_perception.bev.device import GraphCache, resolve_stats
from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.lidar import LIDAR_CHANNELS, encode_lidar
from ssm_perception.bev.radar import RADAR_CHANNELS, encode_radar

FEATURE_CHANNELS: list[str] = [*LIDAR_CHANNELS, *RADAR_CHANNELS, *CAMERA_CHANNELS]
NUM_FEATURES = len(FEATURE_CHANNELS)


def channel_index(name: str) -> int:
    """Index of a named channel in FEATURE_CHANNELS (clear error for a typo)."""
    try:
        return FEATURE_CHANNELS.index(name)
    except ValueError:
        raise KeyError(f"unknown BEV feature channel {name!r}; known: {FEATURE_CHANNELS}") from None


@dataclass
class LidarScan:
    points: np.ndarray  # structured (x, y, z, intensity[, t]) or [N, >=3]; LiDAR frame
    T_base_sensor: np.ndarray  # 4x4, base_link <- lidar


@dataclass
class RadarScan:
    points: np.ndarray  # structured (x, y, z, radial_velocity over ground, rcs) or [N, >=3]; radar frame
    T_base_sensor: np.ndarray


@dataclass
class CameraFrame:
    image: np.ndarray  # [H, W, 3] RGB or [H, W] mono
    K: np.ndarray  # 3x3 intrinsics (CameraInfo.k)
    T_base_sensor: np.ndarray  # 4x4, base_link <- camera optical frame


@dataclass
class BevFeatures:
    features: Tensor  # [C, H, W] float32, C = len(FEATURE_CHANNELS)
    sensor_mask: dict[str, bool]  # {'lidar': bool, 'radar': bool, 'camera': bool}
    stats: dict = field(default_factory=dict)  # points used / dropped, per-stage times [ms]
    derived: tuple = ()  # the outputs of encode_frame's ``derived`` function of the features


def encode_frame(
    grid: BevGrid,
    lidar: LidarScan | None = None,
    radar: RadarScan | None = None,
    camera: CameraFrame | None = None,
    ego_twist=None,
    ground: str = "ransac",
    device=None,
    resolve: bool = True,
    graphs: GraphCache | None = None,
    derived=None,
) -> BevFeatures:
    """Encode the sensors present this frame, on ``device`` (None = CPU: the features are built
    where the model runs, so a CUDA pipeline uploads only the raw clouds and a small image).
    ``ego_twist`` = (vx, vy, yaw_rate) of base_link in base_link (m/s, rad/s), from the frame
    assembler: deskews LiDAR points with per-point time (None = no deskew). Radar velocities arrive
    over ground (frame_assembler.radar_over_ground). Bad points are dropped and counted, never NaN.
    The sensor mask and every counter in ``stats`` come back from the device in one copy at the end;
    ``resolve=False`` leaves them 0-d device tensors for a caller that reads them with its own copy
    (``bev.device.counters_tensor`` / ``fill_counters``: the pipeline's one read-back per frame).
    ``graphs``: a CUDA pipeline's GraphCache (the encoders replay CUDA graphs; see encode_lidar; the
    assembly of their outputs, ``_assemble``, is one more graph: its outputs are then overwritten by
    the next frame's). ``derived``: a pure tensor function of the features [C, H, W] returning a
    tuple of tensors (the pipeline's observed / direct masks), computed in the same step: its
    outputs are ``BevFeatures.derived``."""
    if ego_twist is not None:
        ego_twist = tuple(float(v) for v in ego_twist)
        if len(ego_twist) != 3 or not all(np.isfinite(ego_twist)):
            ego_twist = None  # an unusable twist must not poison the features; reported in stats
    stats: dict = {"ego_twist_used": ego_twist is not None, "timings_ms": {}}
    parts = []
    t0 = time.perf_counter()
    f, s = encode_lidar(grid, None if lidar is None else lidar.points,
                        None if lidar is None else lidar.T_base_sensor, ego_twist, ground, device=device,
                        graphs=graphs)
    parts.append(f)
    stats.update(s)
    t1 = time.perf_counter()
    f, s = encode_radar(grid, None if radar is None else radar.points,
                        None if radar is None else radar.T_base_sensor, device=device, graphs=graphs)
    parts.append(f)
    stats.update(s)
    t2 = time.perf_counter()
    if camera is None:
        f, s = encode_camera(grid, None, None, None, device=device)
    else:
        f, s = encode_camera(grid, camera.image, camera.K, camera.T_base_sensor, device=device, graphs=graphs)
    parts.append(f)
    stats.update(s)
    t3 = time.perf_counter()
    stats["timings_ms"] = {"lidar": 1e3 * (t1 - t0), "radar": 1e3 * (t2 - t1), "camera": 1e3 * (t3 - t2)}
    fn = functools.partial(_assemble, derived=derived)
    feats, nonfinite, flags, *extra = _eager(fn, *parts) if graphs is None else \
        graphs.run("features", derived, fn, *parts)
    stats["nonfinite_features"] = nonfinite
    mask = {name: flags[k] for k, name in enumerate(SENSORS)}
    if resolve:
        resolve_stats({"mask": mask, "stats": stats})  # one device-to-host copy for all of them
    return BevFeatures(feats, mask, stats, tuple(extra))


SENSORS = ("lidar", "radar", "camera")


def _eager(fn, *inputs):
    return fn(*inputs)


def _assemble(*parts: Tensor, derived=None) -> tuple[Tensor, ...]:
    """The encoders' outputs -> (features [C, H, W], non-finite values (0-d), the sensors' valid
    flags [3] bool, *derived(features)): a pure tensor function (a CUDA graph)."""
    feats = torch.cat(parts, 0)
    # Defence in depth: the encoders already drop non-finite input; this guarantees the contract.
    nonfinite = (~torch.isfinite(feats)).sum()
    feats = torch.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
    flags = torch.stack([feats[channel_index(f"{name}_valid"), 0, 0] for name in SENSORS]) > 0
    return (feats, nonfinite, flags, *(derived(feats) if derived is not None else ()))
