"""Ground-plane estimation (torch RANSAC on the hot path, open3d for comparison).

The hot path stays on torch: ``fit_ground_plane`` runs all RANSAC hypotheses as one batched
matrix product on a fixed-size subsample, so its cost is flat in the cloud size, and it rejects
steep planes (walls, vehicle sides) that open3d's ``segment_plane`` would happily return.
scripts/bench_core_cpu.py measures both (results/bench_core_cpu.json).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.device import constant

# Flat ground at base_link z = 0 (REP-103 base_link sits on the ground under the vehicle):
# the fallback when too few points support a plane.
FLAT_GROUND = (0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class GroundPlane:
    """Plane n . p + d = 0 with a unit normal pointing up (n_z > 0)."""

    normal: tuple[float, float, float]
    d: float
    inlier_fraction: float  # of the candidate points used for the fit
    fallback: bool  # True: not enough support, FLAT_GROUND used

    def height(self, xyz: Tensor) -> Tensor:
        """[N, 3] -> [N] signed height above the plane [m]."""
        n = torch.tensor(self.normal, dtype=xyz.dtype, device=xyz.device)
        return xyz @ n + self.d


def _flat(frac: float = 0.0) -> GroundPlane:
    return GroundPlane(FLAT_GROUND[:3], FLAT_GROUND[3], frac, True)


def fit_ground_plane(xyz: Tensor, **params) -> GroundPlane:
    """Batched RANSAC plane fit on [N, 3] base_link points, then a least-squares refit.

    Candidates are points with |z| < max_height (the ground is near base_link z = 0); hypotheses
    whose normal is tilted more than ``max_tilt_deg`` from vertical are discarded. Deterministic
    (fixed seed). Returns FLAT_GROUND with ``fallback=True`` if fewer than ``min_inliers`` support it.
    The work is ``fit_ground_plane_tensor`` (on xyz's device; ``params`` and their defaults are its
    keyword arguments); this reads its result back."""
    normal, d, frac, fallback = fit_ground_plane_tensor(xyz, None, **params)
    vals = torch.cat([normal, d.view(1), frac.view(1).double(), fallback.view(1).double()]).cpu().tolist()
    if vals[5] > 0.5:
        return _flat(vals[4])
    return GroundPlane((vals[0], vals[1], vals[2]), vals[3], vals[4], False)


def fit_ground_plane_tensor(
    xyz: Tensor,
    mask: Tensor | None = None,
    distance_threshold: float = 0.15,
    iterations: int = 64,
    max_tilt_deg: float = 15.0,
    max_height: float = 1.0,
    sample: int = 4096,
    min_inliers: int = 50,
    seed: int = 0,
    graphs=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``fit_ground_plane`` without reading anything back except the candidate count: returns
    (unit normal [3] float64, d float64, inlier fraction float64, fallback bool), 0-d tensors on
    xyz's device, FLAT_GROUND where the fit fails. ``mask`` [N] bool: points to consider.

    The hypotheses are drawn with a CPU generator on the candidate count (the one host round trip,
    so every device draws the same points), the scoring, the choice of the best hypothesis, the
    inlier selection and the refit (weighted normal equations, ``solve_ex``: no error raised for a
    singular system, it falls back instead) stay on the device. ``graphs`` (bev.device.GraphCache of
    a CUDA pipeline): with a full sample (the usual case: static shapes) the scoring up to the normal
    equations (``_ransac_normal_equations``) replays as a CUDA graph."""
    xyz = xyz.float()
    dev = xyz.device
    sel = xyz[:, 2].abs() < max_height
    if mask is not None:
        sel &= mask
    cand = xyz[sel]  # the one synchronising step: its size picks the random draw
    m = cand.shape[0]
    flat_n = constant(FLAT_GROUND[:3], torch.float64, dev)  # cached per device: no upload (and wait) per frame
    flat_d = torch.zeros((), dtype=torch.float64, device=dev)
    if m < max(3, min_inliers):
        return flat_n.clone(), flat_d, torch.zeros((), dtype=torch.float64, device=dev), torch.ones((), dtype=torch.bool,
                                                                                         device=dev)
    gen = torch.Generator().manual_seed(seed)
    if m > sample:
        pick = torch.randperm(m, generator=gen)[:sample]
        cand = cand[pick if dev.type == "cpu" else pick.pin_memory().to(dev, non_blocking=True)]
        m = sample
    tri_idx = torch.randint(0, m, (iterations, 3), generator=gen)
    tri_idx = tri_idx if dev.type == "cpu" else tri_idx.pin_memory().to(dev, non_blocking=True)
    cos_tilt = math.cos(math.radians(max_tilt_deg))
    fn = functools.partial(_ransac_normal_equations, distance_threshold=float(distance_threshold), cos_tilt=cos_tilt)
    if graphs is not None and m == sample:
        ata, atb, ok_any, count = graphs.run("ground", (m, float(distance_threshold), cos_tilt), fn, cand, tri_idx)
    else:
        ata, atb, ok_any, count = fn(cand, tri_idx)
    frac = count.double() / m
    sol, info = torch.linalg.solve_ex(ata, atb)
    sol = sol[:, 0]
    normal = torch.stack([-sol[0], -sol[1], torch.ones((), dtype=torch.float64, device=dev)])
    scale = normal.norm()
    normal = normal / scale
    good = ok_any & (count >= min_inliers) & (info == 0) & torch.isfinite(normal).all() & (normal[2] >= cos_tilt)
    fallback = ~good
    frac = torch.where(ok_any, frac, torch.zeros_like(frac))
    return (torch.where(good, normal, flat_n), torch.where(good, -sol[2] / scale, flat_d), frac, fallback)


