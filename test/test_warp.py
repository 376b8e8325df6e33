"""Ego-motion warp: exact shifts and rotations, zero fill, full-circle return."""

import itertools
import math

import numpy as np
import pytest
import torch

from ssm_perception.bev.grid import BevGrid
from ssm_perception.geometry import se2_matrix
from ssm_perception.temporal.warp import se2_between, warp_state, warp_tensor

GRID = BevGrid.square(32, 0.5)  # 16 m x 16 m, cells centred at +-0.25, +-0.75, ...


def _rand(b=2, c=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, c, GRID.nx, GRID.ny, generator=g) + 0.5  # never zero


def test_se2_between_is_motion_in_previous_frame():
    prev = se2_matrix(10.0, 5.0, math.pi / 2)
    cur = se2_matrix(10.0, 7.0, math.pi / 2 + 0.1)  # moved 2 m along odom +y == prev-frame +x
    dx, dy, dyaw = se2_between(prev, cur)
    assert dx == pytest.approx(2.0, abs=1e-12)
    assert dy == pytest.approx(0.0, abs=1e-12)
    assert dyaw == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_integer_cell_shift_is_exact_and_fills_zeros(mode):
    x = _rand()
    k = 3  # vehicle moved k cells forward: what was at row i + k is now at row i
    out = warp_state({"h": x}, (k * GRID.resolution, 0.0, 0.0), GRID, mode)["h"]
    assert torch.equal(out[:, :, : GRID.nx - k], x[:, :, k:])
    assert torch.equal(out[:, :, GRID.nx - k :], torch.zeros_like(out[:, :, GRID.nx - k :]))
    # sideways (left) by 2 cells, through a 4x4 matrix
    out = warp_tensor(x, se2_matrix(0.0, 2 * GRID.resolution, 0.0), GRID, mode)
    assert torch.equal(out[..., : GRID.ny - 2], x[..., 2:])
    assert (out[..., GRID.ny - 2 :] == 0).all()


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_quarter_turns_are_exact(quarter):
    x = _rand()
    out = warp_tensor(x, (0.0, 0.0, quarter * math.pi / 2), GRID)
    # Vehicle turned left by 90 deg: a point ahead (+x) is now on the right (-y) of the new frame.
    # p_prev = R p_cur; row index i <-> x, column j <-> y; rot90 with dims (H, W).
    expected = torch.rot90(x, k=-quarter, dims=(2, 3))
    assert torch.equal(out, expected)
    if quarter == 1:  # the cell just ahead of the vehicle ends up just to its right
        n = GRID.nx
        assert torch.equal(out[:, :, n // 2 - 1, 0], x[:, :, n - 1, n // 2 - 1])


def test_subcell_shift_is_interpolated_and_outside_is_zero():
    x = torch.ones(1, 1, GRID.nx, GRID.ny)
    out = warp_tensor(x, (0.25 * GRID.resolution, 0.0, 0.0), GRID)
    assert torch.allclose(out, torch.ones_like(out))  # source still inside the extent: no fade
    out = warp_tensor(x, (0.75 * GRID.resolution, 0.0, 0.0), GRID)
    assert torch.allclose(out[:, :, :-1], torch.ones_like(out[:, :, :-1]))
    assert (out[:, :, -1] == 0).all()  # source beyond the previous grid's extent -> exactly 0
    y = torch.zeros(1, 1, GRID.nx, GRID.ny)
    y[0, 0, 10, 10] = 1.0
    half = warp_tensor(y, (0.5 * GRID.resolution, 0.0, 0.0), GRID)
    assert half[0, 0, 9, 10].item() == pytest.approx(0.5) and half[0, 0, 10, 10].item() == pytest.approx(0.5)
    far = warp_tensor(x, (1000.0, 0.0, 0.0), GRID)
    assert (far == 0).all()


def test_batch_of_motions():
    x = _rand(b=2, c=1)
    motions = torch.tensor([[GRID.resolution, 0.0, 0.0], [0.0, 0.0, math.pi]], dtype=torch.float64)
    out = warp_tensor(x, motions, GRID)
    assert torch.equal(out[0, :, :-1], x[0, :, 1:])
    assert torch.equal(out[1], torch.rot90(x[1], 2, (1, 2)))


def test_full_circle_nearest_is_exact():
    # Drive a square (cell-aligned steps of 1 cell and 90-degree turns, each side 4 cells) starting
    # and ending at the same odom pose. Content stays inside the grid, so nearest mode is exact.
    x = torch.zeros(1, 2, GRID.nx, GRID.ny)
    x[:, :, 10:22, 10:22] = _rand(1, 2)[:, :, 10:22, 10:22]
    pose = np.eye(4)
    state = {"s": x}
    res = GRID.resolution
    for _ in range(4):
        for _ in range(4):
            nxt = pose @ se2_matrix(res, 0.0, 0.0)
            state = warp_state(state, se2_between(pose, nxt), GRID, "nearest")
            pose = nxt
        nxt = pose @ se2_matrix(0.0, 0.0, math.pi / 2)
        state = warp_state(state, se2_between(pose, nxt), GRID, "nearest")
        pose = nxt
    assert np.allclose(pose, np.eye(4), atol=1e-9)
    assert torch.equal(state["s"], x)


def test_full_circle_bilinear_small_steps_returns_close():
    # 72 steps of 5 degrees on a circle of radius 2 m: non-aligned, so bilinear diffuses the blob
    # (peak error ~0.56) but must bring it back to the same place: centroid within 0.15 m (0.3 cell),
    # mass within 5%.
    c = GRID.cell_centers()
    blob = torch.exp(-((c[0] - 1.0) ** 2 + c[1] ** 2) / (2 * (3 * GRID.resolution) ** 2))
    state = {"s": blob.view(1, 1, GRID.nx, GRID.ny).clone()}
    n, radius = 72, 2.0
    poses = [se2_matrix(radius * math.sin(2 * math.pi * k / n), radius * (1 - math.cos(2 * math.pi * k / n)),
                        2 * math.pi * k / n) for k in range(n + 1)]
    for a, b in itertools.pairwise(poses):
        state = warp_state(state, se2_between(a, b), GRID, "bilinear")
    s = state["s"][0, 0]
    mass = s.sum()
    centroid = torch.stack([(s * c[0]).sum() / mass, (s * c[1]).sum() / mass])
    assert torch.allclose(centroid, torch.tensor([1.0, 0.0]), atol=0.15), centroid
    assert mass.item() == pytest.approx(blob.sum().item(), rel=0.05)
    assert torch.isfinite(state["s"]).all()


def test_bad_motion_raises():
    with pytest.raises(ValueError):
        warp_tensor(_rand(), (float("nan"), 0.0, 0.0), GRID)
    with pytest.raises(ValueError):
        warp_tensor(_rand(), (0.0, 0.0, 0.0), GRID, mode="cubic")


def test_warp_state_several_tensors_same_motion():
    a, b = _rand(c=2), _rand(c=5)
    out = warp_state({"a": a, "b": b}, (0.3, -0.2, 0.05), GRID)
    assert torch.equal(out["a"], warp_tensor(a, (0.3, -0.2, 0.05), GRID))
    assert torch.equal(out["b"], warp_tensor(b, (0.3, -0.2, 0.05), GRID))
    assert warp_state({}, (1.0, 0.0, 0.0), GRID) == {}
    with pytest.raises(ValueError):
        warp_state({"a": torch.zeros(2, 1, 8, 8)}, (0.0, 0.0, 0.0), GRID)
