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


# ---------------------------------------------------------------------------------------------
# Channels-last CPU tensors are warped by row gathers (warp.grid_taps + embedding_bag): the values
# must be grid_sample's, non-finite cells must spread exactly as far, and gradients must agree.
MOTIONS = [(0.83, 0.07, 0.013), (-3.3, 1.27, -0.4), (0.25, 0.25, 0.0), (10.1, -7.3, 2.0), (0.5, 0.0, 0.0),
           (0.0, 0.0, math.pi / 2), (1000.0, 0.0, 0.0), (0.37, -0.21, 0.9)]


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("n", [32, 37])  # even and odd grids (the un-normalization differs in rounding)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_row_gather_warp_equals_grid_sample(n, mode):
    grid = BevGrid.square(n, 0.5)
    g = torch.Generator().manual_seed(n)
    for motion in MOTIONS:
        x = torch.randn(2, 24, n, n, generator=g) * 5
        x[0, :, 3, 4] = float("nan")
        x[1, :, n - 1, n - 2] = float("inf")  # an edge cell: its zero-weight neighbour taps must not turn NaN
        x[1, :5, 0, 0] = float("-inf")
        ref = warp_state({"s": x}, motion, grid, mode)["s"]  # NCHW: grid_sample
        out = warp_state({"s": _cl(x)}, motion, grid, mode)["s"]
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), motion
        fin = torch.isfinite(ref)
        assert torch.equal(out[~fin & ~torch.isnan(ref)], ref[~fin & ~torch.isnan(ref)])  # same infinities
        assert (out[fin] - ref[fin]).abs().max().item() <= 1e-5, motion  # measured: bit-equal


def test_row_gather_warp_random_states_and_motions():
    """Random states at the benchmark's state width, random per-batch motions (hypothesis-free:
    a fixed seed keeps the test fast and reproducible)."""
    grid = BevGrid.square(48, 0.5)
    rng = np.random.default_rng(5)
    for _ in range(6):
        x = torch.from_numpy(rng.normal(size=(3, 128, 48, 48)).astype(np.float32))
        se2 = torch.from_numpy(np.stack([rng.uniform(-6, 6, 3), rng.uniform(-6, 6, 3), rng.uniform(-np.pi, np.pi, 3)], 1))
        ref = warp_tensor(x, se2, grid)
        out = warp_tensor(_cl(x), se2, grid)
        assert (out - ref).abs().max().item() <= 1e-5


