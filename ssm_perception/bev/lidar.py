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

from ssm_perception.bev.device import (
    GraphCache,
    as_device,
    cloud_block,
    constant,
    graph_capacity,
    upload,
)
from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.ground import fit_ground_plane_tensor

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


def cloud_to_tensors(points, fields: tuple[str, ...], device=None) -> dict[str, Tensor]:
    """Structured array (named fields) or float array [N, K] (columns in ``fields`` order) ->
    {field: float32 [N]} on ``device`` (one pinned, asynchronous upload of all columns on CUDA).
    Missing optional fields are absent from the dict."""
    arr = np.asarray(points)
    if arr.dtype.names is not None:
        present = [f for f in fields if f in arr.dtype.names]
        cols = np.empty((len(present), arr.shape[0]), dtype=np.float32)  # one [K, N] block: one upload
        for k, f in enumerate(present):
            cols[k] = np.asarray(arr[f], dtype=np.float32).reshape(-1)
        t = upload(cols, device)
        out = {f: t[k] for k, f in enumerate(present)}
    else:
        if arr.size == 0:
            arr = arr.reshape(0, len(fields))
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise ValueError(f"point array must be structured or [N, >=3], got shape {arr.shape}")
        a = upload(np.ascontiguousarray(arr, dtype=np.float32), device)
        out = {f: a[:, k] for k, f in enumerate(fields[: arr.shape[1]])}
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
    # numbers, or 0-d tensors (the graphed encoder: no host read of a device value)
    vx, vy, wz = (v if isinstance(v, Tensor) else float(v) for v in ego_twist)
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
def _cell_polar(grid: BevGrid, ox: float, oy: float, n_beams: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(range [HW], beam [HW]) of every cell centre seen from the sensor origin; cached (per
    device) because grid and mounting are fixed while driving."""
    c = grid.cell_centers().permute(1, 2, 0).reshape(-1, 2)
    dx, dy = c[:, 0] - ox, c[:, 1] - oy
    beam = ((torch.atan2(dy, dx) + math.pi) * (n_beams / (2 * math.pi))).long().clamp(0, n_beams - 1)
    return torch.hypot(dx, dy).to(device), beam.to(device)


@functools.lru_cache(maxsize=8)
def _bin_edges(device: torch.device) -> Tensor:
    return torch.tensor(HEIGHT_BIN_EDGES, device=device)


def polar_free_space(
    grid: BevGrid, origin_xy, ret_xy: Tensor, obstacle: Tensor, n_beams: int, use: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(free [H, W], occluded [H, W]) float32 from returns ret_xy [N, 2] (obstacle [N] bool; only
    the returns where ``use`` [N] is True count, all when None). ``origin_xy``: the sensor's (x, y)
    in base_link (host numbers: the per-cell polar table is cached on them).

    Per beam: r_obs = nearest obstacle, r_seen = farthest return (ground returns prove the ray
    got there). Cells with range < min(r_obs - res, r_seen) are free; cells beyond r_obs + res
    on a beam with an obstacle are occluded. Cells on beams without returns stay unknown (0, 0).
    Static shapes throughout (masked values, no compaction): nothing waits for the device."""
    dev = ret_xy.device
    ox, oy = (float(v) for v in origin_xy)
    scale = n_beams / (2 * math.pi)
    rel = ret_xy - constant((ox, oy), ret_xy.dtype, dev)
    r = torch.hypot(rel[:, 0], rel[:, 1])
    beam = ((torch.atan2(rel[:, 1], rel[:, 0]) + math.pi) * scale).long().clamp(0, n_beams - 1)
    if use is not None:
        obstacle = obstacle & use
    r_obs = torch.full((n_beams,), math.inf, device=dev).scatter_reduce(
        0, beam, torch.where(obstacle, r, math.inf), "amin")
    r_seen = torch.zeros(n_beams, device=dev).scatter_reduce(
        0, beam, r if use is None else torch.where(use, r, 0.0), "amax")
    cr, cbeam = _cell_polar(grid, ox, oy, n_beams, dev)
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
    device=None,
    graphs: GraphCache | None = None,
) -> tuple[Tensor, dict]:
    """-> (features [len(LIDAR_CHANNELS), H, W] float32 on ``device`` (None = CPU), stats).

    ``ground``: 'ransac' (torch plane fit, see bev/ground.py) or 'flat' (base_link z = 0).
    Non-finite points and returns beyond ``max_range`` from the sensor (no real LiDAR sees that
    far: a corrupt point must not clear a whole beam) are dropped; points outside [z_min, z_max]
    or outside the grid do not enter the cell statistics (all counted in stats); never NaN.

    The same code runs on any device: points are filtered by masks, not compacted (every scatter
    sends a dropped point to a spare slot past the grid, and the ground fit samples without
    compacting), so on a GPU nothing waits for the device. Counters in ``stats`` are 0-d tensors on the device;
    ``bev.device.resolve_stats`` (or ``encode_frame``) turns them into numbers.

    ``graphs`` (a CUDA pipeline's GraphCache): the cloud is padded to a fixed capacity and the
    encoder (``_lidar_prepare``, the ground fit, ``_lidar_rasterize``: pure tensor functions of static
    shapes) replays as one CUDA graph ('lidar'); without it they run eagerly on the unpadded cloud."""
    dev = as_device(device)
    h, w = grid.shape
    stats = {"lidar_points": 0, "lidar_used": 0, "lidar_nonfinite": 0, "lidar_out_of_height": 0,
             "lidar_out_of_grid": 0, "lidar_out_of_range": 0, "lidar_ground_fallback": True,
             "lidar_stage_ms": {}}
    tick = [time.perf_counter()]

    def lap(name: str) -> None:  # per-stage wall time (host side), for scripts/bench_core_cpu.py
        now = time.perf_counter()
        stats["lidar_stage_ms"][name] = 1e3 * (now - tick[0])
        tick[0] = now

    if points is None:
        return torch.zeros(len(LIDAR_CHANNELS), h, w, device=dev), stats
    t_np = np.asarray(T_base_lidar, dtype=np.float32)
    if t_np.shape != (4, 4) or not np.isfinite(t_np).all():
        raise ValueError("T_base_lidar must be a finite 4x4 transform")
    graphed = graphs is not None and graphs.pads(dev)
    arr = np.asarray(points)
    n_pts = arr.reshape(-1).shape[0] if arr.dtype.names is not None else (arr.shape[0] if arr.ndim else 0)
    block, present, n = cloud_block(arr, LIDAR_FIELDS, graph_capacity(n_pts) if graphed else None)
    stats["lidar_points"] = n
    if n == 0:
        return torch.zeros(len(LIDAR_CHANNELS), h, w, device=dev), stats  # empty: no information, lidar_valid stays 0
    if ego_twist is not None and not all(math.isfinite(float(v)) for v in ego_twist):
        ego_twist = None  # a corrupt twist must not poison the cloud: leave it skewed
    has_t = present[4]
    deskewed = ego_twist is not None and has_t
    stats["lidar_deskewed"] = deskewed
    # per-frame numbers as one small upload: the 4x4 transform and the twist
    params = np.zeros(19, dtype=np.float32)
    params[:16] = t_np.reshape(-1)
    if deskewed:
        params[16:] = [float(v) for v in ego_twist]
    prep = functools.partial(_lidar_prepare, has_t=has_t, has_intensity=present[3], deskew_on=deskewed,
                             max_range=float(max_range), z_min=grid.z_min, z_max=grid.z_max)
    ox, oy = (float(v) for v in t_np[:2, 3])
    ransac = ground == "ransac"
    raster = functools.partial(_lidar_rasterize, grid=grid, flat=not ransac, n_beams=int(n_beams), ox=ox, oy=oy)
    if graphed:  # the whole encoder, ground fit included, as one CUDA graph (static shapes, no host read)
        key = (has_t, present[3], deskewed, float(max_range), grid, ransac, int(n_beams), ox, oy)
        feats, out_of_grid, used, nonfinite, out_of_range, out_of_height, fallback = graphs.run(
            "lidar", key, functools.partial(_lidar_all, prep=prep, raster=raster, ransac=ransac),
            upload(block, dev), upload(params, dev))
        lap("graph")
    else:  # the same three steps, eagerly, timed each (scripts/bench_core_cpu.py)
        xyz, keep, inten, n_finite, nonfinite, out_of_range, out_of_height = prep(upload(block, dev),
                                                                                  upload(params, dev))
        lap("prepare")
        normal, offset, fallback = _lidar_ground(xyz, keep, ransac)
        lap("ground")
        feats, out_of_grid, used = raster(xyz, keep, inten, n_finite, normal, offset)
        lap("raster")  # cell statistics and free space
    stats.update(lidar_nonfinite=nonfinite, lidar_out_of_range=out_of_range, lidar_out_of_height=out_of_height,
                 lidar_ground_fallback=fallback if ransac else True, lidar_out_of_grid=out_of_grid, lidar_used=used)
    return feats.view(-1, h, w), stats


