"""Baseline temporal cores behind the TemporalCore protocol."""

import math

import pytest
import torch

from ssm_perception.bev.features import FEATURE_CHANNELS, channel_index
from ssm_perception.temporal.base import TemporalCore, apply_reset
from ssm_perception.temporal.baselines import (
    AttentionCore,
    ConvGRUCore,
    LogOddsCore,
    SingleFrameCore,
)

H, W = 12, 10


def make(kind):
    torch.manual_seed(0)
    return {
        "logodds": lambda: LogOddsCore(),
        "single": lambda: SingleFrameCore(6, 8),
        "convgru": lambda: ConvGRUCore(6, 8),
        "attention": lambda: AttentionCore(6, 8, history=3),
    }[kind]()


def inputs(core, t=5, b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(t, b, core.in_channels, H, W, generator=g)
    if isinstance(core, LogOddsCore):
        xs = (xs > 0.5).float()  # hit / free style evidence
    dts = 0.05 + 0.1 * torch.rand(t, b, generator=g)
    return xs, dts


KINDS = ["logodds", "single", "convgru", "attention"]


@pytest.mark.parametrize("kind", KINDS)
def test_protocol_shapes_and_zero_init(kind):
    core = make(kind)
    assert isinstance(core, TemporalCore)
    s = core.init_state(2, H, W)
    assert all(v.shape[0] == 2 and v.shape[-2:] == (H, W) and v.dtype == torch.float32 for v in s.values())
    assert all((v == 0).all() for v in s.values())
    xs, dts = inputs(core)
    y, s2 = core.step(xs[0], s, dts[0])
    assert y.shape == (2, core.out_channels, H, W)
    assert set(s2) == set(s) and all(s2[k].shape == s[k].shape for k in s)
    with pytest.raises(ValueError):
        core.step(torch.zeros(2, core.in_channels + 1, H, W), s, dts[0])


@pytest.mark.parametrize("kind", KINDS)
def test_forward_sequence_equals_steps_with_resets(kind):
    core = make(kind)
    xs, dts = inputs(core)
    masks = torch.zeros(xs.shape[0], 2, H, W, dtype=torch.bool)
    masks[2, 0, 3:7, 2:5] = True
    masks[3, 1] = True
    with torch.no_grad():
        ys, final = core.forward_sequence(xs, dts, masks)
        s = core.init_state(2, H, W)
        for t in range(xs.shape[0]):
            y, s = core.step(xs[t], s, dts[t], masks[t])
            assert torch.allclose(ys[t], y, atol=1e-6)
    assert all(torch.allclose(final[k], s[k], atol=1e-6) for k in s)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_all_and_masked_returns_exact_initial_state(kind):
    core = make(kind)
    xs, dts = inputs(core)
    with torch.no_grad():
        _, s = core.forward_sequence(xs, dts)
        init = core.init_state(2, H, W)
        full = apply_reset(s, torch.ones(2, H, W, dtype=torch.bool))
        assert all(torch.equal(full[k], init[k]) for k in init)
        mask = torch.zeros(2, H, W, dtype=torch.bool)
        mask[0, :4] = True
        part = apply_reset(s, mask)
        for k in init:
            assert torch.equal(part[k][0, :, :4], init[k][0, :, :4])
            assert torch.equal(part[k][0, :, 4:], s[k][0, :, 4:]) and torch.equal(part[k][1], s[k][1])


@pytest.mark.parametrize("kind", ["logodds", "attention"])
def test_masked_reset_cells_behave_like_fresh_cells(kind):
    # Per-cell cores: a cell reset inside step() gives exactly the output of a fresh core there.
    core = make(kind)
    xs, dts = inputs(core)
    mask = torch.zeros(2, H, W, dtype=torch.bool)
    mask[:, 5, 5] = True
    with torch.no_grad():
        _, s = core.forward_sequence(xs[:4], dts[:4])
        y_reset, _ = core.step(xs[4], s, dts[4], mask)
        y_fresh, _ = core.step(xs[4], core.init_state(2, H, W), dts[4])
    assert torch.equal(y_reset[:, :, 5, 5], y_fresh[:, :, 5, 5])
    assert not torch.equal(y_reset[:, :, 6, 6], y_fresh[:, :, 6, 6])


def _evidence(hit=False, free=False, radar_vr=None, b=1):
    x = torch.zeros(b, len(FEATURE_CHANNELS), H, W)
    if hit:
        x[:, channel_index("lidar_nonground")] = math.log(3)
    if free:
        x[:, channel_index("lidar_free")] = 1.0
    if radar_vr is not None:
        x[:, channel_index("radar_log_count")] = math.log(2)
        x[:, channel_index("radar_vr")] = radar_vr
    return x


def test_logodds_filter_semantics():
    core = LogOddsCore()
    dt = torch.tensor([0.1])
    s = core.init_state(1, H, W)
    for _ in range(20):
        y, s = core.step(_evidence(hit=True), s, dt)
    assert torch.allclose(y[:, 0], torch.full((1, H, W), core.l_max))  # clamped
    assert (y[:, 1] == 0).all()  # hits on a never-free cell are not dynamic
    # unobserved: exact exponential decay toward unknown, dt-aware
    y, s = core.step(_evidence(), s, torch.tensor([2.0]))
    assert torch.allclose(y[:, 0], torch.full((1, H, W), core.l_max * math.exp(-2.0 / core.tau_static)))
    s = core.init_state(1, H, W)
    for _ in range(20):
        y, s = core.step(_evidence(free=True), s, dt)
    assert torch.allclose(y[:, 0], torch.full((1, H, W), core.l_min))
    # something appears where the map was confidently free -> dynamic evidence, fast decay
    y, s = core.step(_evidence(hit=True), s, dt)
    y, s = core.step(_evidence(hit=True), s, dt)
    y, s = core.step(_evidence(hit=True), s, dt)
    assert (y[:, 0] > 0).all() and (y[:, 1] > 0).all()
    d0 = y[:, 1].clone()
    y, s = core.step(_evidence(hit=True), s, torch.tensor([0.5]))
    assert torch.allclose(y[:, 1], d0 * math.exp(-0.5 / core.tau_dynamic))
    # a radar return moving over ground adds dynamic evidence
    y, _ = core.step(_evidence(hit=True, radar_vr=0.5), core.init_state(1, H, W), dt)
    assert (y[:, 1] > 0).all()
    heads = LogOddsCore.heads(y)
    assert torch.equal(heads["occupancy_logit"], y[:, :1])
    assert torch.allclose(heads["box_yaw"].norm(dim=1), torch.ones(1, H, W))


def test_logodds_huge_dt_and_nan_free():
    core = LogOddsCore()
    s = core.init_state(1, H, W)
    y, s = core.step(_evidence(hit=True), s, torch.tensor([0.1]))
    y, s = core.step(_evidence(), s, torch.tensor([1e9]))
    assert torch.isfinite(y).all() and (y == 0).all()  # forgotten completely, no NaN


@pytest.mark.parametrize("k", [1, 4, 16])
def test_attention_memory_is_linear_in_history(k):
    core = AttentionCore(6, 8, history=k)
    s = core.init_state(1, H, W)
    floats_per_cell = sum(v.shape[1] for v in s.values())
    assert floats_per_cell == k * 8 + 2 * k


def test_attention_attends_to_history():
    core = make("attention")
    xs, dts = inputs(core)
    with torch.no_grad():
        _, s = core.forward_sequence(xs[:3], dts[:3])
        y_hist, s2 = core.step(xs[3], s, dts[3])
        y_none, _ = core.step(xs[3], core.init_state(2, H, W), dts[3])
    assert not torch.allclose(y_hist, y_none)
    assert (s2["valid"] == 1).all()  # 4 frames seen, history 3: all slots full
    assert (s2["age"][:, 0] == 0).all()  # slot 0: the frame just seen
    assert torch.allclose(s2["age"][:, 1], dts[3].view(2, 1, 1).expand(2, H, W))


def test_convgru_gradients_flow_through_time():
    core = make("convgru")
    xs, dts = inputs(core, t=3)
    xs.requires_grad_(True)
    ys, _ = core.forward_sequence(xs, dts)
    ys[-1].sum().backward()
    assert xs.grad[0].abs().sum() > 0  # the first frame influences the last output
