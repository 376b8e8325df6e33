"""ROS messages <-> core types: stamps, transforms, clouds, images, camera info, and our outputs.

Decoders take rclpy messages, rosbags messages or any object with the same attributes, validate
everything a corrupt packet could get wrong, and raise a ``ValueError`` subclass that names the
problem (``StampError``, ``ImageDecodeError``, ``CameraInfoError``; clouds raise
``PointCloudDecodeError`` from :mod:`ssm_perception.io.pointcloud2`). Builders return rclpy
messages and import the message packages inside the function, so this module imports (and its
pure parts run) without a ROS environment.
"""

from __future__ import annotations

import array
import math
from dataclasses import dataclass

import numpy as np

from ssm_perception.geometry import (
    make_transform,
    matrix_to_quat_xyzw,
    yaw_to_quat_xyzw,
)

NS = 1_000_000_000
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------- stamps
class StampError(ValueError):
    """A header stamp that is malformed, unset, or too far from the reference clock."""


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> integer nanoseconds since the epoch."""
    try:
        sec, nsec = stamp.sec, stamp.nanosec
    except AttributeError as exc:
        raise StampError(f"not a stamp (needs sec and nanosec): {stamp!r}") from exc
    for name, v in (("sec", sec), ("nanosec", nsec)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise StampError(f"stamp.{name} must be an integer, got {v!r}")
    if sec < 0:
        raise StampError(f"stamp is before the epoch (sec={int(sec)})")
    if not 0 <= nsec < NS:
        raise StampError(f"stamp.nanosec={int(nsec)} is outside [0, 1e9)")
    return int(sec) * NS + int(nsec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    ns = int(ns)
    if ns < 0 or ns // NS > _INT32_MAX:
        raise StampError(f"{ns} ns does not fit builtin_interfaces/Time")
    return ns // NS, ns % NS


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces.msg.Time."""
    from builtin_interfaces.msg import Time

    sec, nsec = ns_to_sec_nanosec(ns)
    return Time(sec=sec, nanosec=nsec)


