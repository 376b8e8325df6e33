"""Radar -> BEV features: hits, over-ground radial velocity, RCS.

The driver's radial_velocity is relative to the (moving) sensor, positive = moving away. The frame
assembler (frame_assembler.radar_over_ground, the one place that does it) turns it into the
target's over-ground radial velocity before the scan reaches this encoder, so a static object
reads ~0 whatever the ego speed; this module only rasterizes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.device import (
    GraphCache,
    as_device,
    cloud_block,
    graph_capacity,
    upload,
)
from ssm_perception.bev.grid import BevGrid

VELOCITY_SCALE = 10.0  # radar velocity channels are in units of 10 m/s
RCS_SCALE = 20.0  # RCS channel is dBsm / 20, clamped to [-3, 3]
RADAR_CHANNELS = [
    "radar_valid",  # 1 where the radar delivered detections this frame (constant plane)
    "radar_log_count",  # log(1 + detections in the cell)
    "radar_vr",  # mean compensated radial velocity / VELOCITY_SCALE
    "radar_vr_x",  # mean of compensated v_r * u_x (the observable part of the velocity) / scale
    "radar_vr_y",  # mean of compensated v_r * u_y / scale
    "radar_rcs",  # mean RCS [dBsm] / RCS_SCALE
]


def encode_radar(grid: BevGrid, points, T_base_radar, device=None, graphs: GraphCache | None = None
                 ) -> tuple[Tensor, dict]:
    """-> (features [len(RADAR_CHANNELS), H, W] float32 on ``device``, stats). ``radial_velocity``
    is over ground (see the module doc). Non-finite detections are dropped; detections outside the
    grid are counted. Masks instead of compaction, counters as 0-d tensors (see encode_lidar):
    nothing waits for the device; with ``graphs`` (CUDA) the detections are padded to a fixed
    capacity and ``_radar_rasterize`` replays as a CUDA graph."""
    dev = as_device(device)
    h, w = grid.shape
    stats = {"radar_points": 0, "radar_used": 0, "radar_nonfinite": 0, "radar_out_of_grid": 0}
    if points is None:
        return torch.zeros(len(RADAR_CHANNELS), h, w, device=dev), stats
    t_np = np.asarray(T_base_radar, dtype=np.float32)
    arr = np.asarray(points)
    graphed = graphs is not None and graphs.pads(dev)
    n_pts = arr.reshape(-1).shape[0] if arr.dtype.names is not None else (arr.shape[0] if arr.ndim else 0)
    block, _, n = cloud_block(arr, RADAR_FIELDS, graph_capacity(n_pts) if graphed else None)
    stats["radar_points"] = n
    if n == 0:
        return torch.zeros(len(RADAR_CHANNELS), h, w, device=dev), stats
    if t_np.shape != (4, 4) or not np.isfinite(t_np).all():
        raise ValueError("T_base_radar must be a finite 4x4 transform")
    fn = functools.partial(_radar_rasterize, grid=grid)
    args = (upload(block, dev), upload(t_np, dev))
    feats, nonfinite, out_of_grid, used = graphs.run("radar", grid, fn, *args) if graphed else fn(*args)
    stats.update(radar_nonfinite=nonfinite, radar_out_of_grid=out_of_grid, radar_used=used)
    return feats.view(-1, h, w), stats


RADAR_FIELDS = ("x", "y", "z", "radial_velocity", "rcs")


def _radar_rasterize(block: Tensor, t: Tensor, *, grid: BevGrid):
    """The detection block (``cloud_block`` rows x, y, z, radial_velocity, rcs, live) and
    T_base_radar -> (RADAR_CHANNELS x [H*W], non-finite, outside the grid, used). A pure tensor
    function (CUDA graph)."""
    dev = block.device
    hw = grid.nx * grid.ny
    feats = torch.zeros(len(RADAR_CHANNELS), hw, device=dev)
    live = block[5] > 0.5
    xyz = block[:3].T.contiguous()
    vr, rcs = block[3], block[4]
    finite = torch.isfinite(xyz).all(1) & torch.isfinite(vr) & torch.isfinite(rcs) & live
    nonfinite = live.sum() - finite.sum()
    xyz = torch.where(finite.unsqueeze(1), xyz, 0.0)
    vr, rcs = torch.where(finite, vr, 0.0), torch.where(finite, rcs, 0.0)
    xyz = xyz @ t[:3, :3].T + t[:3, 3]
    ray = xyz[:, :2] - t[:2, 3]  # unit line of sight from the sensor, base_link axes
    u = ray / torch.hypot(ray[:, 0], ray[:, 1]).clamp_min(1e-3).unsqueeze(1)
    feats[0] = finite.any().float()
    flat, valid = grid.points_to_cells(xyz[:, :2])
    out_of_grid = (~valid & finite).sum()
    valid &= finite
    used = valid.sum()
    idx = torch.where(valid, flat, hw)  # dropped detections land in the spare slot hw
    vr = vr / VELOCITY_SCALE
    vf = valid.float()
    count = torch.zeros(hw + 1, device=dev).index_add_(0, idx, vf)[:hw]
    denom = count.clamp_min(1.0)
    feats[1] = torch.log1p(count)
    # One index_add_ for the four means: values [N, 4] -> sums [HW, 4].
    vals = torch.stack([vr, vr * u[:, 0], vr * u[:, 1], (rcs / RCS_SCALE).clamp(-3.0, 3.0)], 1)
    sums = torch.zeros(hw + 1, 4, device=dev).index_add_(0, idx, vals * vf.unsqueeze(1))[:hw]
    feats[2:6] = (sums / denom.unsqueeze(1)).T
    return feats, nonfinite, out_of_grid, used
