"""rosbag2 reading and writing through `rosbags` (pure Python, no ROS install needed).

``typestore()`` knows the ROS 2 Kilted standard messages plus our ``ssm_perception_msgs`` (parsed
from the same msg/*.msg text rosidl builds, so type hashes match real peers). The builders turn
numpy data into rosbags message objects; ``BagWriter`` never leaves a half-written bag behind.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from ssm_perception.geometry import matrix_to_quat_xyzw
from ssm_perception.io.pointcloud2 import array_to_cloud_fields

MSG_PACKAGE = "ssm_perception_msgs"

# Upstream tf2_msgs definition (kept identical so the type hash matches real ROS 2 peers).
_TFMESSAGE_MSG = "geometry_msgs/TransformStamped[] transforms\n"


class BagError(RuntimeError):
    """A path that is not a readable rosbag2, or a bag that cannot be written."""


# ---------------------------------------------------------------------------------- typestore
def _msg_dir() -> Path:
    """Directory holding Track.msg / TrackArray.msg: source tree, then installed share dirs."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        candidates += [Path(prefix) / "share" / "ssm_perception" / "msg", Path(prefix) / "share" / MSG_PACKAGE / "msg"]
    for c in candidates:
        if (c / "Track.msg").is_file() and (c / "TrackArray.msg").is_file():
            return c
    raise BagError("cannot find Track.msg/TrackArray.msg; looked in: " + ", ".join(str(c) for c in candidates))


@functools.cache
def typestore():
    """rosbags typestore: ROS 2 Kilted + ssm_perception_msgs/msg/{Track,TrackArray} + tf2_msgs/msg/TFMessage."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_dir = _msg_dir()
    types = {}
    for name in ("Track", "TrackArray"):
        types.update(get_types_from_msg((msg_dir / f"{name}.msg").read_text(), f"{MSG_PACKAGE}/msg/{name}"))
    if "tf2_msgs/msg/TFMessage" not in store.types:
        types.update(get_types_from_msg(_TFMESSAGE_MSG, "tf2_msgs/msg/TFMessage"))
    store.register(types)
    return store


def msg_class(msgtype: str):
    return typestore().types[msgtype]


# ---------------------------------------------------------------------------------- reading
def _open_reader(path: str | Path):
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such file or directory")
    if not (path / "metadata.yaml").is_file():
        what = sorted(p.name for p in path.iterdir())[:20] if path.is_dir() else [path.name]
        raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml); it contains: {what}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for corrupt bags
        raise BagError(f"{path}: cannot open as rosbag2: {exc}") from exc
    return reader


def bag_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """{topic: (msgtype, message count)} from the bag's metadata."""
    reader = _open_reader(path)
    try:
        return {t: (info.msgtype or "", int(info.msgcount)) for t, info in reader.topics.items()}
    finally:
        reader.close()


def bag_custom_data(path: str | Path) -> dict[str, str]:
    """The ``custom_data`` mapping of metadata.yaml (scenario config and seed for simulated bags)."""
    import yaml

    meta = yaml.safe_load((Path(path) / "metadata.yaml").read_text())
    return dict(meta.get("rosbag2_bagfile_information", {}).get("custom_data") or {})


def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, str, int, object]]:
    """Yield (topic, msgtype, bag timestamp [ns], deserialized message) in bag-time order.

    The bag is opened (and a non-bag path rejected) at call time, not at the first iteration.
    """
    reader = _open_reader(path)
    return _iter_messages(reader, topics)


def _iter_messages(reader, topics):
    store = typestore()
    try:
        conns = reader.connections
        if topics is not None:
            wanted = set(topics)
            conns = [c for c in conns if c.topic in wanted]
        if conns:
            for conn, stamp, raw in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, int(stamp), store.deserialize_cdr(raw, conn.msgtype)
    finally:
        reader.close()


# ---------------------------------------------------------------------------------- writing
def _qos(latched: bool):
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        1 if latched else 10,
        QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