# ------------------------------------------------------------------------------------ transforms
def transform_msg_to_matrix(msg) -> tuple[str, str, int, np.ndarray]:
    """TransformStamped -> (parent, child, stamp_ns, T_parent_child 4x4). Raises ``ValueError``s."""
    stamp_ns = stamp_to_ns(msg.header.stamp)
    tr, rot = msg.transform.translation, msg.transform.rotation
    t = np.array([tr.x, tr.y, tr.z], dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{msg.header.frame_id} -> {msg.child_frame_id}: non-finite translation {t.tolist()}")
    return msg.header.frame_id, msg.child_frame_id, stamp_ns, make_transform(t, (rot.x, rot.y, rot.z, rot.w))


def matrix_to_transform_msg(T: np.ndarray, parent: str, child: str, stamp_ns: int):
    """4x4 T_parent_child -> geometry_msgs.msg.TransformStamped."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (
        float(v) for v in T[:3, 3]
    )
    q = matrix_to_quat_xyzw(T[:3, :3])
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg


# ---------------------------------------------------------------------------------- point clouds
def pointcloud_to_array(msg) -> np.ndarray:
    """PointCloud2 -> numpy structured array (one field per PointField); see io.pointcloud2."""
    from ssm_perception.io.pointcloud2 import cloud_to_array

    return cloud_to_array(msg)


# ---------------------------------------------------------------------------------------- images
class ImageDecodeError(ValueError):
    """An Image message that cannot be decoded: unsupported encoding, bad step or size."""


# encoding -> (bytes per pixel, numpy dtype of one channel, channels stored)
_IMAGE_LAYOUT = {
    "rgb8": (3, np.uint8, 3), "bgr8": (3, np.uint8, 3), "rgba8": (4, np.uint8, 4),
    "bgra8": (4, np.uint8, 4), "8UC3": (3, np.uint8, 3), "mono8": (1, np.uint8, 1),
    "8UC1": (1, np.uint8, 1), "mono16": (2, np.uint16, 1), "16UC1": (2, np.uint16, 1),
    "16SC1": (2, np.int16, 1), "32SC1": (4, np.int32, 1), "32FC1": (4, np.float32, 1),
    "64FC1": (8, np.float64, 1),
    "rgb16": (6, np.uint16, 3), "bgr16": (6, np.uint16, 3), "rgba16": (8, np.uint16, 4),
    "bgra16": (8, np.uint16, 4),
    "yuv422": (2, np.uint8, 2), "uyvy": (2, np.uint8, 2), "yuv422_yuy2": (2, np.uint8, 2),
    "yuyv": (2, np.uint8, 2),
    "bayer_rggb8": (1, np.uint8, 1), "bayer_bggr8": (1, np.uint8, 1),
    "bayer_gbrg8": (1, np.uint8, 1), "bayer_grbg8": (1, np.uint8, 1),
    "bayer_rggb16": (2, np.uint16, 1), "bayer_bggr16": (2, np.uint16, 1),
    "bayer_gbrg16": (2, np.uint16, 1), "bayer_grbg16": (2, np.uint16, 1),
}
SUPPORTED_IMAGE_ENCODINGS = tuple(_IMAGE_LAYOUT)
_YUV422 = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")

# OpenCV names a Bayer pattern after its second row's first two pixels, ROS after the first row:
# ROS rggb == OpenCV BG (the same table cv_bridge uses). Checked by test_ros_convert.
# Names of OpenCV constants: cv2 is imported only for these encodings (the GPU image lacks it).
_CV_CONVERSION = {
    "yuv422": "COLOR_YUV2RGB_UYVY", "uyvy": "COLOR_YUV2RGB_UYVY",
    "yuv422_yuy2": "COLOR_YUV2RGB_YUY2", "yuyv": "COLOR_YUV2RGB_YUY2",
    "rggb": "COLOR_BayerBG2RGB", "bggr": "COLOR_BayerRG2RGB",
    "gbrg": "COLOR_BayerGR2RGB", "grbg": "COLOR_BayerGB2RGB",
}
# Channel reordering to RGB for the packed colour encodings (a numpy view, no OpenCV needed).
_TO_RGB = {"bgr8": slice(None, None, -1), "bgr16": slice(None, None, -1), "rgba8": slice(0, 3),
           "rgba16": slice(0, 3), "bgra8": slice(2, None, -1), "bgra16": slice(2, None, -1)}
_MAX_IMAGE_SIDE = 1 << 16


def _buffer_bytes(data, what: str) -> np.ndarray:
    """A message's uint8[] payload (bytes, array.array, numpy or list) as a flat uint8 array."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"{what} data must be uint8, got dtype {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, array.array):
        if data.itemsize != 1:
            raise ValueError(f"{what} data must be a byte array, got typecode {data.typecode!r}")
        return np.frombuffer(data, dtype=np.uint8)
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} data is not a byte sequence: {type(data).__name__}") from exc
    if arr.ndim != 1 or (arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255)):
        raise ValueError(f"{what} data is not a sequence of bytes")
    return arr.astype(np.uint8)


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image -> numpy array.

    Colour encodings give RGB [H, W, 3]: uint8 for rgb8, bgr8, rgba8, bgra8, yuv422/uyvy,
    yuv422_yuy2/yuyv and bayer_*8; uint16 for rgb16, bgr16, rgba16, bgra16 and bayer_*16 (alpha
    dropped, Bayer demosaiced bilinearly by OpenCV, YUV as BT.601 like cv_bridge). 8UC3 has no
    channel meaning and is returned as stored, [H, W, 3] uint8. Single channel: mono8/8UC1 uint8,
    mono16/16UC1 uint16, 16SC1 int16, 32SC1 int32, 32FC1 float32, 64FC1 float64, all [H, W].
    Output is in native byte order and never shares memory with the message.
    """
    enc = msg.encoding
    if enc not in _IMAGE_LAYOUT:
        raise ImageDecodeError(f"unsupported image encoding {enc!r}; supported: {', '.join(SUPPORTED_IMAGE_ENCODINGS)}")
    bpp, dtype, channels = _IMAGE_LAYOUT[enc]
    h, w, step = msg.height, msg.width, msg.step
    for name, v in (("height", h), ("width", w), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ImageDecodeError(f"image {name} must be a non-negative integer, got {v!r}")
    if h == 0 or w == 0:
        raise ImageDecodeError(f"empty image ({w}x{h})")
    if h > _MAX_IMAGE_SIDE or w > _MAX_IMAGE_SIDE:
        raise ImageDecodeError(f"image size {w}x{h} exceeds {_MAX_IMAGE_SIDE} pixels per side")
    if enc in _YUV422 and w % 2:
        raise ImageDecodeError(f"{enc} packs pixel pairs: width must be even, got {w}")
    if enc.startswith("bayer_") and (w < 2 or h < 2):
        raise ImageDecodeError(f"{enc} needs at least 2x2 pixels, got {w}x{h}")
    row_bytes = w * bpp
    if step < row_bytes:
        raise ImageDecodeError(f"{enc} step {step} is smaller than width*{bpp} = {row_bytes} bytes")
    big = msg.is_bigendian
    if isinstance(big, (bool, np.bool_)) or big in (0, 1):
        big = bool(big)
    else:
        raise ImageDecodeError(f"is_bigendian must be 0 or 1, got {big!r}")
    try:
        raw = _buffer_bytes(msg.data, "image")
    except ValueError as exc:
        raise ImageDecodeError(str(exc)) from exc
    if raw.size != step * h:
        raise ImageDecodeError(f"image data has {raw.size} bytes, expected step*height = {step}*{h} = {step * h}")
    rows = np.ascontiguousarray(raw.reshape(h, step)[:, :row_bytes])  # drop row padding: [H, W*bpp]
    if np.dtype(dtype).itemsize > 1:  # stored byte order -> native
        rows = rows.view(np.dtype(dtype).newbyteorder(">" if big else "<")).astype(dtype)
    img = rows.reshape(h, w, channels) if channels > 1 else rows.reshape(h, w)
    if enc in _TO_RGB:
        img = img[..., _TO_RGB[enc]]
    elif enc in _YUV422 or enc.startswith("bayer_"):
        import cv2

        img = cv2.cvtColor(img, getattr(cv2, _CV_CONVERSION[enc if enc in _YUV422 else enc[6:10]]))
    out = np.ascontiguousarray(img)
    return out.copy() if np.may_share_memory(out, raw) else out  # never a view of the message buffer


def array_to_image_msg(img: np.ndarray, encoding: str, frame_id: str, stamp_ns: int):
    """numpy image -> sensor_msgs.msg.Image with a tightly packed step (for tests and the sim)."""
    from sensor_msgs.msg import Image

    img = np.ascontiguousarray(img)
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(img.dtype.byteorder == ">")
    msg.step = int(img.nbytes // max(msg.height, 1))
    msg.data = img.tobytes()
    return msg


# ----------------------------------------------------------------------------------- camera info
class CameraInfoError(ValueError):
    """A CameraInfo that cannot define a pinhole camera (uncalibrated, degenerate, non-finite)."""


@dataclass(frozen=True)
class CameraModel:
    K: np.ndarray  # [3, 3] intrinsics
    D: np.ndarray  # [n] distortion coefficients
    P: np.ndarray  # [3, 4] projection (rectified)
    width: int
    height: int
    distortion_model: str
    frame_id: str


def _field(msg, name: str):
    # rclpy/rosbags (ROS 2) spell the matrices in lower case; ROS 1 style look-alikes in upper case.
    return getattr(msg, name) if hasattr(msg, name) else getattr(msg, name.upper())


def camera_info_to_model(msg) -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel; raises CameraInfoError naming the defect."""
    try:
        K = np.asarray(_field(msg, "k"), dtype=np.float64)
        D = np.asarray(_field(msg, "d"), dtype=np.float64).reshape(-1)
        P = np.asarray(_field(msg, "p"), dtype=np.float64)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CameraInfoError(f"camera info matrices unreadable: {exc}") from exc
    if K.size != 9 or P.size != 12:
        raise CameraInfoError(f"K must have 9 and P 12 entries, got {K.size} and {P.size}")
    K, P = K.reshape(3, 3), P.reshape(3, 4)
    w, h = msg.width, msg.height
    for name, v in (("width", w), ("height", h)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise CameraInfoError(f"camera info {name} must be a positive integer, got {v!r}")
    if not np.all(np.isfinite(K)):
        raise CameraInfoError(f"K has non-finite entries: {K.reshape(-1).tolist()}")
    if not np.any(K):
        raise CameraInfoError("K is all zeros: the camera is uncalibrated")
    fx, fy = K[0, 0], K[1, 1]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    if abs(K[2, 2] - 1.0) > 1e-6 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0:
        raise CameraInfoError(f"K must be upper triangular with K[2,2] = 1, got {K.reshape(-1).tolist()}")
    if not np.all(np.isfinite(D)):
        raise CameraInfoError(f"distortion D has non-finite entries: {D.tolist()}")
    if not np.all(np.isfinite(P)):
        raise CameraInfoError(f"P has non-finite entries: {P.reshape(-1).tolist()}")
    if not np.any(P):
        P = np.hstack([K, np.zeros((3, 1))])  # no rectification info: P = [K | 0]
    elif P[0, 0] <= 0 or P[1, 1] <= 0:
        raise CameraInfoError(f"P focal lengths must be positive, got {P[0, 0]}, {P[1, 1]}")
    return CameraModel(K=K, D=D, P=P, width=int(w), height=int(h),
                       distortion_model=str(getattr(msg, "distortion_model", "")),
                       frame_id=str(msg.header.frame_id))


# -------------------------------------------------------------------------------- occupancy grid
def occupancy_values(prob: np.ndarray, unknown: np.ndarray | None = None) -> np.ndarray:
    """Our [H, W] probability grid (H along x) -> ROS OccupancyGrid values [W, H] int8 (row = y).

    -1 where unknown (or probability not finite), else round(100 * p) clipped to 0..100.
    """
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probability grid must be [H, W], got shape {p.shape}")
    vals = np.rint(np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0) * 100.0).astype(np.int8)
    bad = ~np.isfinite(p)
    if unknown is not None:
        unknown = np.asarray(unknown, dtype=bool)
        if unknown.shape != p.shape:
            raise ValueError(f"unknown mask shape {unknown.shape} != grid shape {p.shape}")
        bad |= unknown
    vals[bad] = -1
    # ROS: data[row * width + col], col along x, row along y -> transpose our [x, y] layout.
    return np.ascontiguousarray(vals.T)


