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

from ssm_perception.bev.device import constant, upload

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
    """``fit_ground_plane`` without reading anything back: returns (unit normal [3] float64,
    d float64, inlier fraction float64, fallback bool), 0-d tensors on xyz's device, FLAT_GROUND
    where the fit fails. ``mask`` [N] bool: points to consider.

    Static shapes throughout, so nothing waits for the device and the whole fit is one pure tensor
    function (``_ground_fit``); ``graphs`` (bev.device.GraphCache of a CUDA pipeline): it replays as
    one CUDA graph. The candidates are not compacted: ``sample`` slots pick candidates by rank
    through the running count of the candidate mask (cumsum + searchsorted), stratified (slot j
    takes a random rank in the j-th of ``sample`` equal parts of the candidate order: every candidate
    has the same chance sample / M to be in the sample, as with a random subset), or every candidate
    once when there are at most ``sample``; the hypotheses' three slots are drawn in [0, used slots).
    The random numbers are fixed per (seed, sample, iterations) (made once, with a CPU generator, so
    every device draws the same points); only where they land depends on the candidate count, on the
    device. Padding (points outside ``mask``) does not change the result."""
    dev = xyz.device
    if xyz.shape[0] == 0:  # (a host fact: no points, no fit)
        return (constant(FLAT_GROUND[:3], torch.float64, dev).clone(), torch.zeros((), dtype=torch.float64, device=dev),
                torch.zeros((), dtype=torch.float64, device=dev), torch.ones((), dtype=torch.bool, device=dev))
    fn = functools.partial(_ground_fit, distance_threshold=float(distance_threshold), iterations=int(iterations),
                           cos_tilt=math.cos(math.radians(max_tilt_deg)), max_height=float(max_height),
                           sample=int(sample), min_inliers=int(min_inliers), seed=int(seed))
    inputs = (xyz.float(),) if mask is None else (xyz.float(), mask.bool())
    if graphs is not None:
        key = (float(distance_threshold), int(iterations), float(max_tilt_deg), float(max_height), int(sample),
               int(min_inliers), int(seed))
        return graphs.run("ground", key, fn, *inputs)
    return fn(*inputs)


@functools.lru_cache(maxsize=16)
def _draws(sample: int, iterations: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The fit's fixed random numbers on ``device`` (made once): slot indices [S] float64, the
    stratum offsets u [S] in [0, 1), the hypotheses' slot fractions v [K, 3] in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(sample, generator=gen, dtype=torch.float64)
    v = torch.rand(iterations, 3, generator=gen, dtype=torch.float64)
    return (upload(torch.arange(sample, dtype=torch.float64), device), upload(u, device), upload(v, device))


def _ground_fit(xyz: Tensor, mask: Tensor | None = None, *, distance_threshold: float, iterations: int,
                cos_tilt: float, max_height: float, sample: int, min_inliers: int, seed: int):
    """The whole fit (see ``fit_ground_plane_tensor``) as a pure tensor function of static shapes
    (a CUDA graph): xyz [N, 3] float32 (N >= 1), mask [N] bool or None -> (normal, d, frac, fallback)."""
    dev = xyz.device
    n = xyz.shape[0]
    sel = xyz[:, 2].abs() < max_height
    if mask is not None:
        sel = sel & mask
    csum = torch.cumsum(sel, 0)  # [N] int64: candidates up to and including each point
    m = csum[-1]  # the candidate count, a 0-d device tensor (never read on the host)
    slot, u, v = _draws(sample, iterations, seed, dev)
    m_f = m.double()
    spread = torch.floor((slot + u) * (m_f / sample)).clamp_max(m_f - 1)  # one rank per stratum (M > S)
    rank = torch.where(m > sample, spread, slot)  # else slot j -> the j-th candidate
    used = slot < m_f  # [S] slots holding a candidate
    idx = torch.searchsorted(csum, rank.long() + 1).clamp_max(n - 1)  # first point whose count reaches rank + 1
    cand = torch.where(used.unsqueeze(1), xyz.index_select(0, idx), 0.0)  # [S, 3]
    m_used = torch.clamp(m_f, max=float(sample))
    tri_idx = torch.floor(v * m_used).long().clamp(0, sample - 1)  # [K, 3] slots in [0, used)
    ata, atb, ok_any, count = _ransac_normal_equations(cand, tri_idx, used, distance_threshold=distance_threshold,
                                                       cos_tilt=cos_tilt)
    sol, det_ok = _solve3(ata, atb[:, 0])
    one = torch.ones((), dtype=torch.float64, device=dev)
    normal = torch.stack([-sol[0], -sol[1], one])
    scale = normal.norm()
    normal = normal / scale
    enough = m >= max(3, min_inliers)
    good = (enough & ok_any & (count >= min_inliers) & det_ok & torch.isfinite(normal).all()
            & (normal[2] >= cos_tilt))
    frac = torch.where(enough & ok_any, count.double() / m_used.clamp_min(1.0), torch.zeros_like(m_f))
    flat_n = constant(FLAT_GROUND[:3], torch.float64, dev)
    return (torch.where(good, normal, flat_n), torch.where(good, -sol[2] / scale, torch.zeros_like(scale)), frac,
            ~good)


def _solve3(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """a [3, 3] x = b [3] by Cramer's rule (float64), and whether a is non-singular: a handful of
    elementwise ops, no LAPACK call (capturable in a CUDA graph without a solver handle, no info read)."""
    c0, c1, c2 = a[:, 0], a[:, 1], a[:, 2]
    x12 = torch.linalg.cross(c1, c2)
    det = (c0 * x12).sum()
    num = torch.stack([(b * x12).sum(), (c0 * torch.linalg.cross(b, c2)).sum(), (c0 * torch.linalg.cross(c1, b)).sum()])
    ok = det != 0
    return num / torch.where(ok, det, torch.ones_like(det)), ok


def _ransac_normal_equations(cand: Tensor, tri_idx: Tensor, used: Tensor, *, distance_threshold: float,
                             cos_tilt: float):
    """Candidate slots [S, 3] (``used`` [S] bool: slots holding a candidate) and hypothesis triples
    [K, 3] -> the best hypothesis' inliers as weighted normal equations (A^T W A [3, 3], A^T W z [3, 1],
    float64), whether any hypothesis was admissible, the inlier count."""
    dev = cand.device
    m = cand.shape[0]
    tri = cand[tri_idx]  # [K, 3, 3]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [K, 3]
    norm = n.norm(dim=1, keepdim=True)
    n = torch.where(n[:, 2:3] < 0, -n, n) / norm.clamp_min(1e-9)
    ok = (norm[:, 0] > 1e-6) & (n[:, 2] > cos_tilt)
    d = -(n * tri[:, 0]).sum(1)  # [K]
    near = ((cand @ n.T + d).abs() < distance_threshold) & used.unsqueeze(1)  # [S, K]: all hypotheses in one matmul
    score = near.sum(0).masked_fill(~ok, -1)
    best = score.argmax().view(1)
    inl = near.index_select(1, best)[:, 0]  # [S]
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
