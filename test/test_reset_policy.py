"""ResetPolicy: each reason fires when it should (and only then), counters, logging, stale cells."""

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_perception.config import GridConfig, ResetConfig
from ssm_perception.geometry import se2_matrix
from ssm_perception.temporal import reset_policy as rp

S = 1_000_000_000
DT = S // 10


def _drive(policy, n, start=S, speed=10.0, **kw):
    """n frames at 10 Hz driving straight along x; returns the decisions."""
    out = []
    for k in range(n):
        t = start + k * DT
        out.append(policy.decide(t, se2_matrix(speed * (t - start) / S, 0, 0), **kw))
    return out


def test_route_start_then_quiet():
    p = rp.ResetPolicy(ResetConfig())
    d = _drive(p, 20)
    assert d[0].full and d[0].reasons == [rp.ROUTE_START]
    assert all(not x.full and x.reasons == [] for x in d[1:])
    assert d[5].dt_s == pytest.approx(0.1) and d[5].T_prev_cur[0, 3] == pytest.approx(1.0)
    assert p.counts == {rp.ROUTE_START: 1}


def test_time_backwards_duplicate_and_gap():
    p = rp.ResetPolicy(ResetConfig(max_time_gap_s=1.0))
    _drive(p, 3)
    pose = se2_matrix(0.2 * 10, 0, 0)
    d = p.decide(S + 2 * DT, pose)
    assert d.full and d.reasons == [rp.TIME_NOT_ADVANCING]
    d = p.decide(S, pose)
    assert d.full and d.reasons == [rp.TIME_BACKWARDS] and "backwards by 0.200 s" in d.details[0]
    d = p.decide(S + int(1.5 * S), pose)
    assert d.full and rp.TIME_GAP in d.reasons and rp.SENSOR_DROPOUT in d.reasons
    assert d.dt_s is None  # a full reset never hands out a dt to integrate with


def test_localization_jump_translation_and_yaw():
    cfg = ResetConfig(pose_jump_m=2.0, max_speed_mps=50.0, pose_jump_yaw_rad=0.5)
    p = rp.ResetPolicy(cfg)
    p.decide(S, se2_matrix(0, 0, 0))
    assert not p.decide(S + DT, se2_matrix(6.9, 0, 0)).full  # 5 m + 2 m allowed in 0.1 s
    d = p.decide(S + 2 * DT, se2_matrix(6.9 + 7.5, 0, 0))
    assert d.full and d.reasons == [rp.LOCALIZATION_JUMP] and "7.50 m" in d.details[0]
    d = p.decide(S + 3 * DT, se2_matrix(14.4, 0, 0.6))
    assert d.full and d.reasons == [rp.LOCALIZATION_JUMP] and "yaw" in d.details[0]
    # Turning across +-pi is not a jump.
    p.decide(S + 4 * DT, se2_matrix(14.4, 0, np.pi - 0.05))
    p.clear()
    p.decide(S, se2_matrix(0, 0, np.pi - 0.05))
    assert not p.decide(S + DT, se2_matrix(0, 0, -np.pi + 0.05)).full