def occupancy_grid_msg(prob: np.ndarray, unknown: np.ndarray | None, grid, frame_id: str, stamp_ns: int):
    """nav_msgs.msg.OccupancyGrid of an ego-centred probability grid (``grid``: config.GridConfig)."""
    return int8_grid_msg(occupancy_values(prob, unknown).T, grid, frame_id, stamp_ns)


def int8_grid_msg(values: np.ndarray, grid, frame_id: str, stamp_ns: int):
    """nav_msgs.msg.OccupancyGrid from int8 values [H, W] in our layout (H along x), e.g. the
    published grids of ``evidence.published_grids``."""
    from nav_msgs.msg import OccupancyGrid

    vals = np.ascontiguousarray(np.asarray(values, dtype=np.int8).T)  # [W, H] = [rows along y, cols along x]
    if vals.shape != (grid.ny, grid.nx):
        raise ValueError(f"grid shape {vals.shape[::-1]} does not match config ({grid.nx}, {grid.ny})")
    msg = OccupancyGrid()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.info.map_load_time = msg.header.stamp
    msg.info.resolution = float(grid.resolution)
    msg.info.width, msg.info.height = int(grid.nx), int(grid.ny)
    msg.info.origin.position.x, msg.info.origin.position.y = float(grid.x_min), float(grid.y_min)
    msg.info.origin.orientation.w = 1.0
    data = array.array("b")
    data.frombytes(vals.tobytes())
    msg.data = data
    return msg


