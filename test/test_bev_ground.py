"""Ground plane (torch RANSAC vs open3d)."""

import math

import numpy as np
import pytest
import torch

from ssm_perception.bev.ground import (
    fit_ground_plane,
    fit_ground_plane_open3d,
    fit_ground_plane_tensor,
)


def _scene(seed=0, slope=0.05, offset=-0.2):
    """Ground z = slope * x + offset with noise, a wall (vertical plane) and clutter."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-20, 20, (6000, 2))
    ground = np.c_[xy, slope * xy[:, 0] + offset + rng.normal(0, 0.02, len(xy))]
    wall = np.c_[np.full(3000, 5.0), rng.uniform(-10, 10, 3000), rng.uniform(-0.5, 0.9, 3000)]
    clutter = rng.uniform([-20, -20, -0.5], [20, 20, 0.9], (1500, 3))
    return np.concatenate([ground, wall, clutter]).astype(np.float32)


def _check(plane, slope=0.05, offset=-0.2):
    n = np.array(plane.normal)
    expected = np.array([-slope, 0.0, 1.0]) / math.hypot(slope, 1.0)
    assert not plane.fallback
    assert np.allclose(n, expected, atol=5e-3)
    assert -plane.d / n[2] == pytest.approx(offset, abs=0.02)  # z at x = y = 0


def test_torch_ransac_finds_the_tilted_ground_not_the_wall():
    pts = _scene()
    plane = fit_ground_plane(torch.from_numpy(pts))
    _check(plane)
    h = plane.height(torch.tensor([[0.0, 0.0, 1.0]]))
    assert h.item() == pytest.approx(1.2 / math.hypot(0.05, 1.0), abs=0.02)
    again = fit_ground_plane(torch.from_numpy(pts))  # fixed seed: the same hypotheses again
    # (not bit-exact: CPU matmul reduction order may change with threading, flipping a border inlier)
    assert np.allclose(again.normal, plane.normal, atol=1e-5) and again.d == pytest.approx(plane.d, abs=1e-4)


def test_open3d_agrees_with_torch():
    _check(fit_ground_plane_open3d(_scene(seed=1)))


def test_fallback_on_too_few_points():
    plane = fit_ground_plane(torch.zeros(0, 3))
    assert plane.fallback and plane.normal == (0.0, 0.0, 1.0)
    wall_only = np.c_[np.full(500, 3.0), np.random.default_rng(0).uniform(-5, 5, (500, 2))].astype(np.float32)
    wall_only[:, 2] = np.clip(wall_only[:, 2], -0.9, 0.9)
    assert fit_ground_plane(torch.from_numpy(wall_only)).fallback


def test_sample_depends_only_on_the_candidates_not_on_other_points():
    """The fit draws its sample by rank among the candidates (no compaction, no host read): points
    outside the mask, wherever they sit in the cloud (a CUDA graph's padding, dropped returns),
    change nothing, bit for bit; with fewer candidates than the sample size each is used once."""
    pts = torch.from_numpy(_scene())
    rng = np.random.default_rng(3)
    junk = torch.from_numpy(rng.uniform(-20, 20, (4000, 3)).astype(np.float32))
    mask = torch.zeros(len(pts) + len(junk), dtype=torch.bool)
    mask[torch.from_numpy(rng.choice(len(mask), len(pts), replace=False))] = True  # the points, in order,
    cloud = torch.empty(len(mask), 3)  # spread among the others
    cloud[mask], cloud[~mask] = pts, junk
    for sample in (4096, 20000):  # fewer candidates than the sample, and more
        ref = fit_ground_plane_tensor(pts, sample=sample)
        got = fit_ground_plane_tensor(cloud, mask, sample=sample)
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
        assert not bool(got[3])
    assert not torch.equal(fit_ground_plane_tensor(pts, sample=4096)[0], fit_ground_plane_tensor(pts, sample=20000)[0])
