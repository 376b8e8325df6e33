"""The tracking stage's compiled kernels (ssm_perception/tracking/kernels.py) against the numpy code
they replace, and the numpy fallback against the stage's recording (it must stay correct where
numba is missing)."""

import math

import numpy as np
import pytest
import test_tracking_stage_reference as ref

from ssm_perception.tracking import kernels
from ssm_perception.tracking.kalman import batch_predict, batch_update
from ssm_perception.tracking.tracker import MultiObjectTracker


def test_kernels_compile():
    assert kernels.warm() and kernels.available()  # numba is pinned in requirements.lock


@pytest.fixture
def numpy_path(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: False)


def _bank(rng, n):
    ctrv = rng.random(n) < 0.6
    x = np.stack([rng.uniform(-50, 50, n), rng.uniform(-50, 50, n), rng.uniform(-3, 3, n), rng.uniform(-15, 15, n),
                  np.where(rng.random(n) < 0.3, rng.uniform(-5e-5, 5e-5, n), rng.uniform(-1, 1, n))], 1)
    A = rng.normal(size=(n, 5, 5)) * rng.uniform(0.1, 40.0, (n, 1, 1))  # some beyond the position cap
    P = A @ A.transpose(0, 2, 1) + 0.01 * np.eye(5)
    return x, P, ctrv


def test_predict_and_update_kernels_equal_the_numpy_filters(monkeypatch):
    rng = np.random.default_rng(3)
    n = 300
    x, P, ctrv = _bank(rng, n)
    accel, yaw_accel = rng.uniform(1, 3, n), rng.uniform(0.5, 2, n)
    max_dt, max_pos = rng.choice([0.05, 2.0], n), rng.choice([5.0, 30.0], n)
    for dt in (0.1, 0.6, 3.0):
        got = kernels.predict(x, P, ctrv, dt, accel, yaw_accel, max_dt, max_pos)
        with monkeypatch.context() as m:
            m.setattr(kernels, "available", lambda: False)
            want = batch_predict(x, P, ctrv, dt, accel, yaw_accel, max_dt, max_pos)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        assert np.isclose(got[1][:, 0, 0], max_pos**2, rtol=1e-12).any()  # the cap was exercised
    z = x + rng.normal(size=(n, 5))
    z[:, 2] += rng.choice([0.0, math.pi], n)  # flipped boxes: the folded yaw innovation
    z[rng.random(n) < 0.4, 3:5] = np.nan  # no velocity
    z[rng.random(n) < 0.05, 2] = np.nan
    z[:3] = np.nan  # nothing usable: unchanged
    r = rng.uniform(0.05, 1.0, (n, 5))
    gx, gP = kernels.update(x, P, ctrv, z, r)
    R = np.zeros((n, 5, 5))
    R[:, range(5), range(5)] = r
    wx, wP = batch_update(x, P, ctrv, z, R)
    np.testing.assert_allclose(gx, wx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gP, wP, rtol=1e-10, atol=1e-10)
    assert np.array_equal(gx[:3], x[:3]) and np.array_equal(gP[:3], P[:3])


def test_gate_kernel_gives_the_numpy_cost_matrix_exactly(monkeypatch):
    rng = np.random.default_rng(5)
    tr = MultiObjectTracker()
    x, P, ctrv = _bank(rng, 150)
    b = tr._bank
    b.x, b.P, b.ctrv = x, P * 0.01, ctrv
    b.votes = np.eye(5)[rng.integers(0, 5, 150)]
    zd = {"z": np.concatenate([x[:100] + rng.normal(scale=0.5, size=(100, 5)), rng.uniform(-50, 50, (60, 5))]),
          "cls": rng.integers(0, 5, 160)}
    got = tr.cost_matrix(zd)
    sub = tr.cost_matrix(zd, np.arange(0, 150, 3))
    monkeypatch.setattr(kernels, "available", lambda: False)
    want = tr.cost_matrix(zd)
    assert np.array_equal(got, want) and np.isfinite(want).sum() > 50
    assert np.array_equal(sub, tr.cost_matrix(zd, np.arange(0, 150, 3)))


def test_footprint_count_numpy_path(numpy_path):
    ref.test_footprints_returns_counts_the_cells_footprint_returns_counts()


@pytest.mark.parametrize("name", sorted(ref.stage_configs()))
def test_numpy_fallback_reproduces_the_recording(name, numpy_path):
    ref.test_tracking_stage_reproduces_the_recording(name)