def test_invalid_pose_non_finite_zone_and_request(caplog):
    p = rp.ResetPolicy(ResetConfig())
    _drive(p, 2, zone="urban")
    with caplog.at_level(logging.WARNING, logger=rp.__name__):
        d = p.decide(S + 2 * DT, np.full((4, 4), np.nan))
    assert d.full and d.reasons == [rp.INVALID_POSE]
    assert "invalid_pose" in caplog.text
    d = _drive(p, 2, start=S + 3 * DT, zone="urban")
    assert d[0].reasons == [rp.INVALID_POSE] and "previous frame" in d[0].details[0]  # motion unknown
    assert not d[1].full
    assert p.decide(S + 5 * DT, se2_matrix(0, 0, 0), state_finite=False).reasons == [rp.NON_FINITE_STATE]
    p.decide(S + 6 * DT, se2_matrix(0, 0, 0), zone="urban")
    assert not p.decide(S + 7 * DT, se2_matrix(0, 0, 0), zone=None).full  # no signal: keep zone
    d = p.decide(S + 8 * DT, se2_matrix(0, 0, 0), zone="highway")
    assert d.reasons == [rp.ZONE_CHANGE] and "'urban' to 'highway'" in d.details[0]
    p.request_reset("operator pressed the button")
    d = p.decide(S + 9 * DT, se2_matrix(0, 0, 0))
    assert d.reasons == [rp.REQUESTED] and "operator" in d.details[0]
    assert not p.decide(S + 10 * DT, se2_matrix(0, 0, 0)).full  # a request fires once
    assert p.decide(S + 11 * DT, se2_matrix(0, 0, 0), requested="service").reasons == [rp.REQUESTED]
    assert p.counts[rp.REQUESTED] == 2 and p.counts[rp.ZONE_CHANGE] == 1 and p.counts[rp.INVALID_POSE] == 2


def test_sensor_dropout_without_and_with_lidar():
    p = rp.ResetPolicy(ResetConfig(sensor_dropout_s=0.5, max_time_gap_s=1.0))
    _drive(p, 2)
    # Frames keep coming (e.g. radar-triggered) but the LiDAR is silent.
    assert not p.decide(S + 3 * DT, se2_matrix(0.3, 0, 0), lidar_present=False).full
    d = p.decide(S + 8 * DT, se2_matrix(0.8, 0, 0), lidar_present=False)
    assert d.reasons == [rp.SENSOR_DROPOUT] and "no LiDAR for 0.700 s" in d.details[0]
    d = p.decide(S + 9 * DT, se2_matrix(0.9, 0, 0), lidar_present=True)
    assert d.reasons == [rp.SENSOR_DROPOUT]  # the first LiDAR frame after the silence
    assert not p.decide(S + 10 * DT, se2_matrix(1.0, 0, 0)).full


def test_partial_reset_of_unobserved_cells_moves_with_the_ego():
    grid = GridConfig(length_x=10.0, length_y=10.0, resolution=1.0)  # 10 x 10 cells
    p = rp.ResetPolicy(ResetConfig(unobserved_cell_reset_s=0.45), grid=grid)
    seen = torch.zeros(10, 10, dtype=torch.bool)
    seen[:, :5] = True  # the right half is observed every frame
    masks = []
    for k in range(8):  # driving 1 m (one cell) per frame along +x
        d = p.decide(S + k * DT, se2_matrix(float(k), 0, 0))
        masks.append(d.cell_mask)
        p.observe(seen)
    assert masks[0] is None and masks[4] is None  # ages 0.1 .. 0.4 s
    m = masks[5]
    assert m is not None and m.shape == (10, 10) and m.dtype == torch.bool
    assert not m[:, :5].any()  # observed cells are never stale
    # The left half: cells entering at the front (i = 9) start fresh, older ones are stale.
    assert m[:5, 5:].all() and not m[9, 5:].any()
    assert p.counts[rp.UNOBSERVED_CELLS] >= 1
    # A full reset restarts every age.
    p.request_reset("test")
    assert p.decide(S + 8 * DT, se2_matrix(8.0, 0, 0)).cell_mask is None
    assert float(p.cell_age_s.max()) == 0.0


def test_external_age_grid():
    p = rp.ResetPolicy(ResetConfig(unobserved_cell_reset_s=5.0))
    p.decide(S, np.eye(4))
    age = torch.zeros(4, 4)
    age[1, 2] = 6.0
    d = p.decide(S + DT, np.eye(4), cell_age_s=age)
    assert not d.full and d.reasons == [rp.UNOBSERVED_CELLS]
    assert d.cell_mask.sum() == 1 and d.cell_mask[1, 2]
    with pytest.raises(ValueError, match="grid"):
        p.observe(torch.ones(4, 4, dtype=torch.bool))


