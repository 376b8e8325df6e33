"""sensor_msgs/PointCloud2 <-> numpy structured arrays (ROS-free).

sensor_msgs_py is not on pip, so the decoding lives here. It accepts rclpy messages and rosbags
messages alike (same attribute names); ``data`` may be bytes, array.array, a list or a uint8
array. Decoding is zero-copy (``np.frombuffer``) when the layout allows it: native byte order and
no padding between rows. Every malformed cloud raises ``PointCloudDecodeError`` with one line
that says what is wrong, because a silently misread cloud is worse than a dropped one.
"""

from __future__ import annotations

import array

import numpy as np

# sensor_msgs/PointField datatype constants -> numpy base type (byte order added later).
_DATATYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_DATATYPE_OF_KIND: dict[str, int] = {v: k for k, v in _DATATYPES.items()}

LIDAR_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("t", "<f4"), ("ring", "<u2")]
)
RADAR_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("radial_velocity", "<f4"), ("rcs", "<f4")])


class PointCloudDecodeError(ValueError):
    """A PointCloud2 whose header, fields or buffer are inconsistent."""


def _buffer(data) -> np.ndarray:
    """The message payload as a flat uint8 array, without copying when it already is a buffer."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise PointCloudDecodeError(f"data must be uint8, got {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PointCloudDecodeError(f"data is not a byte buffer: {exc}") from None


def cloud_dtype(fields, point_step: int, is_bigendian: bool) -> np.dtype:
    """Structured dtype (itemsize = point_step) of one point, validated against the fields."""
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in fields:
        name, offset, datatype, count = str(f.name), int(f.offset), int(f.datatype), int(f.count)
        if not name:
            raise PointCloudDecodeError("a field has an empty name")
        if name in names:
            raise PointCloudDecodeError(f"duplicate field name {name!r}")
        if datatype not in _DATATYPES:
            raise PointCloudDecodeError(f"field {name!r}: datatype {datatype} is not one of 1..8")
        if count < 1:
            raise PointCloudDecodeError(f"field {name!r}: count {count} < 1")
        base = np.dtype(order + _DATATYPES[datatype])
        if offset < 0 or offset + base.itemsize * count > point_step:
            raise PointCloudDecodeError(
                f"field {name!r}: offset {offset} + size {base.itemsize * count} exceeds point_step {point_step}"
            )
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def cloud_to_array(msg) -> np.ndarray:
    """Decode a PointCloud2 into a structured array with one record per point, shape [height*width].

    The result may be read-only and share memory with ``msg.data`` (zero-copy); copy it before
    writing into it. Big-endian clouds are byte-swapped to native order.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0:
        raise PointCloudDecodeError(f"negative size {height}x{width}")
    if point_step <= 0:
        raise PointCloudDecodeError(f"point_step must be > 0, got {point_step}")
    dtype = cloud_dtype(msg.fields, point_step, bool(msg.is_bigendian))
    n = height * width
    if n == 0:
        return np.empty(0, dtype=dtype.newbyteorder("="))
    if row_step < width * point_step:
        raise PointCloudDecodeError(f"row_step {row_step} < width {width} * point_step {point_step}")
    buf = _buffer(msg.data)
    need = row_step * (height - 1) + width * point_step
    if buf.size < need:
        raise PointCloudDecodeError(f"data has {buf.size} bytes, {height} rows of row_step {row_step} need {need}")
    if row_step == width * point_step:
        arr = np.frombuffer(buf, dtype=dtype, count=n)
    else:  # padded rows: a strided view, one copy when flattened
        arr = np.ndarray((height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step)).reshape(-1)
    if dtype.isnative or not msg.is_bigendian:
        return arr
    # Field by field into a packed native layout: a whole-record astype() would write fields that
    # share bytes (PCL's rgb/rgba views of one offset) over each other.
    native = np.dtype([(name, dtype.fields[name][0].newbyteorder("=")) for name in dtype.names])
    out = np.empty(n, dtype=native)
    for name in dtype.names:
        out[name] = arr[name]
    return out


def array_to_cloud_fields(arr: np.ndarray) -> tuple[list[tuple[str, int, int, int]], int, bytes]:
    """Pack a structured array as PointCloud2 payload: (fields (name, offset, datatype, count), point_step, data).

    Fields are packed without padding, in the array's field order, little-endian.
    """
    arr = np.asarray(arr)
    if arr.dtype.names is None:
        raise ValueError("array_to_cloud_fields needs a structured array")
    fields: list[tuple[str, int, int, int]] = []
    formats, offsets, offset = [], [], 0
    for name in arr.dtype.names:
        ftype = arr.dtype.fields[name][0]
        base, shape = (ftype.subdtype if ftype.subdtype else (ftype, ()))
        if base.names is not None or len(shape) > 1:
            raise ValueError(f"field {name!r}: nested or multi-dimensional fields are not supported")
        kind = f"{base.kind}{base.itemsize}"
        if kind not in _DATATYPE_OF_KIND:
            raise ValueError(f"field {name!r}: dtype {base} has no PointField datatype")
        count = int(shape[0]) if shape else 1
        le = np.dtype("<" + kind)
        fields.append((name, offset, _DATATYPE_OF_KIND[kind], count))
        formats.append(le if count == 1 else (le, (count,)))
        offsets.append(offset)
        offset += le.itemsize * count
    packed = np.dtype({"names": list(arr.dtype.names), "formats": formats, "offsets": offsets, "itemsize": offset})
    out = np.empty(arr.shape[0] if arr.ndim else 1, dtype=packed)
    for name in arr.dtype.names:
        out[name] = arr[name].reshape(out[name].shape)
    return fields, offset, out.tobytes()


def xyz(arr: np.ndarray) -> np.ndarray:
    """[N, 3] float32 coordinates of a structured cloud (fields x, y, z)."""
    names = arr.dtype.names or ()
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
        raise PointCloudDecodeError(f"cloud has no field(s) {missing}; fields are {list(names)}")
    out = np.empty((arr.shape[0], 3), dtype=np.float32)
    for k, c in enumerate(("x", "y", "z")):
        out[:, k] = arr[c]
    return out
