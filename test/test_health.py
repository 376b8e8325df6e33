"""State health monitor: non-finite, norm drift, observation maps, sensor ages, resets."""

import math

import pytest
import torch

from ssm_perception.bev.features import FEATURE_CHANNELS, channel_index
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ResetConfig
from ssm_perception.temporal.base import apply_reset
from ssm_perception.temporal.baselines import ConvGRUCore
from ssm_perception.temporal.health import (
    Level,
    StateHealthMonitor,
    observed_from_features,
)

GRID = BevGrid.square(16, 0.5)
SEEN = {"lidar": True, "radar": True, "camera": True}


def _state(value=1.0):
    return {"h": torch.full((1, 4, 16, 16), value)}


def _observed(rows=slice(None)):
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, rows] = True
    return m


def test_healthy_stream_is_ok():
    mon = StateHealthMonitor(GRID, warmup_frames=3)
    for k in range(10):
        r = mon.update(_state(1.0 + 0.01 * k), stamp=0.1 * k, observed=_observed(), sensors_seen=SEEN, dt=0.1)
        assert r.level == Level.OK, r.messages
    assert r.norm_mean == pytest.approx(2.0 * 1.09, rel=1e-5)  # sqrt(4 channels) * value
    assert r.never_observed_fraction == 0.0 and r.nonfinite == 0


def test_nonfinite_is_error():
    mon = StateHealthMonitor(GRID)
    s = _state()
    s["h"][0, 1, 3, 3] = float("nan")
    s["h"][0, 2, 3, 4] = float("inf")
    r = mon.update(s, 0.0, _observed(), SEEN)
    assert r.level == Level.ERROR and r.nonfinite == 2 and math.isfinite(r.norm_mean)


def test_norm_blow_up_against_baseline():
    mon = StateHealthMonitor(GRID, ResetConfig(state_norm_ratio=10.0), warmup_frames=3)
    for k in range(5):
        mon.update(_state(1.0), 0.1 * k, _observed(), SEEN, dt=0.1)
    warn = mon.update(_state(5.0), 0.5, _observed(), SEEN, dt=0.1)
    assert warn.level == Level.WARN and warn.norm_ratio == pytest.approx(5.0, rel=1e-4)
    err = mon.update(_state(20.0), 0.6, _observed(), SEEN, dt=0.1)
    assert err.level == Level.ERROR and err.norm_ratio == pytest.approx(20.0, rel=1e-4)
    assert err.norm_baseline == pytest.approx(2.0, rel=1e-4)  # unhealthy frames are not learned


def test_never_observed_stale_cells_and_warp():
    mon = StateHealthMonitor(GRID, ResetConfig(unobserved_cell_reset_s=0.25), warmup_frames=0)
    r = mon.update(_state(), 0.0, _observed(slice(0, 4)), SEEN, dt=0.1)
    assert r.never_observed_fraction == pytest.approx(0.75)
    # vehicle moves 2 cells forward: the observed rows 0..3 move to rows -2..1
    r = mon.update(_state(), 0.1, None, SEEN, T_prev_cur=(2 * GRID.resolution, 0.0, 0.0), dt=0.1)
    assert r.never_observed_fraction == pytest.approx(14 / 16)
    assert (mon.observed[0, 0, :2] == 1).all() and (mon.observed[0, 0, 2:] == 0).all()
    for k in range(3):
        r = mon.update(_state(), 0.2 + 0.1 * k, None, SEEN, dt=0.1)
    assert r.stale_cells == 2 * 16  # observed once, then unobserved for 0.4 s > 0.25 s
    assert mon.stale_mask()[0, :2].all()
    mon.reset(mon.stale_mask())
    assert mon.stale_mask().sum() == 0 and mon.observed.sum() == 0


def test_sensor_ages():
    mon = StateHealthMonitor(GRID, ResetConfig(sensor_dropout_s=0.5))
    mon.update(_state(), 0.0, None, SEEN)
    r = mon.update(_state(), 0.4, None, {"lidar": True, "radar": False, "camera": True})
    assert r.sensor_age_s["radar"] == pytest.approx(0.4) and r.level == Level.OK
    r = mon.update(_state(), 1.0, None, {"lidar": True, "radar": False, "camera": True})
    assert r.level == Level.WARN and any("radar" in m for m in r.messages)
    r = mon.update(_state(), 1.6, None, {"lidar": False, "radar": True, "camera": True})
    assert r.level == Level.ERROR  # LiDAR silence is an error
    fresh = StateHealthMonitor(GRID, sensors=("lidar",)).update(_state(), 0.0, None, {})
    assert fresh.sensor_age_s == {"lidar": math.inf} and fresh.level == Level.ERROR


def test_reset_returns_exact_initial_state_for_a_real_core():
    torch.manual_seed(0)
    core = ConvGRUCore(3, 4)
    s = core.init_state(1, 16, 16)
    for _ in range(3):
        _, s = core.step(torch.randn(1, 3, 16, 16), s, torch.tensor([0.1]))
    s["h"][0, 0, 0, 0] = float("nan")  # a corrupted cell
    assert torch.equal(apply_reset(s, torch.ones(1, 16, 16, dtype=torch.bool))["h"], core.init_state(1, 16, 16)["h"])
    mask = ~torch.isfinite(s["h"]).all(1)
    fixed = apply_reset(s, mask)
    assert torch.isfinite(fixed["h"]).all() and torch.equal(fixed["h"][0, :, 0, 0], torch.zeros(4))
    assert torch.equal(fixed["h"][0, :, 1:], s["h"][0, :, 1:])


def test_observed_from_features():
    f = torch.zeros(1, len(FEATURE_CHANNELS), 16, 16)
    f[0, channel_index("lidar_free"), 1, 1] = 1.0
    f[0, channel_index("radar_log_count"), 2, 2] = 0.7
    f[0, channel_index("camera_visible"), 3, 3] = 1.0
    obs = observed_from_features(f)
    assert obs.sum() == 3 and obs[0, 1, 1] and obs[0, 2, 2] and obs[0, 3, 3]