_STEPS = st.lists(st.tuples(
    st.sampled_from([100_000_000, 100_000_000, 50_000_000, 0, -100_000_000, -5 * S, 3 * S, 1]),  # dt [ns]
    st.sampled_from(["drive", "drive", "drive", "jump", "spin", "nan", "none"]),
    st.booleans(),  # LiDAR present
    st.sampled_from([None, None, "a", "b"]),  # zone
), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_STEPS)
def test_policy_invariants_on_random_streams(steps):
    """Whatever the stream does, a frame that is not fully reset has a finite, positive, bounded
    dt and a finite, plausible motion; every full reset names at least one reason."""
    cfg = ResetConfig()
    p = rp.ResetPolicy(cfg, grid=GridConfig(length_x=4.0, length_y=4.0, resolution=1.0))
    t, x, yaw = 10 * S, 0.0, 0.0
    for dt_ns, motion, lidar, zone in steps:
        t += dt_ns
        pose = se2_matrix(x, 0.0, yaw)
        if motion == "drive":
            x += 1.0 * dt_ns / S
            pose = se2_matrix(x, 0.0, yaw)
        elif motion == "jump":
            x += 100.0
            pose = se2_matrix(x, 0.0, yaw)
        elif motion == "spin":
            yaw += 1.0
            pose = se2_matrix(x, 0.0, yaw)
        elif motion == "nan":
            pose = np.full((4, 4), np.nan)
        elif motion == "none":
            pose = None
        d = p.decide(t, pose, lidar_present=lidar, zone=zone)
        p.observe(torch.zeros(4, 4, dtype=torch.bool))
        if d.full:
            assert d.reasons and set(d.reasons) <= set(rp.FULL_RESET_REASONS) and d.dt_s is None
            assert len(d.details) == len(d.reasons)
        else:
            assert 0 < d.dt_s <= cfg.max_time_gap_s
            assert d.T_prev_cur is not None and np.isfinite(d.T_prev_cur).all()
            assert np.hypot(*d.T_prev_cur[:2, 3]) <= cfg.max_speed_mps * d.dt_s + cfg.pose_jump_m
        if dt_ns <= 0:  # time not moving forward is always a full reset (never a dt <= 0 step)
            assert d.full
    assert p.counts[rp.ROUTE_START] == 1  # only the very first frame is a route start


def test_frames_skipped_while_busy_are_no_gap_or_dropout():
    """Issue 19: a node slower than its LiDAR skips frames; the skipped span is not a hole in the
    stream, so it resets nothing, and dt is the real interval between the processed frames."""
    cfg = ResetConfig(max_time_gap_s=0.3, sensor_dropout_s=0.3)
    p = rp.ResetPolicy(cfg)
    _drive(p, 2)
    last = S + DT
    processed = last + 8 * DT  # 0.8 s later; the 7 frames between arrived but were skipped
    pose = se2_matrix(10.0 * (processed - S) / S, 0, 0)
    skipped = tuple(last + k * DT for k in range(1, 8))
    d = p.decide(processed, pose, skipped_ns=skipped)
    assert not d.full and d.reasons == [] and d.dt_s == pytest.approx(0.8)
    assert d.T_prev_cur[0, 3] == pytest.approx(8.0)
    # The same interval without the skipped frames is a real hole: gap and dropout.
    q = rp.ResetPolicy(cfg)
    _drive(q, 2)
    d = q.decide(processed, pose)
    assert d.full and {rp.TIME_GAP, rp.SENSOR_DROPOUT} <= set(d.reasons)
    # A hole among the skipped frames still counts: 0.5 s with no frame at all.
    r = rp.ResetPolicy(cfg)
    _drive(r, 2)
    d = r.decide(processed, pose, skipped_ns=(last + DT, last + 2 * DT, last + 7 * DT))
    assert d.full and rp.TIME_GAP in d.reasons and "0.500 s" in d.details[0]