def frame_messages(out, config) -> tuple:
    """(occupancy OccupancyGrid, observation OccupancyGrid, TrackArray, MarkerArray) of one
    `pipeline.FrameOutputs`: what the node publishes and what the bench times (the same functions,
    so both encode the same way): ``grid_messages`` + ``track_messages``."""
    return (*grid_messages(out, config), *track_messages(out, config))


def grid_messages(out, config) -> tuple:
    """(occupancy OccupancyGrid, observation OccupancyGrid) of a frame, available before its
    tracking step. The grid values come from `evidence.published_grids`, which `evaluate` scores."""
    # imported here: keeps this module free of torch
    from ssm_perception.evidence import published_grids

    stamp = int(out.stamp_ns)
    pub = published_grids(out, config.evidence)
    return (int8_grid_msg(pub.occupancy, config.grid, config.frames.base_link, stamp),
            int8_grid_msg(pub.observation, config.grid, config.frames.base_link, stamp))


def track_messages(out, config) -> tuple:
    """(TrackArray, MarkerArray) of a frame whose tracking step has run."""
    if getattr(out, "tracking_pending", False):
        raise ValueError("track_messages: the frame's tracking step has not run (PerceptionPipeline.track)")
    stamp = int(out.stamp_ns)
    published = out.tracks if config.tracking.publish_tentative else \
        [t for t in out.tracks if t.status != "tentative"]
    return track_array_msg(published, config.frames.odom, stamp), marker_array_msg(published, config.frames.odom, stamp)