class BagWriter:
    """Context manager around rosbags' Writer (rosbag2 v9). Any exception inside the ``with`` block
    removes the bag directory, so a failed run leaves nothing that looks like a valid bag.

        with BagWriter(path) as bag:
            bag.add_topic("/tf", "tf2_msgs/msg/TFMessage")
            bag.write("/tf", t_ns, msg)
    """

    def __init__(self, path: str | Path, storage: str = "mcap", custom_data: dict[str, str] | None = None):
        if storage not in ("mcap", "sqlite3"):
            raise BagError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self.custom_data = dict(custom_data or {})
        self._writer = None
        self._conns: dict[str, object] = {}

    def __enter__(self) -> Self:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if self.path.exists():
            raise BagError(f"{self.path}: already exists, not overwriting")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise BagError(f"{self.path}: parent directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BagError(f"{self.path}: parent directory {parent} is not writable")
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        for k, v in sorted(self.custom_data.items()):
            self._writer.set_custom_data(k, v)
        try:
            self._writer.open()
        except Exception as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            raise BagError(f"{self.path}: cannot create bag: {exc}") from exc
        return self

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        if topic in self._conns:
            return
        self._conns[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=[_qos(latched)]
        )

    def write(self, topic: str, timestamp_ns: int, msg) -> None:
        conn = self._conns.get(topic)
        if conn is None:
            raise BagError(f"topic {topic} was not added to the bag (add_topic first)")
        self._writer.write(conn, int(timestamp_ns), typestore().serialize_cdr(msg, conn.msgtype))

    def __exit__(self, exc_type, exc, tb) -> bool:
        writer, self._writer = self._writer, None
        if exc_type is None:
            try:
                writer.close()
                return False
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        try:
            writer.abort()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


# ---------------------------------------------------------------------------------- builders
def stamp_msg(t_ns: int):
    t_ns = int(t_ns)
    return msg_class("builtin_interfaces/msg/Time")(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


def header_msg(t_ns: int, frame_id: str):
    return msg_class("std_msgs/msg/Header")(stamp=stamp_msg(t_ns), frame_id=frame_id)


def _vec3(v):
    return msg_class("geometry_msgs/msg/Vector3")(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def pose_msg(T: np.ndarray):
    """geometry_msgs/Pose from a 4x4 transform."""
    q = matrix_to_quat_xyzw(T)
    point = msg_class("geometry_msgs/msg/Point")(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3]))
    quat = msg_class("geometry_msgs/msg/Quaternion")(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return msg_class("geometry_msgs/msg/Pose")(position=point, orientation=quat)


def pointcloud2_msg(arr: np.ndarray, t_ns: int, frame_id: str, is_dense: bool | None = None):
    """sensor_msgs/PointCloud2 (height 1) from a structured array."""
    fields, point_step, data = array_to_cloud_fields(arr)
    pf = msg_class("sensor_msgs/msg/PointField")
    n = int(arr.shape[0])
    if is_dense is None:  # dense = no non-finite coordinates
        is_dense = all(bool(np.isfinite(arr[c]).all()) for c in ("x", "y", "z") if c in (arr.dtype.names or ()))
    return msg_class("sensor_msgs/msg/PointCloud2")(
        header=header_msg(t_ns, frame_id),
        height=1,
        width=n,
        fields=[pf(name=name, offset=off, datatype=dt, count=cnt) for name, off, dt, cnt in fields],
        is_bigendian=False,
        point_step=point_step,
        row_step=point_step * n,
        data=np.frombuffer(data, dtype=np.uint8),
        is_dense=bool(is_dense),
    )


def image_msg(rgb: np.ndarray, t_ns: int, frame_id: str):
    """sensor_msgs/Image, encoding rgb8, from an [H, W, 3] uint8 array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] uint8, got shape {rgb.shape}")
    h, w, _ = rgb.shape
    return msg_class("sensor_msgs/msg/Image")(
        header=header_msg(t_ns, frame_id), height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
        data=rgb.reshape(-1),
    )


def camera_info_msg(width: int, height: int, K: np.ndarray, D: np.ndarray, P: np.ndarray, t_ns: int, frame_id: str):
    """sensor_msgs/CameraInfo (plumb_bob), R = identity."""
    roi = msg_class("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return msg_class("sensor_msgs/msg/CameraInfo")(
        header=header_msg(t_ns, frame_id), height=int(height), width=int(width), distortion_model="plumb_bob",
        d=np.asarray(D, dtype=np.float64).reshape(-1), k=np.asarray(K, dtype=np.float64).reshape(9),
        r=np.eye(3).reshape(9), p=np.asarray(P, dtype=np.float64).reshape(12), binning_x=0, binning_y=0, roi=roi,
    )


def transform_stamped_msg(T: np.ndarray, t_ns: int, parent: str, child: str):
    q = matrix_to_quat_xyzw(T)
    tr = msg_class("geometry_msgs/msg/Transform")(
        translation=_vec3(T[:3, 3]),
        rotation=msg_class("geometry_msgs/msg/Quaternion")(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )
    return msg_class("geometry_msgs/msg/TransformStamped")(header=header_msg(t_ns, parent), child_frame_id=child,
                                                          transform=tr)


def tf_message(transforms: Sequence[tuple[np.ndarray, int, str, str]]):
    """tf2_msgs/TFMessage from [(T_parent_child, t_ns, parent, child), ...]."""
    return msg_class("tf2_msgs/msg/TFMessage")(transforms=[transform_stamped_msg(*t) for t in transforms])


def odometry_msg(T_odom_base: np.ndarray, v_base: Sequence[float], yaw_rate: float, t_ns: int,
                 frame_id: str = "odom", child_frame_id: str = "base_link"):
    """nav_msgs/Odometry: pose in frame_id, twist (vx, vy, vz in child frame, yaw rate)."""
    cov = np.zeros(36)
    cov[[0, 7, 14, 21, 28, 35]] = [0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-3]
    pwc = msg_class("geometry_msgs/msg/PoseWithCovariance")(pose=pose_msg(T_odom_base), covariance=cov)
    twist = msg_class("geometry_msgs/msg/Twist")(linear=_vec3(v_base), angular=_vec3((0.0, 0.0, yaw_rate)))
    twc = msg_class("geometry_msgs/msg/TwistWithCovariance")(twist=twist, covariance=cov.copy())
    return msg_class("nav_msgs/msg/Odometry")(header=header_msg(t_ns, frame_id), child_frame_id=child_frame_id,
                                             pose=pwc, twist=twc)


def occupancy_grid_msg(grid: np.ndarray, resolution: float, origin_xy: tuple[float, float], t_ns: int, frame_id: str):
    """nav_msgs/OccupancyGrid from grid [H, W] indexed (i along +x, j along +y), int8 values.

    OccupancyGrid data is row-major with rows along y and columns along x, so it is the transpose.
    """
    g = np.asarray(grid)
    nx, ny = g.shape
    info = msg_class("nav_msgs/msg/MapMetaData")(
        map_load_time=stamp_msg(t_ns), resolution=float(resolution), width=nx, height=ny,
        origin=pose_msg(np.array([[1, 0, 0, origin_xy[0]], [0, 1, 0, origin_xy[1]], [0, 0, 1, 0], [0, 0, 0, 1]],
                                 dtype=np.float64)),
    )
    return msg_class("nav_msgs/msg/OccupancyGrid")(header=header_msg(t_ns, frame_id), info=info,
                                                  data=np.ascontiguousarray(g.T, dtype=np.int8).reshape(-1))


def occupancy_grid_to_array(msg) -> np.ndarray:
    """Inverse of occupancy_grid_msg: [H=width(x), W=height(y)] int8."""
    return np.asarray(msg.data, dtype=np.int8).reshape(msg.info.height, msg.info.width).T


def track_array_msg(objects: Sequence[dict], t_ns: int, frame_id: str):
    """ssm_perception_msgs/TrackArray from dicts with id, cls, x, y, z, yaw, l, w, h, vx, vy, yaw_rate
    (optional: confidence, status, existence, age, time_since_update, pose_cov [36], twist_cov [36])."""
    from ssm_perception.geometry import make_transform, yaw_to_quat_xyzw

    track_cls = msg_class(f"{MSG_PACKAGE}/msg/Track")
    tracks = []
    for o in objects:
        T = make_transform((o["x"], o["y"], o.get("z", 0.0)), yaw_to_quat_xyzw(o["yaw"]))
        twist = msg_class("geometry_msgs/msg/Twist")(
            linear=_vec3((o.get("vx", 0.0), o.get("vy", 0.0), 0.0)), angular=_vec3((0.0, 0.0, o.get("yaw_rate", 0.0)))
        )
        tracks.append(track_cls(
            header=header_msg(t_ns, frame_id), id=int(o["id"]), classification=int(o["cls"]),
            classification_confidence=float(o.get("confidence", 1.0)), status=int(o.get("status", 1)),
            existence_probability=float(o.get("existence", 1.0)), pose=pose_msg(T), twist=twist,
            size=_vec3((o["l"], o["w"], o["h"])),
            pose_covariance=np.asarray(o.get("pose_cov", np.zeros(36)), dtype=np.float64).reshape(36),
            twist_covariance=np.asarray(o.get("twist_cov", np.zeros(36)), dtype=np.float64).reshape(36),
            age=float(o.get("age", 0.0)), time_since_update=float(o.get("time_since_update", 0.0)),
        ))
    return msg_class(f"{MSG_PACKAGE}/msg/TrackArray")(header=header_msg(t_ns, frame_id), tracks=tracks)


def string_msg(text: str):
    return msg_class("std_msgs/msg/String")(data=str(text))
