"""ros_convert: stamps, transforms, images (every encoding), camera info and the output messages."""

import math
from dataclasses import dataclass
from types import SimpleNamespace as NS

import numpy as np
import pytest

from ssm_perception.config import GridConfig
from ssm_perception.geometry import make_transform
from ssm_perception.io import ros_convert as rc

S = 1_000_000_000


def _img(enc, arr, step=None, big=0, h=None, w=None):
    arr = np.ascontiguousarray(arr)
    h = arr.shape[0] if h is None else h
    w = arr.shape[1] if w is None else w
    row = arr.nbytes // arr.shape[0]
    step = row if step is None else step
    data = b"".join(arr[r].tobytes() + bytes(step - row) for r in range(arr.shape[0]))
    return NS(encoding=enc, height=h, width=w, step=step, is_bigendian=big, data=data)


# ------------------------------------------------------------------------------- stamps, TF
def test_stamps_roundtrip_and_checks():
    assert rc.stamp_to_ns(NS(sec=12, nanosec=345)) == 12 * S + 345
    assert rc.ns_to_sec_nanosec(12 * S + 345) == (12, 345)
    st = rc.ns_to_stamp(7 * S + 1)
    assert (st.sec, st.nanosec) == (7, 1)
    for bad in (NS(sec=-1, nanosec=0), NS(sec=1, nanosec=S), NS(sec=1.5, nanosec=0), object()):
        with pytest.raises(rc.StampError):
            rc.stamp_to_ns(bad)


def test_transform_msg_roundtrip():
    T = make_transform((1.0, -2.0, 0.5), (0.1, 0.2, 0.3, 0.9))
    msg = rc.matrix_to_transform_msg(T, "odom", "base_link", 5 * S + 7)
    parent, child, stamp, T2 = rc.transform_msg_to_matrix(msg)
    assert (parent, child, stamp) == ("odom", "base_link", 5 * S + 7)
    np.testing.assert_allclose(T2, T, atol=1e-12)


# ------------------------------------------------------------------------------------ images
RGB = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "enc,raw,expected",
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[..., ::-1], RGB),
        ("rgba8", np.dstack([RGB, np.full((5, 6), 7, np.uint8)]), RGB),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full((5, 6), 7, np.uint8)]), RGB),
        ("8UC3", RGB, RGB),
        ("mono8", RGB[..., 0], RGB[..., 0]),
    ],
)
def test_image_8bit_encodings_with_row_padding(enc, raw, expected):
    out = rc.image_to_array(_img(enc, raw, step=raw.nbytes // raw.shape[0] + 3))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("enc,dtype", [("mono16", np.uint16), ("16UC1", np.uint16), ("32FC1", np.float32),
                                       ("16SC1", np.int16), ("32SC1", np.int32), ("64FC1", np.float64)])
@pytest.mark.parametrize("big", [0, 1])
def test_image_wide_encodings_both_byte_orders(enc, dtype, big):
    vals = (np.arange(12).reshape(3, 4) * 1000 - 3001).astype(dtype) if np.dtype(dtype).kind != "u" else \
        (np.arange(12).reshape(3, 4) * 1000 + 1).astype(dtype)
    stored = vals.astype(np.dtype(dtype).newbyteorder(">" if big else "<"))
    out = rc.image_to_array(_img(enc, stored, big=big))
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, vals)


