"""MambaCore (reference backend) on CPU: streaming == parallel, dt-awareness, resets, robustness,
gradients and the cell-aligned state layout."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssm_perception.config import ModelConfig
from ssm_perception.temporal.base import TemporalCore
from ssm_perception.temporal.mamba import DT_RATIO_MAX, STEP_MAX, MambaCore, segsum

# Streaming step vs the chunked parallel scan, fp32: observed ~1e-6; stated tolerance 2e-5 (outputs
# are LayerNorm'ed, O(1)).
SEQ_TOL = 2e-5
C_IN = 6


def make_core(**kw) -> MambaCore:
    torch.manual_seed(0)
    return MambaCore(C_IN, ModelConfig(**kw))


def stream(core, xs, dts, masks, state):
    ys = []
    for t in range(xs.shape[0]):
        y, state = core.step(xs[t], state, dts[t], None if masks is None else masks[t])
        ys.append(y)
    return torch.stack(ys), state


def random_state(core, b, h, w, scale=0.5):
    st = core.init_state(b, h, w)
    st["ssm"] = torch.randn_like(st["ssm"]) * scale
    return st


def test_protocol_and_shapes():
    core = make_core()
    assert isinstance(core, TemporalCore)
    assert core.out_channels == core.cfg.d_model
    st = core.init_state(2, 5, 7)
    assert list(st) == ["ssm"]
    assert st["ssm"].shape == (2, core.nheads * core.headdim * core.d_state, 5, 7)
    assert st["ssm"].dtype == torch.float32 and not st["ssm"].any()
    y, st2 = core.step(torch.randn(2, C_IN, 5, 7), st, torch.tensor([0.1, 0.1]))
    assert y.shape == (2, core.out_channels, 5, 7)
    assert st2["ssm"].shape == st["ssm"].shape
    assert core.state_bytes_per_cell() == 4 * st["ssm"].shape[1]


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="must be a multiple of model.headdim"):
        MambaCore(4, ModelConfig(d_model=24, expand=1, headdim=16))
    core = make_core()
    with pytest.raises(ValueError, match="expected x"):
        core.step(torch.randn(1, C_IN + 1, 4, 4), core.init_state(1, 4, 4), torch.tensor([0.1]))


@pytest.mark.parametrize("with_resets", [False, True])
def test_streaming_equals_parallel_scan(with_resets):
    core = make_core()
    t, b, h, w = 21, 2, 6, 5  # 21 frames: crosses the 16-frame chunk boundary of the scan
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(t, b, C_IN, h, w, generator=g)
    dts = torch.rand(t, b, generator=g) * 0.4 + 0.02  # variable rate
    masks = (torch.rand(t, b, h, w, generator=g) < 0.15) if with_resets else None
    st = random_state(core, b, h, w)
    with torch.no_grad():
        ys_s, st_s = stream(core, xs, dts, masks, st)
        ys_p, st_p = core.forward_sequence(xs, dts, masks, st)
    assert (ys_s - ys_p).abs().max().item() < SEQ_TOL
    assert (st_s["ssm"] - st_p["ssm"]).abs().max().item() < SEQ_TOL
    # the state really carries information (the test is not trivially satisfied by a zero state)
    assert st_p["ssm"].abs().max().item() > 1e-2


def test_segsum_is_stable_with_minus_inf():
    a = torch.tensor([0.5, -math.inf, 0.25, 1.0])
    s = segsum(a)
    assert not torch.isnan(s).any()
    assert s[3, 2].item() == 1.0 and s[3, 1].item() == 1.25  # segments after the reset stay finite
    assert s[3, 0].item() == -math.inf and s[1, 0].item() == -math.inf
    assert s[0, 1].item() == -math.inf  # above the diagonal


def _decay_of_previous_state(core, x, h0, dt):
    """h_new(h0) - h_new(0): the part of the new state that comes from the previous one."""
    with torch.no_grad():
        _, with_state = core.step(x, {"ssm": h0}, dt)
        _, from_zero = core.step(x, core.init_state(*x.shape[:1], *x.shape[2:]), dt)
    return with_state["ssm"] - from_zero["ssm"]


def test_dt_enters_the_discretization():
    core = make_core()
    x = torch.randn(1, C_IN, 4, 4)
    h0 = random_state(core, 1, 4, 4)["ssm"]
    kept = {dt: _decay_of_previous_state(core, x, h0, torch.tensor([dt])) for dt in (0.05, 0.1, 0.2, 0.4)}
    norms = [kept[dt].norm().item() for dt in (0.05, 0.1, 0.2, 0.4)]
    assert norms == sorted(norms, reverse=True) and norms[-1] < norms[0]  # larger gaps forget more
    # A gap of 2 dt decays exactly like two gaps of dt: exp(2 s A) = exp(s A)^2 (per head, per cell)
    ratio_1 = kept[0.1] / h0
    ratio_2 = kept[0.2] / h0
    assert torch.allclose(ratio_2, ratio_1.square(), rtol=1e-4, atol=1e-6)
    # the input term scales with dt as well (step * B x): same x, no previous state
    with torch.no_grad():
        _, s1 = core.step(x, core.init_state(1, 4, 4), torch.tensor([0.1]))
        _, s2 = core.step(x, core.init_state(1, 4, 4), torch.tensor([0.2]))
    assert torch.allclose(s2["ssm"], 2 * s1["ssm"], rtol=1e-4, atol=1e-7)


def test_dt_per_batch_element():
    core = make_core()
    x = torch.randn(1, C_IN, 3, 3).expand(2, -1, -1, -1)
    h0 = random_state(core, 1, 3, 3)["ssm"].expand(2, -1, -1, -1)
    with torch.no_grad():
        _, st = core.step(x, {"ssm": h0}, torch.tensor([0.1, 0.3]))
        _, a = core.step(x[:1], {"ssm": h0[:1]}, torch.tensor([0.1]))
        _, b = core.step(x[:1], {"ssm": h0[:1]}, torch.tensor([0.3]))
    assert torch.allclose(st["ssm"][0], a["ssm"][0], atol=1e-6)
    assert torch.allclose(st["ssm"][1], b["ssm"][0], atol=1e-6)


def test_reset_mask_means_exact_initial_state():
    core = make_core()
    b, h, w = 2, 5, 4
    x = torch.randn(b, C_IN, h, w)
    dt = torch.tensor([0.1, 0.1])
    garbage = random_state(core, b, h, w, scale=1e3)
    garbage["ssm"][0, :, 1, 1] = float("nan")
    garbage["ssm"][1, :, 2, 3] = float("inf")
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[0, 1, 1] = mask[1, 2, 3] = mask[0, 4, 0] = True
    with torch.no_grad():
        _, st_m = core.step(x, garbage, dt, mask)
        y_0, st_0 = core.step(x, core.init_state(b, h, w), dt)
        y_all, st_all = core.step(x, garbage, dt, torch.ones(b, h, w, dtype=torch.bool))
    sel = mask.unsqueeze(1).expand_as(st_m["ssm"])
    assert torch.equal(st_m["ssm"][sel], st_0["ssm"][sel])  # bit-exact: the reset cell restarts from zero
    assert torch.equal(st_all["ssm"], st_0["ssm"])
    assert torch.equal(y_all, y_0)
    assert torch.isfinite(st_m["ssm"]).all()
    # unmasked cells keep their memory
    assert not torch.equal(st_m["ssm"][~sel], st_0["ssm"][~sel])
    # forward_sequence honours a reset on the first frame too
    with torch.no_grad():
        _, seq_st = core.forward_sequence(x.unsqueeze(0), dt.unsqueeze(0), mask.unsqueeze(0), garbage)
    assert torch.equal(seq_st["ssm"][sel], st_0["ssm"][sel])


@pytest.mark.parametrize("dt", [1e3, 1e9, float("inf"), float("nan"), 0.0])
def test_no_nan_for_extreme_dt_or_zero_input(dt):
    core = make_core()
    st = random_state(core, 1, 4, 4, scale=10.0)
    with torch.no_grad():
        for x in (torch.zeros(1, C_IN, 4, 4), torch.randn(1, C_IN, 4, 4) * 100):
            y, st2 = core.step(x, st, torch.tensor([dt]))
            assert torch.isfinite(y).all() and torch.isfinite(st2["ssm"]).all()
            ys, st3 = core.forward_sequence(x.unsqueeze(0).repeat(3, 1, 1, 1, 1), torch.full((3, 1), dt), None, st)
            assert torch.isfinite(ys).all() and torch.isfinite(st3["ssm"]).all()


def test_huge_dt_forgets_almost_everything():
    core = make_core()
    x = torch.randn(1, C_IN, 3, 3)
    h0 = random_state(core, 1, 3, 3)["ssm"]
    kept = _decay_of_previous_state(core, x, h0, torch.tensor([1e9]))
    # the step saturates: exp(min(softplus(.) * DT_RATIO_MAX, STEP_MAX) * A) with A <= -1
    assert kept.abs().max().item() <= h0.abs().max().item() * math.exp(-min(STEP_MAX, 1e-4 * DT_RATIO_MAX)) + 1e-6
    assert kept.abs().max().item() < 0.5 * h0.abs().max().item()


def test_gradients_flow_through_the_parallel_scan_with_resets():
    core = make_core()
    t, b, h, w = 5, 1, 4, 4
    xs = torch.randn(t, b, C_IN, h, w, requires_grad=True)
    dts = torch.full((t, b), 0.1)
    masks = torch.zeros(t, b, h, w, dtype=torch.bool)
    masks[2, 0, 1, 1] = True
    st = random_state(core, b, h, w)
    st["ssm"].requires_grad_(True)
    ys, st_f = core.forward_sequence(xs, dts, masks, st)
    (ys.square().mean() + st_f["ssm"].square().mean()).backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0
    assert torch.isfinite(st["ssm"].grad).all()
    # the reset cut the path from the initial state of that cell to everything after frame 2
    assert st["ssm"].grad[0, :, 1, 1].abs().max().item() > 0  # (frames 0, 1 still see it)


def test_gradient_of_streaming_step_matches_parallel():
    core = make_core()
    xs = torch.randn(4, 1, C_IN, 3, 3)
    dts = torch.full((4, 1), 0.1)
    ys_s, _ = stream(core, xs, dts, None, core.init_state(1, 3, 3))
    g_s = torch.autograd.grad(ys_s.sum(), core.A_log)[0]
    ys_p, _ = core.forward_sequence(xs, dts)
    g_p = torch.autograd.grad(ys_p.sum(), core.A_log)[0]
    assert torch.allclose(g_s, g_p, rtol=1e-3, atol=1e-5)


def test_state_layout_works_with_a_plain_grid_sample_warp():
    """The state is cell-aligned: moving it with grid_sample moves each cell's memory whole."""
    core = make_core()
    b, h, w = 1, 6, 5
    h0 = random_state(core, b, h, w)["ssm"]
    # shift by +1 cell along H (source row i-1): affine grid in normalized coordinates (2 / H per cell)
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, -2.0 / h]]])
    grid = F.affine_grid(theta, list(h0.shape), align_corners=False)
    warped = F.grid_sample(h0, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    expect = torch.zeros_like(h0)
    expect[:, :, 1:] = h0[:, :, :-1]
    assert torch.equal(warped, expect)
    # stepping the warped state == stepping each cell with its source cell's memory
    x = torch.randn(b, C_IN, h, w)
    kept = _decay_of_previous_state(core, x, warped, torch.tensor([0.1]))
    kept_unwarped = _decay_of_previous_state(core, x, h0, torch.tensor([0.1]))
    decay_here = kept_unwarped / h0  # exp(step * A) per cell and head (the state-independent factor)
    assert torch.allclose(kept[:, :, 1:], decay_here[:, :, 1:] * h0[:, :, :-1], rtol=1e-4, atol=1e-6)
    assert kept[:, :, 0].abs().max().item() < 1e-6  # the entering row starts from the initial state


def test_other_backends_give_clear_errors_on_cpu():
    core = MambaCore(C_IN, ModelConfig(backend="mamba_ssm"))
    x = torch.randn(1, C_IN, 3, 3)
    st = core.init_state(1, 3, 3)
    with pytest.raises(RuntimeError, match="inference-only"):
        core.step(x, st, torch.tensor([0.1]))
    with torch.no_grad(), pytest.raises(RuntimeError, match="setup-gpu|CUDA device"):
        core.step(x, st, torch.tensor([0.1]))


def _cells_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def test_cpu_step_writes_into_given_buffers_with_the_same_numbers():
    """CPU inference with ``out``: the new state is written into the caller's buffer (no state-sized
    allocation), with exactly the numbers of the allocating path, for warp + reset and plain steps."""
    from ssm_perception.bev.grid import BevGrid
    from ssm_perception.config import GridConfig

    core = make_core()
    grid = BevGrid.from_config(GridConfig(length_x=6.0, length_y=4.0, resolution=0.5))  # 12 x 8
    h, w = grid.shape
    x = torch.randn(1, C_IN, h, w)
    prev = {"ssm": _cells_last(random_state(core, 1, h, w)["ssm"])}
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 3, 2] = mask[0, 7, 5] = True
    motion = (0.37, -0.21, 0.15)
    with torch.no_grad():
        for T, m in ((motion, mask), (motion, None), (None, mask), (None, None)):
            y_a, s_a = core.warp_step(x, prev, T, torch.tensor([0.1]), m, grid)
            buf = {"ssm": _cells_last(torch.full_like(prev["ssm"], 7.0))}
            y_b, s_b = core.warp_step(x, prev, T, torch.tensor([0.1]), m, grid, out=buf)
            assert s_b["ssm"].data_ptr() == buf["ssm"].data_ptr()  # written in place
            assert torch.equal(s_a["ssm"], s_b["ssm"]) and torch.equal(y_a, y_b)
        # the reset-in-the-loop path of step() equals apply_reset + the cell-aligned reference
        _, s_r = core.step(x, prev, torch.tensor([0.1]), mask)
        core_ref = make_core()
        h_ref = torch.where(mask.unsqueeze(1), 0.0, prev["ssm"])
        u = core_ref._pre(x)
        z, xs, b, c, step = core_ref._project(u, torch.tensor([0.1]))
        with torch.enable_grad():  # the cell-aligned (training) form runs when autograd is on
            h_ref.requires_grad_(True)
            _, h2 = core_ref._ssm_step_reference(h_ref, z, xs, b, c, step)
        torch.testing.assert_close(s_r["ssm"], h2.detach(), rtol=0, atol=1e-6)


def test_cpu_step_refuses_a_buffer_that_overlaps_or_does_not_fit():
    core = make_core()
    x = torch.randn(1, C_IN, 4, 4)
    prev = {"ssm": _cells_last(random_state(core, 1, 4, 4)["ssm"])}
    with torch.no_grad(), pytest.raises(ValueError, match="overlaps"):
        core.step(x, prev, torch.tensor([0.1]), out=prev)
    with torch.no_grad(), pytest.raises(ValueError, match="channels-last"):
        core.step(x, prev, torch.tensor([0.1]), out={"ssm": torch.zeros_like(prev["ssm"]).contiguous()})
    with torch.no_grad(), pytest.raises(ValueError, match="shape"):
        core.step(x, prev, torch.tensor([0.1]), out={"ssm": _cells_last(torch.zeros(1, prev["ssm"].shape[1], 4, 5))})
