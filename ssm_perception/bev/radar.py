"""Radar -> BEV features: hits, over-ground radial velocity, RCS.

The driver's radial_velocity is relative to the (moving) sensor, positive = moving away. The frame
assembler (frame_assembler.radar_over_ground, the one place that does it) turns it into the
target's over-ground radial velocity before the scan reaches this encoder, so a static object
reads ~0 whatever the ego speed; this module only rasterizes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.lidar import cloud_to_tensors

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


def encode_radar(grid: BevGrid, points, T_base_radar) -> tuple[Tensor, dict]:
    """-> (features [len(RADAR_CHANNELS), H, W] float32, stats). ``radial_velocity`` is over
    ground (see the module doc). Non-finite detections are dropped; detections outside the grid
    are counted."""
    h, w = grid.shape
    feats = torch.zeros(len(RADAR_CHANNELS), h * w)
    stats = {"radar_points": 0, "radar_used": 0, "radar_nonfinite": 0, "radar_out_of_grid": 0}
    if points is None:
        return feats.view(-1, h, w), stats
    c = cloud_to_tensors(points, ("x", "y", "z", "radial_velocity", "rcs"))
    n = c["x"].shape[0]
    zeros = torch.zeros(n)
    xyz = torch.stack([c["x"], c["y"], c["z"]], 1)
    vr, rcs = c.get("radial_velocity", zeros), c.get("rcs", zeros)
    finite = torch.isfinite(xyz).all(1) & torch.isfinite(vr) & torch.isfinite(rcs)
    stats["radar_points"], stats["radar_nonfinite"] = n, int(n - finite.sum())
    xyz, vr, rcs = xyz[finite], vr[finite], rcs[finite]
    if xyz.shape[0] == 0:
        return feats.view(-1, h, w), stats
    t = torch.as_tensor(np.asarray(T_base_radar, dtype=np.float32))
    if t.shape != (4, 4) or not torch.isfinite(t).all():
        raise ValueError("T_base_radar must be a finite 4x4 transform")
    xyz = xyz @ t[:3, :3].T + t[:3, 3]
    ray = xyz[:, :2] - t[:2, 3]  # unit line of sight from the sensor, base_link axes
    u = ray / torch.hypot(ray[:, 0], ray[:, 1]).clamp_min(1e-3).unsqueeze(1)
    feats[0] = 1.0
    flat, valid = grid.points_to_cells(xyz[:, :2])
    stats["radar_out_of_grid"], stats["radar_used"] = int((~valid).sum()), int(valid.sum())
    idx = flat[valid]
    vr, u, rcs = vr[valid] / VELOCITY_SCALE, u[valid], rcs[valid]
    count = torch.zeros(h * w).index_add_(0, idx, torch.ones_like(vr))
    denom = count.clamp_min(1.0)
    feats[1] = torch.log1p(count)
    # One index_add_ for the four means: values [M, 4] -> sums [HW, 4].
    vals = torch.stack([vr, vr * u[:, 0], vr * u[:, 1], (rcs / RCS_SCALE).clamp(-3.0, 3.0)], 1)
    sums = torch.zeros(h * w, 4).index_add_(0, idx, vals)
    feats[2:6] = (sums / denom.unsqueeze(1)).T
    return feats.view(-1, h, w), stats