def test_track_outputs_kernel_equals_the_numpy_states(monkeypatch):
    rng = np.random.default_rng(7)
    tr = MultiObjectTracker()
    x, P, ctrv = _bank(rng, 40)
    tr._birth({"z": x, "cls": np.where(ctrv, 1, 0), "score": np.full(40, 0.9), "size": np.ones((40, 3))}, 0.0)
    tr._bank.x, tr._bank.P = x, P
    rows = np.arange(0, 40, 2)
    got = tr._states(rows, 0.5)
    monkeypatch.setattr(kernels, "available", lambda: False)
    want = tr._states(rows, 0.5)
    assert len(got) == len(want) == 20
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.pose_cov, w.pose_cov, rtol=1e-12, atol=0)
        np.testing.assert_allclose(g.twist_cov, w.twist_cov, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose([g.vx, g.vy, g.yaw, g.yaw_rate], [w.vx, w.vy, w.yaw, w.yaw_rate], rtol=1e-12)


def test_selection_kernel_keeps_what_the_numpy_selection_keeps(monkeypatch):
    from ssm_perception.config import TrackingConfig
    from ssm_perception.tracking.detections import select_two_stage_masks

    rng = np.random.default_rng(11)
    cfg = TrackingConfig(low_score_threshold=0.1)  # the second stage on
    for n in (1, 5, 60, 300):
        a = np.stack([rng.uniform(-20, 20, n), rng.uniform(-20, 20, n), rng.uniform(-3, 3, n),
                      rng.choice([0.0, 0.5, 4.5], n), rng.uniform(0.3, 2, n), rng.uniform(0.3, 2, n),
                      rng.choice([0.05, 0.2, 0.3, 0.5, 0.9], n), rng.choice([np.nan, 0.0, 0.5, 1.0], n)], 1)
        a[rng.random(n) < 0.05, 0] = np.nan
        a[n // 2:, :2] = np.round(a[n // 2:, :2])  # clusters and exact ties of position
        arr = {"a": a, "cls": rng.integers(-1, 6, n)}
        got = select_two_stage_masks(arr, cfg)
        with monkeypatch.context() as m:
            m.setattr(kernels, "available", lambda: False)
            want = select_two_stage_masks(arr, cfg)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w)
        if n == 300:
            assert want[0].any() and want[1].any() and not want[0].all()


def test_the_tracker_constructor_compiles_every_kernel_the_stage_runs():
    """No compilation on a frame: the stage calls the kernels only with the types warm() compiled."""
    from tracker_sequence import STAGE_GRID, stage_inputs

    from ssm_perception.config import GridConfig, TrackingConfig, TrackSupportConfig
    from ssm_perception.tracking.stage import tracking_stage
    from ssm_perception.tracking.support import TrackSupportRule

    tracker = MultiObjectTracker(TrackingConfig(low_score_threshold=0.1))
    rule = TrackSupportRule(TrackSupportConfig(), GridConfig(**STAGE_GRID))
    before = {k: list(f.signatures) for k, f in kernels._kernels().items()}
    n = 0
    for stamp, dets, T, counts in stage_inputs(30, 12):
        n += len(tracking_stage(tracker, rule, dets, T, stamp, counts)[1])
    assert n > 100
    assert {k: list(f.signatures) for k, f in kernels._kernels().items()} == before


def _shape_scene(rng, g):
    """Band counts with walls, blobs and noise (connected regions of many sizes) on grid g."""
    from ssm_perception.tracking.support import connected_structure

    band = (rng.random((g.nx, g.ny)) < 0.08).astype(np.int32)
    for _ in range(6):  # walls along rows and columns
        i, j, n = rng.integers(0, g.nx), rng.integers(0, g.ny), rng.integers(5, 40)
        if rng.random() < 0.5:
            band[i, j:j + n] = 3
        else:
            band[i:i + n, j] = 3
    for _ in range(15):  # car-sized blobs
        i, j = rng.integers(0, g.nx - 8), rng.integers(0, g.ny - 4)
        band[i:i + rng.integers(2, 9), j:j + rng.integers(1, 5)] = 2
    return connected_structure(band)


def test_shape_kernel_gives_structure_beyond_for_every_box(monkeypatch):
    """kernels.shape_beyond (all boxes in one pass) against support.structure_beyond (one box): the same
    numbers (None as -1), on random and grid-aligned boxes inside, across and outside the grid; and
    the rule's on_structures decides the same with the kernel and without it."""
    from ssm_perception.config import GridConfig, TrackSupportConfig
    from ssm_perception.tracking.support import (
        TrackSupportRule,
        _centres,
        structure_beyond,
    )

    rng = np.random.default_rng(7)
    for g in (GridConfig(length_x=20.0, length_y=20.0, resolution=0.5), GridConfig(length_x=60.0, length_y=40.0)):
        labels, sizes = _shape_scene(rng, g)
        n = 300
        x = np.concatenate([rng.uniform(-40, 40, n), np.round(rng.uniform(-10, 10, n) * 4) / 4])
        y = np.concatenate([rng.uniform(-30, 30, n), np.round(rng.uniform(-10, 10, n) * 4) / 4])
        yaw = np.concatenate([rng.uniform(-4, 4, n), rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2], n)])
        length = np.concatenate([rng.choice([0.05, 0.6, 1.8, 4.5, 10.0], n), rng.choice([4.5, 1.5, 0.5], n)])
        width = np.concatenate([rng.choice([0.05, 0.6, 1.9, 2.5], n), rng.choice([1.9, 0.5, 1.0], n)])
        cos, sin = np.array([math.cos(a) for a in yaw]), np.array([math.sin(a) for a in yaw])
        for reach in (0.5, 2.0):
            got = kernels.shape_beyond(labels, sizes, _centres(g.x_min, g.resolution, g.nx),
                                       _centres(g.y_min, g.resolution, g.ny), x, y, cos, sin, length, width, reach,
                                       g.x_min, g.y_min, g.resolution)
            want = [structure_beyond(labels, sizes, g, *b, reach) for b in zip(x.tolist(), y.tolist(), yaw.tolist(),
                                                                               length.tolist(), width.tolist())]
            want = np.array([-1 if w is None else w for w in want])
            assert np.array_equal(got, want)
            assert (want == -1).any() and (want == 0).any() and (want > 0).any() and (want > 20).any()
            rule = TrackSupportRule(TrackSupportConfig(shape_reach_m=reach, shape_max_beyond_m2=2.0), g)
            args = (labels, sizes, x, y, yaw, cos, sin, length, width)
            fast = rule.on_structures(*args)
            with monkeypatch.context() as m:
                m.setattr(kernels, "available", lambda: False)
                slow = rule.on_structures(*args)
            assert np.array_equal(fast, slow) and fast.any() and not fast.all()
