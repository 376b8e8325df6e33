"""EKFs: Jacobians match finite differences, bad time steps are no-ops, covariance stays bounded."""

import math

import numpy as np
import pytest

from ssm_perception.tracking.kalman import (
    CTRVEKF,
    ConstantVelocityEKF,
    MotionNoise,
    make_filter,
)

NOISE = MotionNoise(accel_std=2.0, yaw_accel_std=1.0)
R = np.diag([0.09, 0.09, 0.01, 0.25, 0.25])


def _numeric_jacobian(fn, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for i in range(x.size):
        d = np.zeros_like(x)
        d[i] = eps
        cols.append((fn(x + d) - fn(x - d)) / (2 * eps))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("w", [0.4, -0.7, 1e-6, 0.0])
def test_ctrv_jacobians_match_finite_differences(w):
    kf = CTRVEKF(np.array([3.0, -2.0, 0.8, 7.0, w]), np.eye(5), NOISE)
    dt = 0.3
    np.testing.assert_allclose(kf._F(kf.x, dt), _numeric_jacobian(lambda x: kf._f(x, dt), kf.x), atol=1e-5)
    np.testing.assert_allclose(kf._H(kf.x), _numeric_jacobian(kf._h, kf.x), atol=1e-6)


def test_ctrv_follows_a_circle():
    # v = 5 m/s, w = 0.5 rad/s: radius 10 m around (0, 10); a quarter turn takes pi s.
    kf = CTRVEKF(np.array([0.0, 0.0, 0.0, 5.0, 0.5]), np.eye(5) * 1e-4, NOISE)
    for _ in range(100):
        assert kf.predict(math.pi / 100)
    np.testing.assert_allclose(kf.x[:3], [10.0, 10.0, math.pi / 2], atol=1e-9)


@pytest.mark.parametrize("cls", [ConstantVelocityEKF, CTRVEKF])
@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, -math.inf])
def test_bad_dt_is_a_noop(cls, dt):
    kf = cls.from_measurement(np.array([1.0, 2.0, 0.3, 4.0, 1.0]), R, NOISE)
    x, P = kf.x.copy(), kf.P.copy()
    assert kf.predict(dt) is False
    np.testing.assert_array_equal(kf.x, x)
    np.testing.assert_array_equal(kf.P, P)


@pytest.mark.parametrize("kind", ["cv", "ctrv"])
def test_huge_dt_keeps_covariance_bounded_and_positive(kind):
    kf = make_filter(kind, np.array([1.0, 2.0, 0.3, 4.0, 1.0]), R, NOISE)
    assert kf.predict(1e6)
    assert np.all(np.isfinite(kf.x)) and np.all(np.isfinite(kf.P))
    assert kf.P[0, 0] <= NOISE.max_pos_std**2 * (1 + 1e-9) and kf.P[1, 1] <= NOISE.max_pos_std**2 * (1 + 1e-9)
    np.testing.assert_allclose(kf.P, kf.P.T)
    assert np.linalg.eigvalsh(kf.P).min() > 0
    # the mean moved by at most max_dt worth of motion: the model is not extrapolated for ages
    assert np.hypot(kf.x[0] - 1.0, kf.x[1] - 2.0) <= np.hypot(4.0, 1.0) * NOISE.max_dt + 1e-9


def test_cv_converges_to_true_velocity():
    rng = np.random.default_rng(1)
    kf = ConstantVelocityEKF.from_measurement(np.array([0.0, 0.0, 0.0, math.nan, math.nan]), R, NOISE)
    assert kf.P[2, 2] == NOISE.max_speed**2  # no velocity measured: wide prior
    for k in range(1, 40):
        kf.predict(0.1)
        t = 0.1 * k
        z = np.array([3.0 * t, -1.0 * t, 0.0, math.nan, math.nan]) + rng.normal(0, 0.3, 5) * [1, 1, 0, 0, 0]
        assert kf.update(z, R)
    v, v_cov = kf.velocity()
    np.testing.assert_allclose(v, [3.0, -1.0], atol=0.5)
    assert np.all(np.linalg.eigvalsh(v_cov) > 0)


def test_flipped_heading_does_not_spin_the_box():
    kf = CTRVEKF.from_measurement(np.array([0.0, 0.0, 0.2, 5.0, 1.0]), R, NOISE)
    yaw0 = kf.yaw
    kf.update(np.array([0.0, 0.0, 0.2 + math.pi, math.nan, math.nan]), R)  # same box, heading reported backwards
    assert abs(kf.yaw - yaw0) < 0.05


def test_ctrv_init_trusts_motion_over_box_heading():
    kf = CTRVEKF.from_measurement(np.array([0.0, 0.0, math.pi, 5.0, 0.0]), R, NOISE)  # box says -x, motion +x
    assert abs(kf.yaw) < 1e-9 and kf.x[3] == pytest.approx(5.0)


def test_mahalanobis_hand_computed():
    kf = ConstantVelocityEKF(np.zeros(5), np.diag([1.0, 4.0, 1.0, 1.0, 0.25]), NOISE)
    Rg = np.diag([1.0, 0.0, 0.25, 1.0, 1.0])
    # S = diag(1+1, 4+0, 0.25+0.25) over (x, y, yaw): d2 = 2^2/2 + 4^2/4 + 0.5^2/0.5
    d2 = kf.mahalanobis(np.array([2.0, 4.0, 0.5, 9.0, 9.0]), Rg)
    assert d2 == pytest.approx(2.0 + 4.0 + 0.5)
    assert kf.mahalanobis(np.full(5, math.nan), Rg) == math.inf


def test_update_skips_nan_components_and_rejects_all_nan():
    kf = ConstantVelocityEKF.from_measurement(np.array([0.0, 0.0, 0.0, 1.0, 0.0]), R, NOISE)
    v_before = kf.x[2:4].copy()
    assert kf.update(np.array([0.5, 0.0, math.nan, math.nan, math.nan]), R)
    assert kf.x[0] > 0.0  # position pulled towards the measurement
    assert not kf.update(np.full(5, math.nan), R)
    assert np.all(np.isfinite(kf.x)) and np.allclose(kf.x[2:4], v_before, atol=0.5)


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="motion model"):
        make_filter("bicycle", np.zeros(5), R, NOISE)
