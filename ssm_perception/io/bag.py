"""rosbag2 reading and writing through `rosbags` (pure Python, no ROS install needed).

``typestore()`` knows the ROS 2 Kilted standard messages plus our ``ssm_perception/msg/*`` (parsed
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

from ssm_perception.config import UserError
from ssm_perception.geometry import matrix_to_quat_xyzw
from ssm_perception.io.pointcloud2 import array_to_cloud_fields

MSG_PACKAGE = "ssm_perception"
# msg/ files in dependency order (each may use the ones before it).
MSG_NAMES = ("ObjectClassification", "Shape", "Track", "TrackArray")

# Upstream tf2_msgs definition (kept identical so the type hash matches real ROS 2 peers).
_TFMESSAGE_MSG = "geometry_msgs/TransformStamped[] transforms\n"


class BagError(UserError, RuntimeError):
    """A path that is not a readable rosbag2, or a bag that cannot be written."""


# ---------------------------------------------------------------------------------- typestore
def _msg_dir() -> Path:
    """Directory holding our msg/*.msg: source tree, then installed share dirs."""
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        candidates.append(Path(prefix) / "share" / MSG_PACKAGE / "msg")
    for c in candidates:
        if all((c / f"{name}.msg").is_file() for name in MSG_NAMES):
            return c
    raise BagError(f"cannot find {', '.join(n + '.msg' for n in MSG_NAMES)}; looked in: "
                   + ", ".join(str(c) for c in candidates))


@functools.cache
def typestore():
    """rosbags typestore: ROS 2 Kilted + ssm_perception/msg/* + tf2_msgs/msg/TFMessage."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    msg_dir = _msg_dir()
    for name in MSG_NAMES:  # one at a time: Track refers to ObjectClassification and Shape
        store.register(get_types_from_msg((msg_dir / f"{name}.msg").read_text(), f"{MSG_PACKAGE}/msg/{name}"))
    if "tf2_msgs/msg/TFMessage" not in store.types:
        store.register(get_types_from_msg(_TFMESSAGE_MSG, "tf2_msgs/msg/TFMessage"))
    return store


def msg_class(msgtype: str):
    return typestore().types[msgtype]


# ---------------------------------------------------------------------------------- structural checks
# MCAP framing (https://mcap.dev/spec): magic, then records of opcode (1 byte) + length (u64 LE) + body.
MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_HEADER, _OP_FOOTER, _OP_MESSAGE, _OP_CHUNK, _OP_MESSAGE_INDEX, _OP_DATA_END = 0x01, 0x02, 0x05, 0x06, 0x07, 0x0F
_OP_LAST_KNOWN = 0x0F  # 0x10-0x7F are reserved by the spec: never written by rosbag2, so corruption


def _mcap_records(f, path: Path, size: int):
    """Yield (offset, opcode, body) of every top-level record, checking the framing. Written by
    hand (the mcap package's readers do not report where a file is damaged); the record contents
    are parsed by the mcap package (check_mcap)."""
    magic = f.read(8)
    if magic != MCAP_MAGIC:
        raise BagError(f"{path}: offset 0: not an MCAP file (bad magic {magic[:8]!r})")
    offset = 8
    while True:
        head = f.read(9)
        if len(head) < 9:
            raise BagError(f"{path}: truncated at offset {offset}: the file ends ({size} bytes) before the footer")
        opcode, length = head[0], int.from_bytes(head[1:], "little")
        if opcode == 0 or _OP_LAST_KNOWN < opcode < 0x80:
            raise BagError(f"{path}: corrupt at offset {offset}: invalid record opcode 0x{opcode:02x}")
        if offset + 9 + length > size:
            raise BagError(f"{path}: truncated or corrupt at offset {offset}: a record of {length} bytes runs past "
                           f"the end of the file ({size} bytes)")
        body = f.read(length)
        yield offset, opcode, head, body
        offset += 9 + length
        if opcode == _OP_FOOTER:
            tail = f.read(9)
            if tail[:8] != MCAP_MAGIC or len(tail) != 8:
                raise BagError(f"{path}: corrupt at offset {offset}: no MCAP magic right after the footer")
            return


def check_mcap(path: str | Path) -> None:
    """Structure of one MCAP file: framing of every record, CRC and inner records of every chunk,
    message indexes against their chunk, data-section and summary CRCs (where the writer set them),
    the footer. Raises BagError naming the first bad offset (a chunk is the unit its CRC covers)."""
    import io
    import zlib

    from mcap.data_stream import ReadDataStream
    from mcap.exceptions import McapError
    from mcap.records import Chunk
    from mcap.stream_reader import CRCValidationError, breakup_chunk

    path = Path(path)
    size = path.stat().st_size
    crc = zlib.crc32(MCAP_MAGIC)
    first = True
    index: dict[int, list[tuple[int, int]]] = {}  # channel -> [(log_time, offset in chunk)] of the last chunk
    with path.open("rb") as f:
        for offset, opcode, head, body in _mcap_records(f, path, size):
            if first and opcode != _OP_HEADER:
                raise BagError(f"{path}: corrupt at offset {offset}: the first record is not the MCAP header")
            first = False
            if opcode == _OP_CHUNK:
                try:
                    chunk = Chunk.read(ReadDataStream(io.BytesIO(body)))
                    breakup_chunk(chunk, validate_crc=True)
                    index = _chunk_message_index(chunk)
                except CRCValidationError:
                    raise BagError(f"{path}: corrupt chunk at offset {offset} ({9 + len(body)} bytes): "
                                   f"CRC mismatch") from None
                except (McapError, ValueError, KeyError, IndexError, EOFError, UnicodeDecodeError) as exc:
                    raise BagError(f"{path}: corrupt chunk at offset {offset}: {type(exc).__name__}: {exc}") from None
            elif opcode == _OP_MESSAGE_INDEX:  # must list exactly the messages of its channel in the chunk
                channel = int.from_bytes(body[:2], "little")
                n = int.from_bytes(body[2:6], "little") if len(body) >= 6 else -1
                entries = [(int.from_bytes(body[i:i + 8], "little"), int.from_bytes(body[i + 8:i + 16], "little"))
                           for i in range(6, len(body) - 15, 16)]
                if n != len(body) - 6 or sorted(entries) != sorted(index.get(channel, [])):
                    raise BagError(f"{path}: corrupt message index at offset {offset}: it does not match its chunk")
            elif opcode == _OP_DATA_END:
                expected = int.from_bytes(body[:4], "little") if len(body) >= 4 else 0
                if expected and expected != crc:
                    raise BagError(f"{path}: corrupt data section between offsets 8 and {offset} (in a record "
                                   f"without its own CRC: schema, channel or metadata): CRC mismatch")
            elif opcode == _OP_FOOTER and len(body) >= 20:
                summary_start = int.from_bytes(body[:8], "little")
                expected = int.from_bytes(body[16:20], "little")
                if expected and summary_start:
                    f.seek(summary_start)
                    covered = f.read(offset - summary_start) + head + body[:16]
                    if zlib.crc32(covered) != expected:
                        raise BagError(f"{path}: corrupt summary section at offset {summary_start}: CRC mismatch")
                    f.seek(offset + 9 + len(body))
            if opcode != _OP_DATA_END:
                crc = zlib.crc32(body, zlib.crc32(head, crc))


def _chunk_message_index(chunk) -> dict[int, list[tuple[int, int]]]:
    """{channel: [(log_time, offset of the message record in the uncompressed chunk)]}."""
    from mcap.stream_reader import get_chunk_data_stream

    stream, length = get_chunk_data_stream(chunk)
    data = stream.read(length)
    out: dict[int, list[tuple[int, int]]] = {}
    pos = 0
    while pos + 9 <= len(data):
        op, n = data[pos], int.from_bytes(data[pos + 1:pos + 9], "little")
        if op == _OP_MESSAGE and n >= 22:
            channel = int.from_bytes(data[pos + 9:pos + 11], "little")
            log_time = int.from_bytes(data[pos + 15:pos + 23], "little")
            out.setdefault(channel, []).append((log_time, pos))
        pos += 9 + n
    return out


def add_mcap_crcs(path: str | Path) -> None:
    """Fill in the chunk, data-section and summary CRCs that rosbags' writer leaves at 0, so that
    corruption of a bag written here is found by check_mcap (the CRCs are the spec's own fields;
    readers that ignore them are unaffected)."""
    import zlib

    path = Path(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        records = [(off, op, len(body)) for off, op, _, body in _mcap_records(f, path, size)]
        for off, op, _ in records:  # chunk CRC: of the uncompressed records (rosbags writes no compression)
            if op != _OP_CHUNK:
                continue
            name_len = int.from_bytes(_read_at(f, off + 9 + 28, 4), "little")
            if name_len:
                continue  # a compressed chunk would need its codec: leave its CRC as written
            records_len = int.from_bytes(_read_at(f, off + 9 + 32, 8), "little")
            crc = zlib.crc32(_read_at(f, off + 9 + 40, records_len))
            f.seek(off + 9 + 24)
            f.write(crc.to_bytes(4, "little"))
        data_end = next((off for off, op, _ in records if op == _OP_DATA_END), None)
        if data_end is not None:
            crc = zlib.crc32(_read_at(f, 0, data_end))
            f.seek(data_end + 9)
            f.write(crc.to_bytes(4, "little"))
        footer = next((off for off, op, _ in records if op == _OP_FOOTER), None)
        if footer is not None:
            summary_start = int.from_bytes(_read_at(f, footer + 9, 8), "little")
            if summary_start:
                crc = zlib.crc32(_read_at(f, summary_start, footer + 9 + 16 - summary_start))
                f.seek(footer + 9 + 16)
                f.write(crc.to_bytes(4, "little"))


def _read_at(f, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def check_sqlite(path: str | Path) -> None:
    """SQLite's own integrity check of one .db3 file (read-only). Raises BagError."""
    import sqlite3

    path = Path(path)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            page_size = con.execute("PRAGMA page_size").fetchone()[0]
            rows = [r[0] for r in con.execute("PRAGMA integrity_check(5)").fetchall()]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise BagError(f"{path}: corrupt SQLite database: {exc}") from None
    if rows != ["ok"]:
        import re

        page = re.search(r"[Pp]age (\d+)", rows[0])
        where = f" at offset {(int(page.group(1)) - 1) * page_size} (page {page.group(1)})" if page else ""
        raise BagError(f"{path}: corrupt SQLite database{where}: {rows[0]}")


def _storage_files(path: Path) -> tuple[str, list[Path], str]:
    """(storage identifier, files, compression mode) from metadata.yaml, read without rosbags (which
    opens the files)."""
    import yaml

    try:
        meta = yaml.safe_load((path / "metadata.yaml").read_text())
        info = meta["rosbag2_bagfile_information"]
        storage = str(info.get("storage_identifier", ""))
        files = [path / str(f) for f in info.get("relative_file_paths") or []]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise BagError(f"{path}: unreadable metadata.yaml: {' '.join(str(exc).split())}") from None
    for f in files:
        if not f.is_file():
            raise BagError(f"{path}: metadata.yaml lists {f.name}, which is missing")
    return storage, files, str(info.get("compression_mode") or "").lower()


def _check_definitions(path: Path, reader, decode: bool = True) -> None:
    """Every connection's type must be the ROS 2 type this package decodes: a 'pkg/msg/Name' name,
    and (for types known here) the same type hash, or, for bags without hashes, a first message
    that decodes. A rosbag2 holding ROS 1 definitions (seq in Header, ...) fails here."""
    store = typestore()
    for conn in reader.connections:
        parts = conn.msgtype.split("/")
        if len(parts) != 3 or parts[1] not in ("msg", "srv", "action"):
            raise BagError(f"{path}: topic {conn.topic} has type {conn.msgtype!r}, not a ROS 2 type name "
                           f"(a ROS 1 bag? convert it with rosbags-convert)")
        if conn.msgtype not in store.types:
            continue  # not decoded by this package (replay publishes it as it is)
        digest = getattr(conn, "digest", "") or ""
        if digest.startswith("RIHS01_"):
            if digest != store.hash_rihs01(conn.msgtype):
                raise BagError(f"{path}: topic {conn.topic}: the bag's definition of {conn.msgtype} differs from "
                               f"ROS 2's (type hash {digest[:20]}...; ROS 1 definitions?)")
            continue
        if not decode:
            continue  # compressed payloads: only the type hash can be compared
        for _, _, raw in reader.messages(connections=[conn]):
            try:
                store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # rosbags raises assorted errors for undecodable CDR
                raise BagError(f"{path}: topic {conn.topic}: a {conn.msgtype} message does not decode with the "
                               f"ROS 2 definition ({type(exc).__name__}; ROS 1 definitions?)") from exc
            break


_CHECKED: dict[tuple, None] = {}


def check_bag(path: str | Path) -> None:
    """Everything that can be checked before reading a bag: a rosbag2 directory, readable metadata,
    the storage files' structure (MCAP framing and CRCs, SQLite integrity), the message definitions.
    Raises BagError (one line, with the first bad offset for a damaged file). Results are kept per
    (path, size, mtime) for the process."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such file or directory")
    if not (path / "metadata.yaml").is_file():
        what = sorted(p.name for p in path.iterdir())[:20] if path.is_dir() else [path.name]
        raise BagError(f"{path}: not a rosbag2 directory (no metadata.yaml); it contains: {what}")
    storage, files, compression = _storage_files(path)
    key = (str(path.resolve()), *((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key in _CHECKED:
        return
    for f in files:
        try:
            if compression == "file":
                continue  # whole files zstd-compressed: rosbags decompresses them (zstd frames carry checksums)
            if storage == "mcap" or f.suffix == ".mcap":
                check_mcap(f)
            elif storage == "sqlite3" or f.suffix == ".db3":
                check_sqlite(f)
            else:
                raise BagError(f"{path}: unknown storage {storage!r} (mcap or sqlite3)")
        except OSError as exc:
            raise BagError(f"{f}: cannot read: {exc.strerror or exc}") from None
    reader = _open_unchecked(path)
    try:
        _check_definitions(path, reader, decode=compression in ("", "none"))
    finally:
        reader.close()
    _CHECKED[key] = None


# ---------------------------------------------------------------------------------- reading
def _open_unchecked(path: Path):
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for corrupt bags
        raise BagError(f"{path}: cannot open as rosbag2: {' '.join(str(exc).split())}") from exc
    return reader


def _open_reader(path: str | Path):
    """A rosbags Reader on a bag that passed check_bag."""
    check_bag(path)
    return _open_unchecked(Path(path))


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


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above an output path, as ``mkdir -p`` (``-o out/heldout/bag`` on a
    fresh checkout); returns those created, outermost first, so that a failed write can remove them
    again. BagError naming the path when a parent is a file or cannot be created."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    missing, p = [], parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise BagError(f"{path}: {p} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BagError(f"{path}: cannot create directory {parent}: {exc.strerror or exc}") from None
    return missing[::-1]


def remove_made(made: list[Path]) -> None:
    """Undo ``make_parents``: remove the folders it created, innermost first, where still empty."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return


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
        self._made: list[Path] = []  # parent folders this writer created (removed again on failure)

    def __enter__(self) -> Self:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if self.path.exists():
            raise BagError(f"{self.path}: already exists, not overwriting")
        self._made = make_parents(self.path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not os.access(parent, os.W_OK | os.X_OK):
            remove_made(self._made)
            raise BagError(f"{self.path}: parent directory {parent} is not writable")
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        for k, v in sorted(self.custom_data.items()):
            self._writer.set_custom_data(k, v)
        try:
            self._writer.open()
        except Exception as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            remove_made(self._made)
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
                if self.storage == "mcap":
                    for f in self.path.glob("*.mcap"):
                        add_mcap_crcs(f)
                return False
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                remove_made(self._made)
                raise
        try:
            writer.abort()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
            remove_made(self._made)
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
    """ssm_perception/TrackArray from dicts with id, cls, x, y, z, yaw, l, w, h, vx, vy (in
    ``frame_id``), yaw_rate (optional: uuid [16 bytes; default derived from id, as for ground truth],
    class_probs {class: p}, status, existence, age, time_since_update, pose_cov [36], twist_cov [36]
    in ``frame_id``). Field values as the node's (io/track_fields.py)."""
    from ssm_perception.geometry import make_transform, yaw_to_quat_xyzw
    from ssm_perception.io import track_fields as tf

    M = f"{MSG_PACKAGE}/msg/"
    g = "geometry_msgs/msg/"
    tracks = []
    for o in objects:
        T = make_transform((o["x"], o["y"], o.get("z", 0.0)), yaw_to_quat_xyzw(o["yaw"]))
        vx, vy, twist_cov = tf.twist_to_object_frame(o.get("vx", 0.0), o.get("vy", 0.0), o["yaw"],
                                                    o.get("twist_cov"))
        twist = msg_class(f"{g}Twist")(linear=_vec3((vx, vy, 0.0)), angular=_vec3((0.0, 0.0, o.get("yaw_rate", 0.0))))
        uid = bytes(o["uuid"]) if o.get("uuid") else tf.ground_truth_uuid(o["id"])
        shape = msg_class(f"{M}Shape")(
            type=0, dimensions=_vec3((o["l"], o["w"], o["h"])),
            footprint=msg_class(f"{g}Polygon")(points=[
                msg_class(f"{g}Point32")(x=x, y=y, z=0.0) for x, y in tf.footprint(o["l"], o["w"])]))
        tracks.append(msg_class(f"{M}Track")(
            header=header_msg(t_ns, frame_id),
            object_id=msg_class("unique_identifier_msgs/msg/UUID")(uuid=np.frombuffer(uid, dtype=np.uint8).copy()),
            track_number=int(o["id"]), existence_probability=float(o.get("existence", 1.0)),
            status=int(o.get("status", 1)),
            classification=[msg_class(f"{M}ObjectClassification")(label=label, probability=float(p))
                            for label, p in tf.classification(o.get("class_probs") or {int(o["cls"]): 1.0})],
            pose=msg_class(f"{g}PoseWithCovariance")(
                pose=pose_msg(T), covariance=np.asarray(o.get("pose_cov", np.zeros(36)), dtype=np.float64).reshape(36)),
            twist=msg_class(f"{g}TwistWithCovariance")(twist=twist, covariance=twist_cov.reshape(36)),
            shape=shape, age=float(o.get("age", 0.0)), time_since_update=float(o.get("time_since_update", 0.0)),
        ))
    return msg_class(f"{M}TrackArray")(header=header_msg(t_ns, frame_id), tracks=tracks)


def string_msg(text: str):
    return msg_class("std_msgs/msg/String")(data=str(text))