LIDAR_FIELDS = ("x", "y", "z", "intensity", "t")


def _lidar_ground(xyz: Tensor, keep: Tensor, ransac: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(normal, offset, fallback) of the ground under the kept points: the RANSAC plane (bev/ground.py),
    or unused zeros for a flat ground (heights are then base_link z; fallback None)."""
    if not ransac:
        zero = torch.zeros((), device=xyz.device)
        return zero, zero, None
    normal, offset, _, fallback = fit_ground_plane_tensor(xyz, keep)
    return normal, offset, fallback


def _lidar_all(block: Tensor, params: Tensor, *, prep, raster, ransac: bool):
    """Prepare, ground fit and rasterize in one pure tensor function (the CUDA graph 'lidar')."""
    xyz, keep, inten, n_finite, nonfinite, out_of_range, out_of_height = prep(block, params)
    normal, offset, fallback = _lidar_ground(xyz, keep, ransac)
    feats, out_of_grid, used = raster(xyz, keep, inten, n_finite, normal, offset)
    if fallback is None:
        fallback = torch.ones((), dtype=torch.bool, device=block.device)
    return feats, out_of_grid, used, nonfinite, out_of_range, out_of_height, fallback


def _lidar_prepare(block: Tensor, params: Tensor, *, has_t: bool, has_intensity: bool, deskew_on: bool,
                   max_range: float, z_min: float, z_max: float):
    """The cloud block (``cloud_block`` rows x, y, z, intensity, t, live) -> base_link points and
    masks. A pure tensor function (CUDA graph): every per-frame number comes in ``params`` (T_base_lidar
    row-major, then the twist vx, vy, yaw rate)."""
    live = block[5] > 0.5
    xyz = block[:3].T.contiguous()  # [N, 3] lidar frame
    # per row of the block: a reduction over an innermost dimension of 3 is slow on the CPU (~1 ms)
    finite = torch.isfinite(block[0]) & torch.isfinite(block[1]) & torch.isfinite(block[2]) & live
    t = block[4] if has_t else None
    if t is not None:
        finite &= torch.isfinite(t)
    n_finite = finite.sum()
    nonfinite = live.sum() - n_finite
    # zero the bad rows so the math below stays finite; they are dropped by `keep`
    xyz = torch.where(finite.unsqueeze(1), xyz, 0.0)
    t = None if t is None else torch.where(finite, t, 0.0)
    inten = block[3] if has_intensity else torch.zeros_like(block[3])
    inten = torch.log1p(torch.nan_to_num(inten, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0))
    x0, y0, z0 = xyz.unbind(1)
    far = x0 * x0 + y0 * y0 + z0 * z0 > max_range * max_range  # range in the sensor frame (same sum, per column)
    out_of_range = (far & finite).sum()
    finite &= ~far
    t_bl = params[:16].view(4, 4)
    xyz = torch.addmm(t_bl[:3, 3], xyz, t_bl[:3, :3].T)  # [N, 3] base_link
    if deskew_on:
        xyz = deskew(xyz, t, (params[16], params[17], params[18]))
    in_h = (xyz[:, 2] >= z_min) & (xyz[:, 2] <= z_max)
    out_of_height = (~in_h & finite).sum()
    keep = in_h & finite  # the points that count (a mask: no compaction, no wait for the device)
    return xyz, keep, inten, n_finite, nonfinite, out_of_range, out_of_height


def _lidar_rasterize(xyz: Tensor, keep: Tensor, inten: Tensor, n_finite: Tensor, normal: Tensor, offset: Tensor, *,
                     grid: BevGrid, flat: bool, n_beams: int, ox: float, oy: float):
    """Points (base_link), their masks and the ground plane -> LIDAR_CHANNELS x [H*W] features,
    (points outside the grid, points used). A pure tensor function (CUDA graph)."""
    dev = xyz.device
    h, w = grid.shape
    hw = h * w
    feats = torch.zeros(len(LIDAR_CHANNELS), hw, device=dev)
    height = xyz[:, 2].clone() if flat else xyz @ normal.float() + offset.float()  # [N] above ground
    above = height > GROUND_THRESHOLD
    obstacle = above & (height < OVERHANG_HEIGHT)  # blocks rays (free space / occlusion)
    feats[0] = (n_finite > 0).float()  # the LiDAR delivered (finite) points this frame
    flat_idx, valid = grid.points_to_cells(xyz[:, :2])
    out_of_grid = (~valid & keep).sum()
    valid &= keep
    used = valid.sum()
    idx = torch.where(valid, flat_idx, hw)  # dropped points land in the spare slot hw
    vf = valid.float()
    count = torch.zeros(hw + 1, device=dev).index_add_(0, idx, vf)[:hw]
    has = count > 0
    feats[1] = torch.log1p(count)
    inf = torch.full((hw + 1,), math.inf, device=dev)
    feats[2] = torch.where(has, inf.scatter_reduce(0, idx, height, "amin")[:hw], 0.0)
    feats[3] = torch.where(has, (-inf).scatter_reduce(0, idx, height, "amax")[:hw], 0.0)
    feats[4] = torch.zeros(hw + 1, device=dev).index_add_(0, idx, inten * vf)[:hw] / count.clamp_min(1.0)
    nb = len(HEIGHT_BIN_EDGES) + 1
    hbin = torch.bucketize(height, _bin_edges(dev))  # [N] in 0..nb-1
    bins = torch.zeros(hw * nb + 1, device=dev).index_add_(
        0, torch.where(valid, idx * nb + hbin, hw * nb), vf)[: hw * nb].view(hw, nb)
    feats[5 : 5 + nb] = torch.log1p(bins.T)
    nonground = torch.zeros(hw + 1, device=dev).index_add_(0, idx, (above & valid).float())[:hw]
    feats[5 + nb] = torch.log1p(nonground)
    free, occluded = polar_free_space(grid, (ox, oy), xyz[:, :2], obstacle, n_beams, use=keep)
    hit = (nonground > 0).view(h, w)
    feats[6 + nb] = (free.view(-1) > 0).float() * (~hit.view(-1)).float()
    feats[7 + nb] = occluded.view(-1) * (count == 0).float()
    return feats, out_of_grid, used