def _ransac_normal_equations(cand: Tensor, tri_idx: Tensor, *, distance_threshold: float, cos_tilt: float):
    """Candidates [M, 3] and hypothesis triples [K, 3] -> the best hypothesis' inliers as weighted
    normal equations (A^T W A [3, 3], A^T W z [3, 1], float64), whether any hypothesis was admissible,
    the inlier count. A pure tensor function of static shapes (CUDA graph)."""
    dev = cand.device
    m = cand.shape[0]
    tri = cand[tri_idx]  # [K, 3, 3]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [K, 3]
    norm = n.norm(dim=1, keepdim=True)
    n = torch.where(n[:, 2:3] < 0, -n, n) / norm.clamp_min(1e-9)
    ok = (norm[:, 0] > 1e-6) & (n[:, 2] > cos_tilt)
    d = -(n * tri[:, 0]).sum(1)  # [K]
    dist = (cand @ n.T + d).abs()  # [M, K]: all hypotheses scored in one matmul
    score = (dist < distance_threshold).sum(0).masked_fill(~ok, -1)
    best = score.argmax().view(1)
    inl = (dist.index_select(1, best)[:, 0] < distance_threshold)  # [M]
    count = inl.sum()
    # Least squares z = a x + b y + c on the inliers (well-conditioned for near-horizontal planes),
    # as weighted normal equations so that the inlier set keeps its static shape.
    a_mat = torch.cat([cand[:, :2], torch.ones(m, 1, device=dev)], 1).double()
    w = inl.double().unsqueeze(1)
    return (a_mat * w).T @ a_mat, (a_mat * w).T @ cand[:, 2:3].double(), ok.any(), count


def fit_ground_plane_open3d(
    xyz: np.ndarray, distance_threshold: float = 0.15, iterations: int = 64, max_height: float = 1.0, seed: int = 0
) -> GroundPlane:
    """open3d ``segment_plane`` on the same candidates (for comparison; no tilt check inside
    open3d, so a steep result is reported as a fallback)."""
    import open3d as o3d  # heavy import (~1 s): only where it is used

    pts = np.asarray(xyz, dtype=np.float64)
    pts = pts[np.abs(pts[:, 2]) < max_height]
    if pts.shape[0] < 3:
        return _flat()
    o3d.utility.random.seed(seed)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    (a, b, c, d), inliers = pcd.segment_plane(distance_threshold, 3, iterations)
    n = np.array([a, b, c])
    s = np.linalg.norm(n) * (1.0 if c >= 0 else -1.0)
    n, d = n / s, d / s
    if n[2] < math.cos(math.radians(15.0)):
        return _flat(len(inliers) / pts.shape[0])
    return GroundPlane(tuple(float(v) for v in n), float(d), len(inliers) / pts.shape[0], False)