def occupancy_grid_to_array(msg) -> np.ndarray:
    """OccupancyGrid (e.g. ground truth from a bag) -> int8 [H, W] in our layout (H along x)."""
    w, h = int(msg.info.width), int(msg.info.height)
    data = np.asarray(msg.data, dtype=np.int8) if not isinstance(msg.data, (bytes, bytearray)) \
        else np.frombuffer(msg.data, dtype=np.int8)
    if data.size != w * h:
        raise ValueError(f"occupancy grid has {data.size} cells, expected width*height = {w * h}")
    return np.ascontiguousarray(data.reshape(h, w).T)


# ---------------------------------------------------------------------------------------- tracks
_STATUS = {"tentative": 0, "confirmed": 1, "coasting": 2}
CLASS_NAMES = {0: "unknown", 1: "car", 2: "truck", 3: "cyclist", 4: "pedestrian"}
CLASS_COLORS = {  # RGBA per class, readable on RViz's dark background
    0: (0.7, 0.7, 0.7, 0.8), 1: (0.2, 0.6, 1.0, 0.8), 2: (1.0, 0.6, 0.1, 0.8),
    3: (0.2, 0.9, 0.3, 0.8), 4: (1.0, 0.2, 0.6, 0.8),
}


def _status_code(status) -> int:
    if isinstance(status, str):
        return _STATUS[status.lower()]
    return int(getattr(status, "value", status))


def track_to_msg(tr, frame_id: str, stamp_ns: int):
    """tracking.tracker.TrackState (odom) -> ssm_perception.msg.Track (field values: io/track_fields.py)."""
    from geometry_msgs.msg import Point32

    from ssm_perception.io import track_fields as tf
    from ssm_perception.msg import ObjectClassification, Shape, Track

    m = Track()
    m.header.stamp = ns_to_stamp(stamp_ns)
    m.header.frame_id = frame_id
    m.object_id.uuid = np.frombuffer(bytes(tr.uuid), dtype=np.uint8) if tr.uuid else np.zeros(16, np.uint8)
    m.track_number = int(tr.id)
    m.existence_probability = float(tr.existence_probability)
    m.status = _status_code(tr.status)
    probs = dict(getattr(tr, "class_probs", {}) or {}) or {int(tr.cls): 1.0}
    m.classification = [ObjectClassification(label=label, probability=float(p))
                        for label, p in tf.classification(probs)]
    p = m.pose.pose
    p.position.x, p.position.y = float(tr.x), float(tr.y)
    p.position.z = 0.5 * float(tr.height)  # box centre above the ground plane of odom
    q = yaw_to_quat_xyzw(float(tr.yaw))
    p.orientation.z, p.orientation.w = float(q[2]), float(q[3])
    m.pose.covariance = np.asarray(tr.pose_cov, dtype=np.float64).reshape(36)
    vx, vy, twist_cov = tf.twist_to_object_frame(tr.vx, tr.vy, tr.yaw, tr.twist_cov)
    m.twist.twist.linear.x, m.twist.twist.linear.y = vx, vy
    m.twist.twist.angular.z = float(tr.yaw_rate)
    m.twist.covariance = twist_cov.reshape(36)
    m.shape.type = Shape.BOUNDING_BOX
    m.shape.dimensions.x, m.shape.dimensions.y, m.shape.dimensions.z = \
        float(tr.length), float(tr.width), float(tr.height)
    m.shape.footprint.points = [Point32(x=x, y=y, z=0.0) for x, y in tf.footprint(tr.length, tr.width)]
    m.age = float(tr.age_s)
    m.time_since_update = float(tr.time_since_update_s)
    return m


