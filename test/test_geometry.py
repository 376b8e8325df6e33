import math

import numpy as np
import pytest

from ssm_perception import geometry as g


def test_quaternion_round_trip_and_normalization():
    q = np.array([0.1, -0.2, 0.3, 0.9])
    r = g.quat_xyzw_to_matrix(q)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(g.matrix_to_quat_xyzw(r), q / np.linalg.norm(q), atol=1e-12)


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [np.nan, 0, 0, 1], [0, 0, 1]])
def test_bad_quaternions_raise(bad):
    with pytest.raises(ValueError):
        g.quat_xyzw_to_matrix(bad)


def test_transform_compose_invert_and_se2():
    t = g.make_transform([1.0, 2.0, 0.5], g.yaw_to_quat_xyzw(0.7))
    np.testing.assert_allclose(t @ g.invert_transform(t), np.eye(4), atol=1e-12)
    x, y, yaw = g.se2_from_se3(t)
    assert (x, y) == (1.0, 2.0) and yaw == pytest.approx(0.7)
    p = g.transform_points(g.se2_matrix(0, 0, math.pi / 2), np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(p, [[0.0, 1.0, 0.0]], atol=1e-12)


def test_interpolation_midpoint():
    a = g.se2_matrix(0, 0, 0.0)
    b = g.se2_matrix(2, 0, 1.0)
    m = g.interpolate_transform(a, b, 0.5)
    assert g.se2_from_se3(m) == pytest.approx((1.0, 0.0, 0.5))
    assert g.wrap_angle(3 * math.pi) == pytest.approx(-math.pi)
