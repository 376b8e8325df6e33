"""PointCloud2 <-> numpy: round trips, rclpy messages, and every malformed layout rejected."""

import array
from types import SimpleNamespace

import numpy as np
import pytest

from ssm_perception.io.pointcloud2 import (
    LIDAR_DTYPE,
    RADAR_DTYPE,
    PointCloudDecodeError,
    array_to_cloud_fields,
    cloud_to_array,
    xyz,
)


def _lidar(n=7, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros(n, LIDAR_DTYPE)
    for name in ("x", "y", "z", "intensity", "t"):
        a[name] = rng.normal(size=n)
    a["ring"] = rng.integers(0, 32, n)
    return a


def _msg(arr, height=1, pad=0, bigendian=False, data_kind="bytes"):
    fields, step, data = array_to_cloud_fields(arr)
    width = arr.shape[0] // height
    if bigendian:
        dt = np.dtype({"names": [f[0] for f in fields], "offsets": [f[1] for f in fields],
                       "formats": [arr.dtype[f[0]].newbyteorder(">") for f in fields], "itemsize": step})
        be = np.empty(arr.shape[0], dt)
        for f in fields:
            be[f[0]] = arr[f[0]]
        data = be.tobytes()
    rows = [data[r * width * step:(r + 1) * width * step] + b"\xee" * pad for r in range(height)]
    data = b"".join(rows)
    if data_kind == "array":
        data = array.array("B", data)
    elif data_kind == "list":
        data = list(data)
    elif data_kind == "numpy":
        data = np.frombuffer(data, np.uint8)
    pf = [SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
    return SimpleNamespace(height=height, width=width, fields=pf, is_bigendian=bigendian, point_step=step,
                           row_step=width * step + pad, data=data, is_dense=True)


@pytest.mark.parametrize("data_kind", ["bytes", "array", "list", "numpy"])
def test_round_trip_data_kinds(data_kind):
    a = _lidar()
    out = cloud_to_array(_msg(a, data_kind=data_kind))
    for name in LIDAR_DTYPE.names:
        np.testing.assert_array_equal(out[name], a[name])
    np.testing.assert_array_equal(xyz(out), np.stack([a["x"], a["y"], a["z"]], 1))


def test_zero_copy_for_plain_buffers():
    a = _lidar()
    buf = np.frombuffer(array_to_cloud_fields(a)[2], np.uint8)
    m = _msg(a)
    m.data = buf
    assert np.shares_memory(cloud_to_array(m), buf)


def test_row_padding_and_big_endian():
    a = _lidar(12)
    out = cloud_to_array(_msg(a, height=3, pad=5, bigendian=True))
    assert out.shape == (12,) and out.dtype.isnative
    np.testing.assert_array_equal(out["ring"], a["ring"])
    np.testing.assert_array_equal(out["z"], a["z"])


def test_radar_and_count_fields():
    r = np.zeros(3, RADAR_DTYPE)
    r["radial_velocity"] = [1, -2, 3]
    np.testing.assert_array_equal(cloud_to_array(_msg(r))["radial_velocity"], [1, -2, 3])
    multi = np.zeros(2, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("v", "<f8", (3,))])
    multi["v"] = [[1, 2, 3], [4, 5, 6]]
    fields, step, _ = array_to_cloud_fields(multi)
    assert fields[-1] == ("v", 12, 8, 3) and step == 36
    np.testing.assert_array_equal(cloud_to_array(_msg(multi))["v"], multi["v"])


def test_empty_cloud():
    m = _msg(_lidar(0))
    m.width = 0
    assert cloud_to_array(m).shape == (0,)


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda m: setattr(m.fields[0], "datatype", 9), "datatype 9"),
        (lambda m: setattr(m.fields[0], "datatype", 0), "datatype 0"),
        (lambda m: setattr(m.fields[5], "offset", 21), "exceeds point_step"),
        (lambda m: setattr(m.fields[1], "count", 0), "count 0"),
        (lambda m: setattr(m.fields[1], "name", "x"), "duplicate"),
        (lambda m: setattr(m, "row_step", m.row_step - 1), "row_step"),
        (lambda m: setattr(m, "data", m.data[:-1]), "bytes"),
        (lambda m: setattr(m, "point_step", 0), "point_step"),
    ],
)
def test_malformed_clouds_raise(mutate, reason):
    m = _msg(_lidar())
    mutate(m)
    with pytest.raises(PointCloudDecodeError, match=reason):
        cloud_to_array(m)


def test_rclpy_message():
    # CI must fail, not skip, when the ROS 2 message packages did not install.
    from sensor_msgs.msg import PointCloud2, PointField

    a = _lidar(5)
    fields, step, data = array_to_cloud_fields(a)
    m = PointCloud2(height=1, width=5, point_step=step, row_step=5 * step, is_bigendian=False,
                    fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields])
    m.data = data
    np.testing.assert_array_equal(cloud_to_array(m)["intensity"], a["intensity"])


def test_xyz_requires_fields():
    with pytest.raises(PointCloudDecodeError, match="no field"):
        xyz(np.zeros(2, [("a", "f4")]))