def test_row_gather_warp_gradients_match_grid_sample():
    grid = BevGrid.square(16, 0.5)
    x = torch.randn(1, 6, 16, 16, generator=torch.Generator().manual_seed(3))
    w = torch.randn(1, 6, 16, 16, generator=torch.Generator().manual_seed(4))
    grads = []
    for inp in (x.clone(), _cl(x)):
        inp.requires_grad_(True)
        (warp_tensor(inp, (0.41, -0.17, 0.3), grid) * w).sum().backward()
        grads.append(inp.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_single_channel_and_cuda_layouts_keep_grid_sample():
    # [B, 1, H, W] is both contiguous and channels-last: it stays on grid_sample (one plane, nothing to gather)
    from ssm_perception.temporal.warp import is_cell_rows

    assert not is_cell_rows(torch.zeros(1, 1, 8, 8))
    assert not is_cell_rows(torch.zeros(1, 4, 8, 8))
    assert is_cell_rows(_cl(torch.zeros(1, 4, 8, 8)))


def test_cpu_mamba_step_in_cell_rows_matches_the_cell_aligned_form():
    """The CPU inference step (channels-last state, cell blocks) against the cell-aligned form that
    autograd uses, over several warped steps, with a reset mask and a state that starts NCHW."""
    from ssm_perception.config import ModelConfig
    from ssm_perception.temporal.mamba import CELL_BLOCK, MambaCore

    torch.manual_seed(0)
    core = MambaCore(8, ModelConfig(d_model=16, d_state=4, headdim=8)).eval()
    n = 40  # 1600 cells: more than one CELL_BLOCK, the last one partial
    assert n * n > CELL_BLOCK and (n * n) % CELL_BLOCK
    grid = BevGrid.square(n, 0.5)
    g = torch.Generator().manual_seed(1)
    state_fast = {"ssm": torch.randn(1, core.state_channels, n, n, generator=g)}
    state_ref = {k: v.clone() for k, v in state_fast.items()}
    for t in range(4):
        x = torch.randn(1, 8, n, n, generator=g)
        dt = torch.tensor([0.1 + 0.05 * t])
        mask = torch.rand(1, n, n, generator=g) < 0.05 if t == 2 else None
        motion = (0.3, 0.1 * t, 0.05)
        with torch.no_grad():  # CPU inference: row gathers + cell rows
            y_fast, state_fast = core.step(x, warp_state(state_fast, motion, grid), dt, mask)
        with torch.enable_grad():  # autograd: grid_sample on NCHW + the cell-aligned form
            warped = warp_state({"ssm": state_ref["ssm"].contiguous().requires_grad_(True)}, motion, grid)
            y_ref, state_ref = core.step(x, warped, dt, mask)
        state_ref = {k: v.detach() for k, v in state_ref.items()}
        assert state_fast["ssm"].is_contiguous(memory_format=torch.channels_last)
        assert (y_fast - y_ref.detach()).abs().max().item() <= 1e-5
        assert (state_fast["ssm"] - state_ref["ssm"]).abs().max().item() <= 1e-5


def test_shipped_mamba_checkpoint_same_outputs_on_the_cpu_fast_path():
    """The shipped weights through the CPU fast path (row-gather warp, cell-row step) against the
    grid_sample warp + cell-aligned step, over warped frames: heads within 1e-4."""
    from pathlib import Path

    from ssm_perception.config import GridConfig
    from ssm_perception.model import load_checkpoint

    path = Path(__file__).resolve().parents[1] / "ssm_perception" / "checkpoints" / "mamba.safetensors"
    n = 24
    m, _ = load_checkpoint(path, grid=GridConfig(length_x=n * 0.5, length_y=n * 0.5, resolution=0.5))
    g = torch.Generator().manual_seed(7)
    xs = [torch.rand(1, m.in_channels, n, n, generator=g) for _ in range(4)]
    fast, ref = m.init_state(1), m.init_state(1)
    for t, x in enumerate(xs):
        motion = (0.45, 0.05 * t, 0.02)
        dt = torch.tensor([0.1])
        with torch.no_grad():
            h_fast, fast = m.step(x, m.warp(fast, motion) if t else fast, dt)
        with torch.enable_grad():
            ref = {k: v.detach().contiguous().requires_grad_(True) for k, v in ref.items()}
            h_ref, ref = m.step(x, m.warp(ref, motion) if t else ref, dt)
        for k in h_ref:
            assert (h_fast[k] - h_ref[k].detach()).abs().max().item() <= 1e-4, k
    assert fast["ssm"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_cpu_mamba_warp_step_gathers_inside_the_update(mode):
    """MambaCore.warp_step on CPU gathers each block's warped rows inside the update (the warped
    state is never materialised): same numbers as warp_state followed by step, resets and
    non-finite cells included, for an NCHW or channels-last previous state."""
    from ssm_perception.config import ModelConfig
    from ssm_perception.temporal.mamba import MambaCore

    torch.manual_seed(0)
    core = MambaCore(8, ModelConfig(d_model=16, d_state=4, headdim=8)).eval()
    n, b = 33, 2  # 1089 cells per frame: blocks straddle the batch boundary
    grid = BevGrid.square(n, 0.5)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(b, core.state_channels, n, n, generator=g)
    h[0, :, 5, 5] = float("nan")
    x = torch.randn(b, 8, n, n, generator=g)
    mask = torch.rand(b, n, n, generator=g) < 0.1
    mask[0, 5, 4] = True  # the NaN cell moves here by half a cell or so: reset must clear it exactly
    dt = torch.full((b,), 0.1)
    for prev, m in ((h, mask), (_cl(h), None), (_cl(h), mask)):
        for motion in [(0.3, 0.1, 0.05), (100.0, 0.0, 0.0), (0.37, -1.2, 2.0)]:
            with torch.no_grad():
                y1, s1 = core.warp_step(x, {"ssm": prev}, motion, dt, m, grid, mode)
                y2, s2 = core.step(x, warp_state({"ssm": prev}, motion, grid, mode), dt, m)
            assert torch.equal(torch.isnan(s1["ssm"]), torch.isnan(s2["ssm"])) and torch.equal(
                torch.isnan(y1), torch.isnan(y2))
            assert (s1["ssm"] - s2["ssm"]).nan_to_num().abs().max().item() <= 1e-5
            assert (y1 - y2).nan_to_num().abs().max().item() <= 1e-5
            if m is not None:
                assert torch.isfinite(s1["ssm"][0, :, 5, 4]).all()
    with torch.no_grad(), pytest.raises(ValueError, match="does not match"):
        core.warp_step(x, {"ssm": h[:, :, :-1]}, (0.3, 0.0, 0.0), dt, None, grid)


def test_empty_rows_is_an_ordinary_writable_tensor():
    from ssm_perception.temporal.warp import empty_rows

    for rows, ch in ((3, 5), (4096, 512)):  # below and above the huge-page size
        t = empty_rows(rows, ch)
        assert t.shape == (rows, ch) and t.dtype == torch.float32 and t.is_contiguous()
        t.copy_(torch.arange(rows * ch, dtype=torch.float32).view(rows, ch))
        assert t[-1, -1].item() == rows * ch - 1
    assert empty_rows(8, 8, torch.float64).dtype == torch.float64
