"""Property-based fuzzing of every input decoder (issue 11, item 1).

Each test builds messages (mostly plain Python stand-ins with the messages' attributes, for speed;
a few real rclpy messages at the end), decides with an independent oracle whether the message is
valid, and asserts: valid -> decodes to the right values; invalid -> raises the decoder's
documented error type (a ValueError / LookupError subclass with a message). Anything else, such
as an IndexError, a numpy error or a crash, fails the test.

Budget: >= 10,000 generated cases in total (counted below), deadline=None and derandomize=True so
CI runs are reproducible; too_slow / data_too_large health checks are suppressed because the
strategies build whole message payloads (bytes come from a drawn seed, not byte by byte).
"""

import math
import struct
from types import SimpleNamespace as NS

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssm_perception.geometry import make_transform
from ssm_perception.io import ros_convert as rc
from ssm_perception.io.pointcloud2 import PointCloudDecodeError, cloud_to_array
from ssm_perception.tf_buffer import TfBuffer, TfDataError, TfLookupError

SEC = 1_000_000_000
CASES: dict[str, int] = {}  # test name -> generated cases (checked by test_total_case_count)
LOOKUPS = {"ok": 0, "refused": 0, "checked_static": 0}  # TF coverage, printed at the end
BUDGET = {"cloud": 3000, "image": 3000, "camera_info": 1500, "tf": 1000, "tf_interp": 500, "stamp": 1000}


def fuzz(name: str):
    return settings(
        max_examples=BUDGET[name], deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


def payload(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).bytes(max(n, 0))


# ------------------------------------------------------------------------------------ PointCloud2
_PF = {1: ("b", 1), 2: ("B", 1), 3: ("h", 2), 4: ("H", 2), 5: ("i", 4), 6: ("I", 4), 7: ("f", 4), 8: ("d", 8)}
_NAMES = ["x", "y", "z", "intensity", "t", "ring", "rcs", "radial_velocity", ""]


@st.composite
def clouds(draw):
    nf = draw(st.integers(0, 5))
    fields, offset = [], 0
    for _ in range(nf):  # start from a packed, valid layout ...
        dt = draw(st.integers(1, 8))
        cnt = draw(st.integers(1, 3))
        fields.append(NS(name=draw(st.sampled_from(_NAMES[:-1])), offset=offset, datatype=dt, count=cnt))
        offset += _PF[dt][1] * cnt + draw(st.integers(0, 3))
    point_step = max(offset, 1) + draw(st.integers(0, 4))
    width, height = draw(st.integers(0, 12)), draw(st.integers(0, 4))
    row_step = width * point_step + draw(st.sampled_from([0, 0, 1, 7]))
    size = row_step * height
    # ... then perturb one thing (or nothing) to reach the corners of the input space.
    what = draw(st.sampled_from(["none", "none", "none", "truncate", "extend", "datatype", "offset", "count",
                                 "name", "point_step", "row_step", "negative", "huge"]))
    if what == "truncate":
        size = draw(st.integers(0, max(size - 1, 0)))
    elif what == "extend":
        size += draw(st.integers(1, 64))
    elif what == "datatype" and fields:
        draw(st.sampled_from(fields)).datatype = draw(st.sampled_from([0, 9, 255, -1]))
    elif what == "offset" and fields:
        draw(st.sampled_from(fields)).offset = draw(st.integers(-4, point_step + 8))
    elif what == "count" and fields:
        draw(st.sampled_from(fields)).count = draw(st.integers(-1, 4))
    elif what == "name" and fields:
        draw(st.sampled_from(fields)).name = draw(st.sampled_from(_NAMES))
    elif what == "point_step":
        point_step = draw(st.integers(-2, point_step + 8))
    elif what == "row_step":
        row_step = draw(st.integers(0, row_step + 8))
    elif what == "negative":
        width = -draw(st.integers(1, 3))
    elif what == "huge":
        height = draw(st.sampled_from([2**31, 2**32 - 1]))
    big = draw(st.booleans())
    data = payload(draw(st.integers(0, 2**32 - 1)), size)
    return NS(height=height, width=width, fields=fields, is_bigendian=big, point_step=point_step,
              row_step=row_step, data=data, is_dense=draw(st.booleans()))


def decoded_or_refused(m, valid: bool, decode, error):
    """``decode(m)`` for a message the reference check calls valid; for an invalid one, assert that the
    decoder refuses it with ``error`` and return None."""
    if not valid:
        with pytest.raises(error):
            decode(m)
        return None
    return decode(m)


def cloud_is_valid(m) -> bool:
    """The documented contract of io.pointcloud2.cloud_to_array, restated independently."""
    if m.height < 0 or m.width < 0 or m.point_step <= 0:
        return False
    names = [f.name for f in m.fields]
    if any(not n for n in names) or len(set(names)) != len(names):
        return False
    for f in m.fields:
        if f.datatype not in _PF or f.count < 1 or f.offset < 0 or f.offset + _PF[f.datatype][1] * f.count > m.point_step:
            return False
    n = m.height * m.width
    if n == 0:
        return True
    if m.row_step < m.width * m.point_step:
        return False
    return len(m.data) >= m.row_step * (m.height - 1) + m.width * m.point_step


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b, dtype=a.dtype)
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


