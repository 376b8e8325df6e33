"""The vectorised tracker (one bank of arrays, batched EKF) against the per-track tracker it replaced,
on a recorded 120-object sequence (test/tracker_sequence.py; test/data/tracker_reference.json.gz was
written by the per-track implementation, commit before #21's tracker change), and the batched EKF
steps against BoxEKF's own methods."""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from tracker_sequence import sequence, track_rows

from ssm_perception.config import TrackingConfig
from ssm_perception.tracking.kalman import (
    CTRVEKF,
    ConstantVelocityEKF,
    MotionNoise,
    batch_predict,
    batch_update,
)
from ssm_perception.tracking.tracker import MultiObjectTracker

REFERENCE = Path(__file__).parent / "data" / "tracker_reference.json.gz"
CONFIGS = {"defaults": TrackingConfig(), "two_stage_3hits": TrackingConfig(low_score_threshold=0.1, confirm_hits=3)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_tracks_as_the_per_track_tracker(name):
    with gzip.open(REFERENCE, "rt") as f:
        ref = json.load(f)[name]
    trk = MultiObjectTracker(CONFIGS[name])
    frames = sequence()
    assert len(frames) == len(ref)
    for k, (stamp, dets) in enumerate(frames):
        got = track_rows(trk.update(dets, stamp))
        want = ref[k]
        assert [r[:3] for r in got] == [r[:3] for r in want], f"frame {k}: ids, classes or statuses differ"
        a, b = np.array([r[3:] for r in got], float), np.array([r[3:] for r in want], float)
        assert a.shape == b.shape
        if a.size:
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-4, err_msg=f"frame {k}")
    assert max(len(r) for r in ref) >= 100  # 100+ tracks at once


def _random_states(n, seed):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(-40, 40, n), rng.uniform(-40, 40, n), rng.uniform(-3, 3, n), rng.uniform(0, 15, n),
                  rng.choice([0.0, 1e-6, 0.3, -0.5], n)], 1)
    a = rng.normal(size=(n, 5, 5))
    P = a @ a.transpose(0, 2, 1) * 0.3 + np.eye(5) * 0.1
    P[0, 0, 0] = 1e4  # one track with a position variance over the cap
    return x, P


def test_batched_predict_and_update_equal_boxekf():
    n = 40
    x, P = _random_states(n, 1)
    ctrv = np.arange(n) % 2 == 0
    noise = MotionNoise(accel_std=3.0, yaw_accel_std=1.0)
    cols = lambda v: np.full(n, v)
    xb, Pb = batch_predict(x, P, ctrv, 0.13, cols(noise.accel_std), cols(noise.yaw_accel_std), cols(noise.max_dt),
                           cols(noise.max_pos_std))
    rng = np.random.default_rng(2)
    z = np.stack([x[:, 0] + 0.3, x[:, 1] - 0.2, x[:, 2] + 0.1, rng.normal(size=n), rng.normal(size=n)], 1)
    z[::3, 3:] = math.nan  # velocity not measured
    R = np.broadcast_to(np.diag([0.1, 0.1, 0.05, 0.5, 0.5]), (n, 5, 5))
    xu, Pu = batch_update(xb, Pb, ctrv, z, R)
    for i in range(n):
        kf = (CTRVEKF if ctrv[i] else ConstantVelocityEKF)(x[i], P[i], noise)
        kf.predict(0.13)
        np.testing.assert_allclose(xb[i], kf.x, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(Pb[i], kf.P, rtol=1e-9, atol=1e-9)
        kf.update(z[i], R[i])
        np.testing.assert_allclose(xu[i], kf.x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(Pu[i], kf.P, rtol=1e-9, atol=1e-9)