def track_array_msg(tracks, frame_id: str, stamp_ns: int):
    from ssm_perception.msg import TrackArray

    msg = TrackArray()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.tracks = [track_to_msg(t, frame_id, stamp_ns) for t in tracks]
    return msg


def marker_array_msg(tracks, frame_id: str, stamp_ns: int, lifetime_s: float = 0.3):
    """DELETEALL, then per track a CUBE box, an ARROW for the velocity and a TEXT id label."""
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    stamp = ns_to_stamp(stamp_ns)
    life_ns = round(lifetime_s * NS)
    lifetime = Duration(sec=life_ns // NS, nanosec=life_ns % NS)
    clear = Marker(action=Marker.DELETEALL)
    clear.header.stamp, clear.header.frame_id = stamp, frame_id
    markers = [clear]

    def base(ns: str, mid: int, mtype: int, rgba) -> Marker:
        m = Marker(ns=ns, id=mid, type=mtype, action=Marker.ADD, lifetime=lifetime)
        m.header.stamp, m.header.frame_id = stamp, frame_id
        m.color.r, m.color.g, m.color.b, m.color.a = rgba
        m.pose.orientation.w = 1.0
        return m

    for tr in tracks:
        cls = int(tr.cls)
        rgba = CLASS_COLORS.get(cls, CLASS_COLORS[0])
        mid = int(tr.id) % (_INT32_MAX + 1)  # Marker.id is int32; track ids are uint64
        q = yaw_to_quat_xyzw(float(tr.yaw))
        z = 0.5 * float(tr.height)

        box = base("tracks/boxes", mid, Marker.CUBE, rgba)
        box.pose.position.x, box.pose.position.y, box.pose.position.z = float(tr.x), float(tr.y), z
        box.pose.orientation.z, box.pose.orientation.w = float(q[2]), float(q[3])
        box.scale.x, box.scale.y, box.scale.z = (max(float(v), 0.05) for v in (tr.length, tr.width, tr.height))
        markers.append(box)

        arrow = base("tracks/velocity", mid, Marker.ARROW, rgba)
        arrow.points = [Point(x=float(tr.x), y=float(tr.y), z=z),
                        Point(x=float(tr.x + tr.vx), y=float(tr.y + tr.vy), z=z)]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.15, 0.3, 0.3  # shaft, head diameter, head length
        markers.append(arrow)

        label = base("tracks/labels", mid, Marker.TEXT_VIEW_FACING, rgba)
        label.pose.position.x, label.pose.position.y = float(tr.x), float(tr.y)
        label.pose.position.z = float(tr.height) + 0.5
        label.scale.z = 0.8  # text height
        label.color.a = 1.0
        label.text = f"{int(tr.id)} {CLASS_NAMES.get(cls, '?')}"
        markers.append(label)
    return MarkerArray(markers=markers)


# ----------------------------------------------------------------------------------- diagnostics
LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2, "STALE": 3}


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if math.isfinite(v) else str(v)
    return str(v)


def diagnostic_status(name: str, level, message: str, values: dict | None = None, hardware_id: str = ""):
    """diagnostic_msgs.msg.DiagnosticStatus; ``level`` is 0-3 or 'OK'/'WARN'/'ERROR'/'STALE'."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    lvl = LEVELS[level.upper()] if isinstance(level, str) else int(level)
    if lvl not in LEVELS.values():
        raise ValueError(f"diagnostic level must be 0..3, got {level!r}")
    return DiagnosticStatus(
        level=bytes([lvl]), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=_fmt_value(v)) for k, v in (values or {}).items()],
    )


def diagnostic_array(statuses, stamp_ns: int):
    from diagnostic_msgs.msg import DiagnosticArray

    msg = DiagnosticArray(status=list(statuses))
    msg.header.stamp = ns_to_stamp(stamp_ns)
    return msg