@fuzz("cloud")
@given(clouds(), st.integers(0, 2**16))
def test_fuzz_pointcloud2(m, pick):
    count("cloud")
    arr = decoded_or_refused(m, cloud_is_valid(m), cloud_to_array, PointCloudDecodeError)
    if arr is None:
        return
    assert arr.shape == (m.height * m.width,)
    assert list(arr.dtype.names or []) == [f.name for f in m.fields]
    order = ">" if m.is_bigendian else "<"
    n = arr.shape[0]
    for idx in sorted({0, n - 1, pick % max(n, 1)} if n else ()):  # fields of 3 points vs struct.unpack_from
        r, c = divmod(idx, m.width)
        base = r * m.row_step + c * m.point_step
        for f in m.fields:
            ch, _ = _PF[f.datatype]
            ref = struct.unpack_from(f"{order}{f.count}{ch}", m.data, base + f.offset)
            assert _same(np.atleast_1d(arr[f.name][idx]), ref), (f.name, idx)


def test_big_endian_overlapping_fields():
    """PCL's rgb/rgba views of one offset must not be written over each other when byte-swapping."""
    fields = [NS(name="rgba", offset=0, datatype=6, count=1), NS(name="b", offset=0, datatype=2, count=1)]
    m = NS(height=1, width=1, fields=fields, is_bigendian=True, point_step=4, row_step=4,
           data=bytes([1, 2, 3, 4]), is_dense=True)
    arr = cloud_to_array(m)
    assert arr["rgba"][0] == 0x01020304 and arr["b"][0] == 1


# ------------------------------------------------------------------------------------------ Image
_ENC = {  # encoding -> bytes per pixel
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "8UC3": 3, "mono8": 1, "8UC1": 1, "mono16": 2, "16UC1": 2,
    "16SC1": 2, "32SC1": 4, "32FC1": 4, "64FC1": 8, "rgb16": 6, "bgr16": 6, "rgba16": 8, "bgra16": 8,
    "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2,
    "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1,
    "bayer_rggb16": 2, "bayer_bggr16": 2, "bayer_gbrg16": 2, "bayer_grbg16": 2,
}
_SINGLE = {"mono8": "B", "8UC1": "B", "mono16": "H", "16UC1": "H", "16SC1": "h", "32SC1": "i", "32FC1": "f",
           "64FC1": "d"}  # single-channel encodings -> struct format of a pixel
_BAD_ENC = ["jpeg", "RGB8", "", "bayer_rggb32", "8UC4", "nv12", "rgb8 "]


