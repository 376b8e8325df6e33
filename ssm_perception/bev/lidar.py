"""LiDAR -> BEV features (vectorized torch; no per-point Python loops).

Input is a decoded cloud (structured array with x, y, z, intensity and optionally t = seconds
relative to the header stamp, or a float array [N, >=3] with columns x, y, z[, intensity[, t]])
in the LiDAR frame, plus T_base_lidar. Output: LIDAR_CHANNELS x [H, W] float32 and a stats dict.

Free space: a per-point 2D ray-march costs O(N * range / res) (~30M samples for a 100k cloud),
far over the CPU budget. The equivalent polar form is O(N + cells): per azimuth beam from the
sensor origin keep the nearest obstacle range and the farthest return range; a cell is observed
free when it lies on its beam before both, occluded when it lies behind the beam's first obstacle.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.ground import GroundPlane, fit_ground_plane

HEIGHT_BIN_EDGES = (0.25, 0.75, 1.5, 2.5)  # height above ground [m] between the 5 bins
GROUND_THRESHOLD = 0.25  # above this height a return is an obstacle [m]
# Returns higher than this (branches, signs, bridges) are counted but do not block free space:
# a vehicle passes under them. Autoware's occupancy grid uses a similar height window.
OVERHANG_HEIGHT = 2.5
LIDAR_CHANNELS = [
    "lidar_valid",  # 1 where the LiDAR delivered points this frame (constant plane)
    "lidar_log_count",  # log(1 + returns in the cell)
    "lidar_h_min",  # lowest return, height above ground [m] (0 if empty)
    "lidar_h_max",  # highest return, height above ground [m] (0 if empty)
    "lidar_intensity",  # mean log(1 + intensity)
    *[f"lidar_hbin_{k}" for k in range(len(HEIGHT_BIN_EDGES) + 1)],  # log(1 + count) per height bin
    "lidar_nonground",  # log(1 + returns above GROUND_THRESHOLD)
    "lidar_free",  # 1: a ray passed through (or ended on ground), no obstacle return
    "lidar_occluded",  # 1: behind the first obstacle on its beam, no return of its own
]


def cloud_to_tensors(points, fields: tuple[str, ...]) -> dict[str, Tensor]:
    """Structured array (named fields) or float array [N, K] (columns in ``fields`` order) ->
    {field: float32 [N]}. Missing optional fields are absent from the dict."""
    arr = np.asarray(points)
    out: dict[str, Tensor] = {}
    if arr.dtype.names is not None:
        for f in fields:
            if f in arr.dtype.names:
                out[f] = torch.from_numpy(np.ascontiguousarray(arr[f], dtype=np.float32).reshape(-1))
    else:
        if arr.size == 0:
            arr = arr.reshape(0, len(fields))
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise ValueError(f"point array must be structured or [N, >=3], got shape {arr.shape}")
        a = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        for k, f in enumerate(fields[: arr.shape[1]]):
            out[f] = a[:, k]
    for f in ("x", "y", "z"):
        if f not in out:
            raise ValueError(f"point cloud has no field {f!r}")
    return out


def _rot2(theta: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cos(theta), torch.sin(theta)


def deskew(xyz: Tensor, t: Tensor, ego_twist) -> Tensor:
    """Move base_link points measured at time t (relative to the stamp) to where they are seen from
    the base_link at the stamp, assuming a constant planar twist (vx, vy, yaw_rate) in base_link.

    The base at time t, seen from the base at the stamp: yaw w t, translation V(w t) v t with
    V the exact SE(2) integration matrix (sin(th)/th, (1 - cos(th))/th)."""
    vx, vy, wz = (float(v) for v in ego_twist)
    th = wz * t  # [N]
    c, s = _rot2(th)
    small = th.abs() < 1e-6
    th_safe = torch.where(small, torch.ones_like(th), th)
    a = torch.where(small, 1.0 - th * th / 6.0, torch.sin(th) / th_safe)
    b = torch.where(small, th / 2.0, (1.0 - torch.cos(th)) / th_safe)
    tx = (a * vx - b * vy) * t
    ty = (b * vx + a * vy) * t
    x = c * xyz[:, 0] - s * xyz[:, 1] + tx
    y = s * xyz[:, 0] + c * xyz[:, 1] + ty
    return torch.stack([x, y, xyz[:, 2]], 1)


@functools.lru_cache(maxsize=8)
def _cell_polar(grid: BevGrid, ox: float, oy: float, n_beams: int) -> tuple[Tensor, Tensor]:
    """(range [HW], beam [HW]) of every cell centre seen from the sensor origin; cached because
    grid and mounting are fixed while driving."""
    c = grid.cell_centers().permute(1, 2, 0).reshape(-1, 2)
    dx, dy = c[:, 0] - ox, c[:, 1] - oy
    beam = ((torch.atan2(dy, dx) + math.pi) * (n_beams / (2 * math.pi))).long().clamp(0, n_beams - 1)
    return torch.hypot(dx, dy), beam


def polar_free_space(
    grid: BevGrid, origin_xy: Tensor, ret_xy: Tensor, obstacle: Tensor, n_beams: int
) -> tuple[Tensor, Tensor]:
    """(free [H, W], occluded [H, W]) float32 from returns ret_xy [N, 2] (obstacle [N] bool).

    Per beam: r_obs = nearest obstacle, r_seen = farthest return (ground returns prove the ray
    got there). Cells with range < min(r_obs - res, r_seen) are free; cells beyond r_obs + res
    on a beam with an obstacle are occluded. Cells on beams without returns stay unknown (0, 0)."""
    scale = n_beams / (2 * math.pi)
    rel = ret_xy - origin_xy
    r = torch.hypot(rel[:, 0], rel[:, 1])
    beam = ((torch.atan2(rel[:, 1], rel[:, 0]) + math.pi) * scale).long().clamp(0, n_beams - 1)
    r_obs = torch.full((n_beams,), math.inf).scatter_reduce(0, beam[obstacle], r[obstacle], "amin")
    r_seen = torch.zeros(n_beams).scatter_reduce(0, beam, r, "amax")
    cr, cbeam = _cell_polar(grid, float(origin_xy[0]), float(origin_xy[1]), n_beams)
    obs_c = r_obs[cbeam]
    free = cr < torch.minimum(obs_c - grid.resolution, r_seen[cbeam])
    occluded = torch.isfinite(obs_c) & (cr > obs_c + grid.resolution)
    return free.float().view(grid.nx, grid.ny), occluded.float().view(grid.nx, grid.ny)


def encode_lidar(
    grid: BevGrid,
    points,
    T_base_lidar,
    ego_twist=None,
    ground: str = "ransac",
    n_beams: int = 720,
    max_range: float = 250.0,
) -> tuple[Tensor, dict]:
    """-> (features [len(LIDAR_CHANNELS), H, W] float32, stats).

    ``ground``: 'ransac' (torch plane fit, see bev/ground.py) or 'flat' (base_link z = 0).
    Non-finite points and returns beyond ``max_range`` from the sensor (no real LiDAR sees that
    far: a corrupt point must not clear a whole beam) are dropped; points outside [z_min, z_max]
    or outside the grid do not enter the cell statistics (all counted in stats); never NaN."""
    h, w = grid.shape
    feats = torch.zeros(len(LIDAR_CHANNELS), h * w)
    stats = {"lidar_points": 0, "lidar_used": 0, "lidar_nonfinite": 0, "lidar_out_of_height": 0,
             "lidar_out_of_grid": 0, "lidar_out_of_range": 0, "lidar_ground_fallback": True,
             "lidar_stage_ms": {}}
    tick = [time.perf_counter()]

    def lap(name: str) -> None:  # per-stage wall time, for scripts/bench_core_cpu.py
        now = time.perf_counter()
        stats["lidar_stage_ms"][name] = 1e3 * (now - tick[0])
        tick[0] = now

    if points is None:
        return feats.view(-1, h, w), stats
    cloud = cloud_to_tensors(points, ("x", "y", "z", "intensity", "t"))
    xyz = torch.stack([cloud["x"], cloud["y"], cloud["z"]], 1)  # [N, 3] lidar frame
    n = xyz.shape[0]
    stats["lidar_points"] = n
    finite = torch.isfinite(xyz).all(1)
    t = cloud.get("t")
    if t is not None:
        finite &= torch.isfinite(t)
    n_finite = int(finite.sum())
    stats["lidar_nonfinite"] = n - n_finite
    if n_finite == 0:
        return feats.view(-1, h, w), stats  # empty: no information, lidar_valid stays 0
    all_finite = n_finite == n
    if not all_finite:  # zero the bad rows so the math below stays finite; dropped by `keep`
        xyz = torch.where(finite.unsqueeze(1), xyz, 0.0)
        t = None if t is None else torch.where(finite, t, 0.0)
    inten = cloud.get("intensity", torch.zeros(n))
    inten = torch.log1p(torch.nan_to_num(inten, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0))

    far = (xyz * xyz).sum(1) > max_range * max_range  # range in the sensor frame
    stats["lidar_out_of_range"] = int((far & finite).sum())
    finite &= ~far
    t_bl = torch.as_tensor(np.asarray(T_base_lidar, dtype=np.float32))
    if t_bl.shape != (4, 4) or not torch.isfinite(t_bl).all():
        raise ValueError("T_base_lidar must be a finite 4x4 transform")
    xyz = torch.addmm(t_bl[:3, 3], xyz, t_bl[:3, :3].T)  # [N, 3] base_link
    if ego_twist is not None and not all(math.isfinite(float(v)) for v in ego_twist):
        ego_twist = None  # a corrupt twist must not poison the cloud: leave it skewed
    stats["lidar_deskewed"] = ego_twist is not None and t is not None
    if ego_twist is not None and t is not None:
        xyz = deskew(xyz, t, ego_twist)
    in_h = (xyz[:, 2] >= grid.z_min) & (xyz[:, 2] <= grid.z_max)
    stats["lidar_out_of_height"] = int((~in_h & finite).sum())
    keep = in_h & finite
    # One compaction for every filter (boolean indexing is the costly op here).
    idx_keep = keep.nonzero().squeeze(1)
    xyz, inten = xyz.index_select(0, idx_keep), inten.index_select(0, idx_keep)

    lap("prepare")
    plane = fit_ground_plane(xyz) if ground == "ransac" else GroundPlane((0.0, 0.0, 1.0), 0.0, 0.0, True)
    stats["lidar_ground_fallback"] = plane.fallback
    height = plane.height(xyz)  # [N] above ground
    above = height > GROUND_THRESHOLD
    obstacle = above & (height < OVERHANG_HEIGHT)  # blocks rays (free space / occlusion)
    lap("ground")
    feats[0] = 1.0
    flat, valid = grid.points_to_cells(xyz[:, :2])
    stats["lidar_out_of_grid"] = int((~valid).sum())
    stats["lidar_used"] = int(valid.sum())
    idx, hv, iv, ov = flat[valid], height[valid], inten[valid], above[valid]

    count = torch.zeros(h * w).index_add_(0, idx, torch.ones_like(hv))
    has = count > 0
    feats[1] = torch.log1p(count)
    feats[2] = torch.where(has, torch.full((h * w,), math.inf).scatter_reduce(0, idx, hv, "amin"), 0.0)
    feats[3] = torch.where(has, torch.full((h * w,), -math.inf).scatter_reduce(0, idx, hv, "amax"), 0.0)
    feats[4] = torch.zeros(h * w).index_add_(0, idx, iv) / count.clamp_min(1.0)
    nb = len(HEIGHT_BIN_EDGES) + 1
    hbin = torch.bucketize(hv, torch.tensor(HEIGHT_BIN_EDGES))  # [M] in 0..nb-1
    bins = torch.zeros(h * w * nb).index_add_(0, idx * nb + hbin, torch.ones_like(hv)).view(h * w, nb)
    feats[5 : 5 + nb] = torch.log1p(bins.T)
    nonground = torch.zeros(h * w).index_add_(0, idx, ov.float())
    feats[5 + nb] = torch.log1p(nonground)
    lap("scatter")

    free, occluded = polar_free_space(grid, t_bl[:2, 3], xyz[:, :2], obstacle, n_beams)
    hit = (nonground > 0).view(h, w)
    feats[6 + nb] = (free.view(-1) > 0).float() * (~hit.view(-1)).float()
    feats[7 + nb] = occluded.view(-1) * (count == 0).float()
    lap("free_space")
    return feats.view(-1, h, w), stats