@pytest.mark.parametrize("big", [0, 1])
def test_image_16bit_colour(big):
    rgb16 = RGB.astype(np.uint16) * 257 + 3
    alpha = np.full((5, 6, 1), 9, np.uint16)
    cases = {"rgb16": rgb16, "bgr16": rgb16[..., ::-1], "rgba16": np.concatenate([rgb16, alpha], 2),
             "bgra16": np.concatenate([rgb16[..., ::-1], alpha], 2)}
    for enc, raw in cases.items():
        raw = raw.astype(np.dtype(np.uint16).newbyteorder(">" if big else "<"))  # stored byte order
        out = rc.image_to_array(_img(enc, raw, big=big, step=raw.nbytes // 5 + 2))
        assert out.dtype == np.uint16 and out.dtype.isnative, enc
        np.testing.assert_array_equal(out, RGB.astype(np.uint16) * 257 + 3, err_msg=enc)


def _bayer(rgb, pattern):
    idx = {"r": 0, "g": 1, "b": 2}
    raw = np.zeros(rgb.shape[:2], rgb.dtype)
    for k, ch in enumerate(pattern):
        i, j = divmod(k, 2)
        raw[i::2, j::2] = rgb[i::2, j::2, idx[ch]]
    return raw


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_demosaic_recovers_flat_colour(pattern):
    flat = np.zeros((8, 10, 3), np.uint8)
    flat[...] = (210, 90, 20)
    out = rc.image_to_array(_img(f"bayer_{pattern}8", _bayer(flat, pattern)))
    assert out.shape == (8, 10, 3)
    np.testing.assert_array_equal(out[2:-2, 2:-2], flat[2:-2, 2:-2])  # a wrong pattern swaps R/B
    flat16 = flat.astype(np.uint16) * 200
    out16 = rc.image_to_array(_img(f"bayer_{pattern}16", _bayer(flat16, pattern).astype(">u2"), big=1))
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16[2:-2, 2:-2], flat16[2:-2, 2:-2])


@pytest.mark.parametrize("enc", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422_white_black_grey(enc):
    y = np.array([[235, 16, 126, 126]], np.uint8)  # white, black, grey, grey (BT.601 studio range)
    u = np.full((1, 2), 128, np.uint8)
    v = np.full((1, 2), 128, np.uint8)
    if enc in ("yuv422", "uyvy"):
        packed = np.stack([u[0, 0], y[0, 0], v[0, 0], y[0, 1], u[0, 1], y[0, 2], v[0, 1], y[0, 3]])
    else:
        packed = np.stack([y[0, 0], u[0, 0], y[0, 1], v[0, 0], y[0, 2], u[0, 1], y[0, 3], v[0, 1]])
    msg = NS(encoding=enc, height=1, width=4, step=8, is_bigendian=0, data=packed.astype(np.uint8).tobytes())
    out = rc.image_to_array(msg)
    assert out.shape == (1, 4, 3)
    assert out[0, 0].min() >= 250 and out[0, 1].max() <= 5
    assert np.ptp(out[0, 2].astype(int)) <= 1  # grey stays grey


def test_image_errors_name_the_problem():
    good = _img("rgb8", RGB)
    cases = {
        "unsupported image encoding": {"encoding": "jpeg"},
        "step 10 is smaller": {"step": 10},
        "expected step\\*height": {"data": good.data[:-1]},
        "empty image": {"width": 0},
        "is_bigendian": {"is_bigendian": 7},
        "height must be": {"height": -1},
    }
    for pattern, change in cases.items():
        msg = NS(**{**vars(good), **change})
        with pytest.raises(rc.ImageDecodeError, match=pattern):
            rc.image_to_array(msg)
    with pytest.raises(rc.ImageDecodeError, match="even"):
        rc.image_to_array(NS(encoding="yuv422", height=1, width=3, step=6, is_bigendian=0, data=bytes(6)))
    assert issubclass(rc.ImageDecodeError, ValueError)


def test_image_rclpy_message_roundtrip():
    msg = rc.array_to_image_msg(RGB, "rgb8", "camera_front_optical", 3 * S)
    out = rc.image_to_array(msg)
    np.testing.assert_array_equal(out, RGB)
    out[0, 0] = 0  # a writable copy, not a view of the message
    assert msg.step == 18 and msg.header.frame_id == "camera_front_optical"


# ------------------------------------------------------------------------------- camera info
def _info(**kw):
    base = {"k": [500.0, 0, 320, 0, 500.0, 192, 0, 0, 1], "d": [0.1, -0.05, 0, 0, 0],
                "p": [0.0] * 12, "width": 640, "height": 384, "distortion_model": "plumb_bob",
                "header": NS(frame_id="camera_front_optical")}
    base.update(kw)
    return NS(**base)


def test_camera_info_model():
    m = rc.camera_info_to_model(_info())
    assert m.K[0, 0] == 500 and m.P.shape == (3, 4) and m.P[0, 2] == 320  # P derived from K
    assert (m.width, m.height, m.frame_id) == (640, 384, "camera_front_optical")
    from sensor_msgs.msg import CameraInfo

    real = CameraInfo(width=640, height=384, k=[400.0, 0, 320, 0, 410.0, 190, 0, 0, 1])
    assert rc.camera_info_to_model(real).K[1, 1] == 410


@pytest.mark.parametrize("change,pattern", [
    ({"k": [0.0] * 9}, "uncalibrated"),
    ({"k": [-5.0, 0, 320, 0, 500, 192, 0, 0, 1]}, "positive"),
    ({"k": [500.0, 0, 320, 0, 0.0, 192, 0, 0, 1]}, "positive"),
    ({"k": [500.0, 0, np.nan, 0, 500, 192, 0, 0, 1]}, "non-finite"),
    ({"k": [500.0, 0, 320, 0, 500, 192, 0, 0, 2]}, "K\\[2,2\\]"),
    ({"k": [500.0, 0, 320]}, "9"),
    ({"d": [np.inf]}, "distortion"),
    ({"width": 0}, "width"),
    ({"p": [np.nan] * 12}, "P has non-finite"),
])
def test_camera_info_errors(change, pattern):
    with pytest.raises(rc.CameraInfoError, match=pattern):
        rc.camera_info_to_model(_info(**change))


# ---------------------------------------------------------------------------- occupancy grid
def test_occupancy_grid_layout_and_values():
    grid = GridConfig(length_x=4.0, length_y=2.0, resolution=0.5)  # nx = 8 along x, ny = 4 along y
    prob = np.zeros((8, 4))
    prob[7, 0] = 0.876  # front-right corner: x = +1.75, y = -0.75
    unknown = np.zeros((8, 4), bool)
    unknown[0, 3] = True  # rear-left corner
    prob[1, 1] = np.nan
    msg = rc.occupancy_grid_msg(prob, unknown, grid, "base_link", 2 * S)
    assert (msg.info.width, msg.info.height) == (8, 4)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (-2.0, -1.0)
    data = np.array(msg.data, dtype=np.int8).reshape(4, 8)  # row = y, col = x
    assert data[0, 7] == 88 and data[3, 0] == -1 and data[1, 1] == -1 and data[2, 2] == 0
    # World position of the value from the message geometry matches our cell centre.
    r, c = np.argwhere(data == 88)[0]
    x = msg.info.origin.position.x + (c + 0.5) * msg.info.resolution
    y = msg.info.origin.position.y + (r + 0.5) * msg.info.resolution
    assert (x, y) == (grid.x_min + 7.5 * 0.5, grid.y_min + 0.5 * 0.5)
    back = rc.occupancy_grid_to_array(msg)
    assert back.shape == (8, 4) and back[7, 0] == 88 and back[0, 3] == -1
    with pytest.raises(ValueError, match="does not match"):
        rc.occupancy_grid_msg(np.zeros((4, 8)), None, grid, "base_link", 0)


# --------------------------------------------------------------------------- tracks, markers
@dataclass
class FakeTrack:  # the tracker's TrackState fields
    id: int = 2**40 + 5
    cls: int = 1
    status: str = "confirmed"
    x: float = 10.0
    y: float = -3.0
    yaw: float = 0.3
    vx: float = 5.0
    vy: float = 1.0
    yaw_rate: float = 0.05
    length: float = 4.5
    width: float = 1.9
    height: float = 1.6
    pose_cov: np.ndarray = None
    twist_cov: np.ndarray = None
    existence: float = 0.3
    existence_probability: float = 0.9
    age_s: float = 3.0
    time_since_update_s: float = 0.1
    score: float = 0.8
    uuid: bytes = bytes(range(1, 17))
    class_probs: dict = None

    def __post_init__(self):
        self.pose_cov = np.diag(np.arange(1.0, 7.0))
        self.twist_cov = np.diag([0.5, 0.2, 1e4, 1e4, 1e4, 0.1])
        self.twist_cov[0, 1] = self.twist_cov[1, 0] = 0.1
        if self.class_probs is None:
            self.class_probs = {self.cls: 0.75, 2: 0.25} if self.cls != 2 else {2: 1.0}


def test_track_array_and_markers():
    from ssm_perception.msg import ObjectClassification, Shape

    tr = FakeTrack()
    msg = rc.track_array_msg([tr, FakeTrack(id=7, cls=4, status=2)], "odom", 4 * S)
    assert msg.header.frame_id == "odom" and msg.header.stamp.sec == 4
    t0, t1 = msg.tracks
    assert bytes(t0.object_id.uuid) == tr.uuid and t0.track_number == tr.id
    assert t0.status == 1 and t1.status == 2
    # class probabilities in Autoware's numbering, most likely first; pedestrian (ours 4) is 7 there
    assert [(c.label, round(c.probability, 3)) for c in t0.classification] == [
        (ObjectClassification.CAR, 0.75), (ObjectClassification.TRUCK, 0.25)]
    assert t1.classification[0].label == ObjectClassification.PEDESTRIAN == 7
    p = t0.pose.pose
    assert p.position.x == 10.0 and p.position.z == pytest.approx(0.8)
    assert 2 * math.atan2(p.orientation.z, p.orientation.w) == pytest.approx(0.3)
    assert t0.pose.covariance[7] == 2.0
    # velocity in the object frame: (5, 1) in odom rotated by -yaw
    c, s_ = math.cos(0.3), math.sin(0.3)
    assert t0.twist.twist.linear.x == pytest.approx(c * 5 + s_ * 1)
    assert t0.twist.twist.linear.y == pytest.approx(-s_ * 5 + c * 1)
    assert t0.twist.twist.angular.z == pytest.approx(0.05)
    cov = np.asarray(t0.twist.covariance).reshape(6, 6)
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() >= -1e-9
    assert np.trace(cov[:2, :2]) == pytest.approx(0.7)  # a rotation keeps the trace
    assert t0.shape.type == Shape.BOUNDING_BOX and t0.shape.dimensions.x == 4.5
    corners = [c for q in t0.shape.footprint.points for c in (q.x, q.y)]
    assert corners == pytest.approx([2.25, 0.95, -2.25, 0.95, -2.25, -0.95, 2.25, -0.95])
    assert t0.existence_probability == pytest.approx(0.9)

    from visualization_msgs.msg import Marker

    ma = rc.marker_array_msg([tr, FakeTrack(id=7, cls=4)], "odom", 4 * S, lifetime_s=0.25)
    assert ma.markers[0].action == Marker.DELETEALL
    types = [(m.ns, m.type) for m in ma.markers[1:]]
    assert types[:3] == [("tracks/boxes", Marker.CUBE), ("tracks/velocity", Marker.ARROW),
                         ("tracks/labels", Marker.TEXT_VIEW_FACING)]
    box, arrow, label = ma.markers[1:4]
    assert 0 <= box.id < 2**31 and box.lifetime.nanosec == 250_000_000
    assert arrow.points[1].x == pytest.approx(15.0) and label.text.startswith(str(tr.id))
    assert ma.markers[4].color.r != box.color.r  # pedestrian vs car colours differ
    assert all(m.header.frame_id == "odom" for m in ma.markers)


def test_diagnostics_builders():
    from diagnostic_msgs.msg import DiagnosticStatus

    st = rc.diagnostic_status("ssm_perception: pipeline", "WARN", "slow", {"latency_ms": 123.456, "resets": 2},
                              hardware_id="hw")
    assert st.level == DiagnosticStatus.WARN and st.hardware_id == "hw"
    assert {kv.key: kv.value for kv in st.values} == {"latency_ms": "123.456", "resets": "2"}
    arr = rc.diagnostic_array([st, rc.diagnostic_status("x", 2, "bad")], 5 * S)
    assert arr.header.stamp.sec == 5 and arr.status[1].level == DiagnosticStatus.ERROR
    with pytest.raises(ValueError):
        rc.diagnostic_status("x", 9, "bad")