@st.composite
def images(draw):
    enc = draw(st.sampled_from(list(_ENC) + _BAD_ENC[:3]) if draw(st.integers(0, 9)) else st.sampled_from(_BAD_ENC))
    bpp = _ENC.get(enc, 3)
    w, h = draw(st.integers(1, 9)), draw(st.integers(1, 6))
    step = w * bpp + draw(st.sampled_from([0, 0, 0, 1, 5]))
    size = step * h
    big = draw(st.sampled_from([0, 1, False, True]))
    what = draw(st.sampled_from(["none", "none", "none", "step", "truncate", "extend", "zero", "negative",
                                 "bigendian", "odd"]))
    if what == "step":
        step = draw(st.integers(0, max(w * bpp - 1, 0)))
    elif what == "truncate":
        size = draw(st.integers(0, size - 1))
    elif what == "extend":
        size += draw(st.integers(1, 16))
    elif what == "zero":
        w = 0
    elif what == "negative":
        h = -1
    elif what == "bigendian":
        big = draw(st.sampled_from([2, -1, 255]))
    elif what == "odd":
        w, step = 2 * (w // 2) + 1, (2 * (w // 2) + 1) * bpp
        size = step * h
    return NS(encoding=enc, height=h, width=w, step=step, is_bigendian=big,
              data=payload(draw(st.integers(0, 2**32 - 1)), size), header=NS(frame_id="cam"))


def image_is_valid(m) -> bool:
    if m.encoding not in _ENC or m.height <= 0 or m.width <= 0 or m.is_bigendian not in (0, 1):
        return False
    if m.encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") and m.width % 2:
        return False
    if m.encoding.startswith("bayer") and (m.width < 2 or m.height < 2):
        return False
    return m.step >= m.width * _ENC[m.encoding] and len(m.data) == m.step * m.height


def _yuv_ref(y, u, v):  # BT.601 studio range, as OpenCV/cv_bridge decode it
    c, d, e = max(y - 16, 0), u - 128, v - 128
    return np.clip([1.164 * c + 1.596 * e, 1.164 * c - 0.391 * d - 0.813 * e, 1.164 * c + 2.018 * d], 0, 255)


def _check_pixel(m, out, r, c):
    """One pixel of a decoded image against the raw bytes (written from the encoding spec)."""
    enc, d = m.encoding, m.data
    at = r * m.step + c * _ENC[enc]
    px = d[at: at + _ENC[enc]]
    e = ">" if m.is_bigendian else "<"
    if enc in ("rgb16", "bgr16", "rgba16", "bgra16"):
        px = struct.unpack(f"{e}{len(px) // 2}H", px)
    if enc in ("rgb8", "8UC3", "rgb16"):
        assert tuple(out[r, c]) == tuple(px)
    elif enc in ("bgr8", "bgra8", "bgr16", "bgra16"):
        assert tuple(out[r, c]) == (px[2], px[1], px[0])
    elif enc in ("rgba8", "rgba16"):
        assert tuple(out[r, c]) == tuple(px[:3])
    elif enc in _SINGLE:
        ref = struct.unpack(e + _SINGLE[enc], px)[0]
        assert (math.isnan(ref) and math.isnan(out[r, c])) or out[r, c] == ref
    elif enc in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv"):
        pair = d[r * m.step + (c // 2) * 4: r * m.step + (c // 2) * 4 + 4]
        if enc in ("yuv422", "uyvy"):
            u, y0, v, y1 = pair
        else:
            y0, u, y1, v = pair
        ref = _yuv_ref(y0 if c % 2 == 0 else y1, u, v)
        assert np.abs(out[r, c].astype(float) - ref).max() <= 1.0
    else:  # Bayer: a pixel keeps its own measured colour (interior; the border is interpolated)
        pattern = enc[6:10]
        colour = pattern[(r % 2) * 2 + (c % 2)]
        raw = px[0] if enc.endswith("8") else struct.unpack(e + "H", px)[0]
        if 0 < r < m.height - 1 and 0 < c < m.width - 1:
            assert out[r, c, "rgb".index(colour)] == raw


@fuzz("image")
@given(images(), st.integers(0, 2**16))
def test_fuzz_image(m, pick):
    count("image")
    out = decoded_or_refused(m, image_is_valid(m), rc.image_to_array, rc.ImageDecodeError)
    if out is None:
        return
    channels = 3 if m.encoding not in _SINGLE else None
    assert out.shape == ((m.height, m.width, 3) if channels else (m.height, m.width))
    assert out.dtype.isnative
    for k in range(3):
        _check_pixel(m, out, (pick + k) % m.height, (pick // 7 + 3 * k) % m.width)


# ------------------------------------------------------------------------------------ CameraInfo
_ODD_FLOATS = st.sampled_from([0.0, -1.0, -500.0, float("nan"), float("inf"), -float("inf"), 1e-300, 1.0])


@st.composite
def camera_infos(draw):
    K = [draw(st.floats(100, 2000)), 0.0, draw(st.floats(0, 1000)), 0.0, draw(st.floats(100, 2000)),
         draw(st.floats(0, 1000)), 0.0, 0.0, 1.0]
    D = [draw(st.floats(-1, 1)) for _ in range(draw(st.sampled_from([0, 4, 5, 8])))]
    P = draw(st.sampled_from([[0.0] * 12, K[:3] + [0.0] + K[3:6] + [0.0] + K[6:] + [0.0]]))
    w, h = draw(st.integers(1, 4000)), draw(st.integers(1, 3000))
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["K", "K", "D", "P", "size", "len", "allzero"]))
        if what == "K" and K:
            K[draw(st.integers(0, len(K) - 1))] = draw(_ODD_FLOATS | st.floats(allow_nan=True, allow_infinity=True))
        elif what == "D" and D:
            D[draw(st.integers(0, len(D) - 1))] = draw(_ODD_FLOATS)
        elif what == "P":
            P = list(P)
            P[draw(st.integers(0, 11))] = draw(_ODD_FLOATS)
        elif what == "size":
            w = draw(st.integers(-2, 0))
        elif what == "len":
            K = K[: draw(st.integers(0, 8))]
        else:
            K = [0.0] * 9
    return NS(k=K, d=D, p=P, width=w, height=h, distortion_model="plumb_bob", header=NS(frame_id="cam"))


def camera_info_is_valid(m) -> bool:
    if len(m.k) != 9 or len(m.p) != 12 or m.width <= 0 or m.height <= 0:
        return False
    K, P, D = np.array(m.k, float).reshape(3, 3), np.array(m.p, float).reshape(3, 4), np.array(m.d, float)
    if not (np.isfinite(K).all() and np.isfinite(D).all() and np.isfinite(P).all()):
        return False
    if K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1) > 1e-6 or K[1, 0] or K[2, 0] or K[2, 1]:
        return False
    return not P.any() or (P[0, 0] > 0 and P[1, 1] > 0)


@fuzz("camera_info")
@given(camera_infos())
def test_fuzz_camera_info(m):
    count("camera_info")
    cam = decoded_or_refused(m, camera_info_is_valid(m), rc.camera_info_to_model, rc.CameraInfoError)
    if cam is None:
        return
    assert np.array_equal(cam.K.reshape(-1), np.array(m.k)) and cam.P.shape == (3, 4)
    assert np.array_equal(cam.P[:, :3], cam.K) or np.array_equal(cam.P.reshape(-1), np.array(m.p))
    assert (cam.width, cam.height) == (m.width, m.height)


# -------------------------------------------------------------------------------------------- TF
_FRAMES = ["map", "odom", "base_link", "lidar", "camera", "/odom"]
_QUATS = st.sampled_from([
    (0.0, 0.0, 0.0, 0.0), (float("nan"), 0.0, 0.0, 1.0), (1e-9, 0.0, 0.0, 0.0), (0.0, 0.0, 1e300, 1e300),
    (0.0, float("inf"), 0.0, 1.0),
]) | st.tuples(*[st.floats(-2, 2)] * 4).filter(lambda q: np.linalg.norm(q) > 1e-3)  # mostly usable
_TRANS = st.sampled_from([(float("nan"), 0.0, 0.0), (0.0, 0.0, float("inf"))]) | st.tuples(*[st.floats(-50, 50)] * 3)


def _tf_msg(parent, child, sec, nsec, t, q):
    return NS(header=NS(frame_id=parent, stamp=NS(sec=sec, nanosec=nsec)), child_frame_id=child,
              transform=NS(translation=NS(x=t[0], y=t[1], z=t[2]), rotation=NS(x=q[0], y=q[1], z=q[2], w=q[3])))


_OPS = st.lists(st.tuples(
    st.sampled_from(["set", "set", "set", "static", "static", "lookup", "lookup", "lookup", "clear"]),
    st.sampled_from(_FRAMES), st.sampled_from(_FRAMES),
    st.integers(-1, 4), st.sampled_from([0, 1, 500_000_000, SEC - 1, SEC, 2**32 - 1]),
    _TRANS, _QUATS, st.sampled_from([0, SEC // 10, 3 * SEC]),
), min_size=1, max_size=16)
CACHE_NS = 2 * SEC


@fuzz("tf")
@given(_OPS)
def test_fuzz_tf_buffer(ops):
    """A sequence of set/static/lookup/clear calls; a shadow model predicts which sets must fail."""
    count("tf")
    tf = TfBuffer(cache_s=CACHE_NS / SEC)
    parent_of: dict[str, str] = {}  # shadow of the tree
    static: dict[str, np.ndarray] = {}  # child -> its static T_parent_child
    for op, a, b, sec, nsec, t, q, limit in ops:
        pa, ch = a.lstrip("/"), b.lstrip("/")
        if op in ("set", "static"):
            with np.errstate(over="ignore"):
                qn = float(np.linalg.norm(q)) if np.all(np.isfinite(q)) else math.nan
            anc, cycle = pa, False
            while anc in parent_of and ch not in parent_of:
                anc = parent_of[anc]
                cycle |= anc == ch
            bad = (sec < 0 or not 0 <= nsec < SEC or not np.all(np.isfinite(t)) or not (1e-6 < qn < 1e6)
                   or pa == ch or (ch in parent_of and parent_of[ch] != pa) or cycle
                   or (op == "set" and ch in static))
            msg = _tf_msg(a, b, sec, nsec, t, q)
            if bad:
                with pytest.raises(TfDataError):
                    tf.set_from_message(msg, static=op == "static")
            else:
                tf.set_from_message(msg, static=op == "static")
                parent_of[ch] = pa
                T_msg = make_transform(t, np.asarray(q) / np.linalg.norm(q))
                if op == "static":
                    static[ch] = T_msg
        elif op == "clear":
            tf.clear()
            parent_of = {c: p for c, p in parent_of.items() if c in static}
        else:
            stamp = max(sec, 0) * SEC + nsec
            try:
                T = tf.lookup(pa, ch, stamp, extrapolation_limit_ns=limit)
            except TfLookupError as exc:
                assert str(exc)
                LOOKUPS["refused"] += 1
                continue
            LOOKUPS["ok"] += 1
            assert T.shape == (4, 4) and np.isfinite(T).all()
            if ch in static and parent_of[ch] == pa:  # a single static edge: exactly what was stored
                np.testing.assert_allclose(T, static[ch], atol=1e-9)
                LOOKUPS["checked_static"] += 1

            np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
            back = tf.lookup(ch, pa, stamp, extrapolation_limit_ns=limit)
            np.testing.assert_allclose(T @ back, np.eye(4), atol=1e-6)


_UNIT_QUAT = st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1)


@fuzz("tf_interp")
@given(_UNIT_QUAT, _UNIT_QUAT, _UNIT_QUAT, st.tuples(*[st.floats(-100, 100)] * 6), st.integers(1, 10**9),
       st.floats(0, 1))
def test_fuzz_tf_interpolation(q0, q1, qs, tt, span_ns, alpha):
    """odom -> base_link (two samples) then a static base_link -> lidar: the lookup equals lerp +
    scipy's Slerp of the samples, composed with the static mount."""
    from scipy.spatial.transform import Rotation, Slerp

    count("tf_interp")
    tf = TfBuffer()
    t0 = 5 * SEC
    tf.set_translation_quat(tt[:3], q0, "odom", "base_link", t0)
    tf.set_translation_quat(tt[3:], q1, "odom", "base_link", t0 + span_ns)
    tf.set_translation_quat((1.0, 0.2, 1.8), qs, "base_link", "lidar", 0, static=True)
    stamp = t0 + round(alpha * span_ns)
    a = (stamp - t0) / span_ns
    rot = Slerp([0.0, 1.0], Rotation.from_quat([q0, q1]))([a])[0]  # scipy quats are (x, y, z, w) too
    ref = np.eye(4)
    ref[:3, :3] = rot.as_matrix()
    ref[:3, 3] = (1 - a) * np.asarray(tt[:3]) + a * np.asarray(tt[3:])
    mount = make_transform((1.0, 0.2, 1.8), np.asarray(qs) / np.linalg.norm(qs))
    np.testing.assert_allclose(tf.lookup("odom", "lidar", stamp), ref @ mount, atol=1e-6)


# ---------------------------------------------------------------------------------------- stamps
@fuzz("stamp")
@given(st.one_of(st.integers(-(2**31), 2**31 - 1), st.just(0), st.floats(-1, 10), st.booleans()),
       st.one_of(st.integers(0, 2**32 - 1), st.just(0), st.just(SEC)))
def test_fuzz_stamps(sec, nsec):
    count("stamp")
    valid = isinstance(sec, int) and not isinstance(sec, bool) and sec >= 0 and nsec < SEC
    if not valid:
        with pytest.raises(rc.StampError):
            rc.stamp_to_ns(NS(sec=sec, nanosec=nsec))
        return
    ns = rc.stamp_to_ns(NS(sec=sec, nanosec=nsec))
    assert ns == sec * SEC + nsec and rc.ns_to_sec_nanosec(ns) == (sec, nsec)


# ----------------------------------------------------------------------- a few real rclpy messages
def test_real_rclpy_messages():
    """The decoders read real rclpy messages (array.array payloads, numpy K) the same way."""
    from geometry_msgs.msg import TransformStamped
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

    rng = np.random.default_rng(5)
    for enc, bpp in _ENC.items():
        w, h = 4, 3
        msg = Image(height=h, width=w, encoding=enc, step=w * bpp + 2, is_bigendian=int(rng.integers(2)))
        msg.data = rng.bytes(msg.step * h)
        out = rc.image_to_array(msg)
        _check_pixel(NS(encoding=enc, data=bytes(msg.data), step=msg.step, is_bigendian=msg.is_bigendian,
                        height=h, width=w), out, 1, 1)
        msg.step = 1
        with pytest.raises(rc.ImageDecodeError):
            rc.image_to_array(msg)
    cloud = PointCloud2(height=1, width=5, point_step=16, row_step=80, is_bigendian=False, is_dense=True,
                        fields=[PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")])
    cloud.data = rng.bytes(80)
    arr = cloud_to_array(cloud)
    assert _same(arr["y"], np.frombuffer(bytes(cloud.data), "<f4").reshape(5, 4)[:, 1])
    cloud.data = rng.bytes(79)
    with pytest.raises(PointCloudDecodeError):
        cloud_to_array(cloud)
    info = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 500, 240, 0, 0, 1])
    assert rc.camera_info_to_model(info).P[0, 0] == 500
    info.k[4] = -1.0
    with pytest.raises(rc.CameraInfoError):
        rc.camera_info_to_model(info)
    m = TransformStamped()
    m.header.frame_id, m.child_frame_id = "odom", "odom"
    m.transform.rotation.w = 1.0
    with pytest.raises(TfDataError, match="itself"):
        TfBuffer().set_from_message(m)


def test_total_case_count():
    """Runs last (file order): the fuzz tests above generated at least 10,000 cases together."""
    if set(CASES) != set(BUDGET):
        pytest.skip(f"only part of the fuzz tests ran: {sorted(CASES)}")
    total = sum(CASES.values())
    print(f"fuzz cases: {CASES} total {total}; TF lookups: {LOOKUPS}")
    assert total >= 10_000, CASES
