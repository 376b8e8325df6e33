"""One frame assembler: decoded sensor messages + TF -> `FrameInputs` at the LiDAR stamp (no ROS).

The node, `evaluate`'s bag decoding, the simulator's frames (`FrameInputs.from_sim`), the trainer
and the bench all build their frames here, so what is measured offline is what runs:

* pairing: of the recent radar scans and camera images, the one whose stamp is nearest the LiDAR
  stamp within ``sensors.radar_tolerance_s`` / ``camera_tolerance_s`` (either side), camera only with
  a CameraInfo. By stamp, not by arrival: replays pair the same messages every time;
* TF: base_link <- sensor mounts and odom -> base_link through the project's `TfBuffer`
  (``sensors.tf_extrapolation_limit_s``); map -> odom when known;
* ego twist (vx, vy, yaw_rate of base_link in base_link), once per frame, from the odom motion since
  the previous LiDAR frame (exact SE(2) log, so `bev.lidar.deskew`'s exact integration inverts it);
* motion compensation to the LiDAR stamp: a sensor measured at stamp s is re-mounted through the
  ego motion, T_base(lidar stamp) <- T_base(s) from odom (constant-twist extrapolation when odom
  has no pose at s), composed with its mount at s. Radar points and the camera's extrinsic thus
  refer to base_link at the LiDAR stamp (15 m/s and 0.1 s offset: 1.5 m that no longer smears
  static walls). The radar's radial velocity is made over-ground here, once, at the radar stamp
  (the encoder and the detection refinement read it as is);
* per-point deskew of the LiDAR cloud (field ``t``) stays in `bev.lidar.deskew` (the only one),
  driven by the twist assembled here.

Problems are returned as (flag, text) pairs: the node raises them as diagnostics flags, the bag
decoder counts them. A frame without the LiDAR's TF is dropped; radar or camera without TF is left
out of the frame.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssm_perception.config import PerceptionConfig
from ssm_perception.geometry import invert_transform, se2_matrix, yaw_of
from ssm_perception.tf_buffer import TfBuffer, TfError, TfExtrapolationError

NS = 1_000_000_000


@dataclass
class Stamped:
    """One decoded sensor message: its data (points, image), frame_id and header stamp."""

    data: Any
    frame_id: str
    stamp_ns: int


@dataclass
class Assembled:
    inputs: Any  # FrameInputs, or None when the frame had to be dropped
    problems: list[tuple[str, str]] = field(default_factory=list)  # (flag, one-line text)


# ------------------------------------------------------------------------------------- ego motion
def ego_twist(T_prev_cur: np.ndarray | None, dt_s: float | None) -> tuple[float, float, float] | None:
    """(vx, vy, yaw_rate) of base_link in base_link for the motion T_prev_cur over dt_s (constant
    twist, exact SE(2) logarithm), or None when there is no usable motion."""
    if T_prev_cur is None or not dt_s or not math.isfinite(dt_s) or dt_s <= 0:
        return None
    m = np.asarray(T_prev_cur, dtype=np.float64)
    th = yaw_of(m)
    tx, ty = float(m[0, 3]), float(m[1, 3])
    # t = V(th) v dt with V = [[a, -b], [b, a]], a = sin(th)/th, b = (1 - cos(th))/th
    if abs(th) < 1e-6:
        a, b = 1.0 - th * th / 6.0, th / 2.0
    else:
        a, b = math.sin(th) / th, (1.0 - math.cos(th)) / th
    det = a * a + b * b
    twist = ((a * tx + b * ty) / det / dt_s, (-b * tx + a * ty) / det / dt_s, th / dt_s)
    return twist if all(math.isfinite(v) for v in twist) else None


def twist_motion(twist, dt_s: float) -> np.ndarray:
    """4x4 pose after dt_s of constant planar twist, in the starting base frame (dt_s may be < 0)."""
    vx, vy, wz = (float(v) for v in twist)
    th = wz * dt_s
    if abs(th) < 1e-6:
        a, b = 1.0 - th * th / 6.0, th / 2.0
    else:
        a, b = math.sin(th) / th, (1.0 - math.cos(th)) / th
    return se2_matrix((a * vx - b * vy) * dt_s, (b * vx + a * vy) * dt_s, th)


def radar_over_ground(points: np.ndarray, T_base_radar: np.ndarray, twist) -> np.ndarray:
    """A copy of a radar scan whose ``radial_velocity`` is over ground (the sensor's own motion removed).

    The radar measures (v_target - v_sensor) . u with u the unit line of sight; adding v_sensor . u,
    v_sensor = v_ego + yaw_rate x r_sensor (the lever arm matters when turning), gives the target's
    over-ground radial velocity: ~0 for anything static, whatever the ego speed. Computed in base_link
    at the radar's own stamp (``T_base_radar``, ``twist`` at that time)."""
    out = np.array(points, copy=True)
    T = np.asarray(T_base_radar, dtype=np.float64)
    xyz = np.stack([out["x"], out["y"], out["z"]], 1).astype(np.float64)
    ray = xyz @ T[:3, :3].T  # line of sight in base_link axes (from the sensor, so no translation)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = ray[:, :2] / np.maximum(np.hypot(ray[:, 0], ray[:, 1]), 1e-3)[:, None]
    vx, vy, wz = (float(v) for v in twist)
    sx, sy = float(T[0, 3]), float(T[1, 3])
    v_sensor = np.array([vx - wz * sy, vy + wz * sx])
    vr = out["radial_velocity"].astype(np.float64) + u @ v_sensor
    out["radial_velocity"] = vr.astype(out.dtype["radial_velocity"])
    return out


# -------------------------------------------------------------------------------------- assembler
HISTORY = 8  # messages kept per sensor for pairing (radar/camera at <= 20 Hz: 0.4 s and more)
HISTORY_RESET_NS = 5 * NS  # a message this much older than the newest one means time went back


def nearest(messages, stamp_ns: int, tolerance_s: float) -> Stamped | None:
    """The message whose stamp is nearest the LiDAR stamp, within the tolerance (either side; a tie
    goes to the older one), or None. By stamp only: the order in which messages arrived (callbacks of
    different topics, DDS delivery) does not change the pairing."""
    if isinstance(messages, Stamped):
        messages = (messages,)
    best = None
    for m in messages or ():
        d = abs(int(m.stamp_ns) - int(stamp_ns))
        if d <= tolerance_s * NS and (best is None or d < best[0] or (d == best[0] and m.stamp_ns < best[1].stamp_ns)):
            best = (d, m)
    return None if best is None else best[1]


def _union(a, b) -> tuple:
    seen = {id(m) for m in b}
    return tuple(m for m in a if id(m) not in seen) + tuple(b)


class FrameAssembler:
    """Pairs, looks up TF, compensates: see the module doc. One instance per stream of LiDAR frames
    (it keeps the previous pose for the twist); ``assemble`` in stamp order."""

    def __init__(self, config: PerceptionConfig, tf: TfBuffer | None = None):
        s = config.sensors
        self.config = config
        self.tf = tf if tf is not None else TfBuffer(s.tf_cache_s)
        self.limit_ns = int(s.tf_extrapolation_limit_s * NS)
        # Recent decoded messages per sensor (callers assign ``radar`` / ``image``; each assignment
        # appends). Pairing picks by stamp among them, so it does not depend on which callback ran first.
        self._history: dict[str, deque] = {"radar": deque(maxlen=HISTORY), "image": deque(maxlen=HISTORY)}
        self.camera_info = None  # io.ros_convert.CameraModel (needs .K)
        self.zone: str | None = None
        self._prev: tuple[int, np.ndarray] | None = None  # (stamp, T_odom_base) of the last frame

    @property
    def radar(self) -> Stamped | None:
        """The newest radar scan received (assigning one adds it to the history)."""
        return self._history["radar"][-1] if self._history["radar"] else None

    @radar.setter
    def radar(self, msg: Stamped | None) -> None:
        self._store("radar", msg)

    @property
    def image(self) -> Stamped | None:
        """The newest camera image received (assigning one adds it to the history)."""
        return self._history["image"][-1] if self._history["image"] else None

    @image.setter
    def image(self, msg: Stamped | None) -> None:
        self._store("image", msg)

    def _store(self, sensor: str, msg: Stamped | None) -> None:
        hist = self._history[sensor]
        if msg is None:
            hist.clear()
        elif hist and msg.stamp_ns < hist[-1].stamp_ns - HISTORY_RESET_NS:
            hist.clear()  # time went back (bag loop): the old messages belong to another time line
            hist.append(msg)
        else:
            hist.append(msg)

    def reset(self) -> None:
        """Forget the previous pose (time went back: the next frame has no twist)."""
        self._prev = None

    def snapshot(self, keep: tuple | None = None) -> tuple:
        """(radar messages, images, camera_info, zone) as they are now, for `assemble` later (bag
        decoding pairs a LiDAR frame with what had been recorded before it, then waits for TF).
        ``keep``: an earlier snapshot whose messages stay candidates (a frame that waited for TF
        longer than the history reaches back)."""
        radars, images = tuple(self._history["radar"]), tuple(self._history["image"])
        if keep is not None:
            radars, images = _union(keep[0], radars), _union(keep[1], images)
        return radars, images, self.camera_info, self.zone

    def _lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        return self.tf.lookup(target, source, stamp_ns, self.limit_ns)

    def assemble(self, stamp_ns: int, lidar, lidar_frame: str, snapshot: tuple | None = None) -> Assembled:
        """FrameInputs of the LiDAR frame at ``stamp_ns`` (cloud in ``lidar_frame``) with the paired
        radar and camera (from ``snapshot`` or the latest stored), or None and the reason."""
        from ssm_perception.pipeline import FrameInputs

        fr, s = self.config.frames, self.config.sensors
        radars, images, info, zone = snapshot if snapshot is not None else self.snapshot()
        radar = nearest(radars, stamp_ns, s.radar_tolerance_s)
        image = nearest(images, stamp_ns, s.camera_tolerance_s)
        problems: list[tuple[str, str]] = []
        try:
            T_base_lidar = self._lookup(fr.base_link, lidar_frame, stamp_ns)
            T_odom_base = self._lookup(fr.odom, fr.base_link, stamp_ns)
        except TfExtrapolationError as exc:
            return Assembled(None, [("tf_extrapolation", f"LiDAR frame at {stamp_ns / NS:.3f} s dropped: {exc}")])
        except TfError as exc:
            return Assembled(None, [("tf_missing", f"LiDAR frame at {stamp_ns / NS:.3f} s dropped: {exc}")])
        try:
            T_map_odom = self._lookup(fr.map, fr.odom, stamp_ns)
        except TfError:
            T_map_odom = None

        twist = None
        prev, self._prev = self._prev, (int(stamp_ns), T_odom_base)
        if prev is not None and 0 < stamp_ns - prev[0] <= self.config.reset.max_time_gap_s * NS:
            twist = ego_twist(invert_transform(prev[1]) @ T_odom_base, (stamp_ns - prev[0]) / NS)

        inp = FrameInputs(stamp_ns=int(stamp_ns), T_odom_base=T_odom_base, lidar=lidar, T_base_lidar=T_base_lidar,
                          T_map_odom=T_map_odom, zone=zone, ego_twist=twist, lidar_frame=lidar_frame)
        if s.use_radar and radar is not None:
            mount = self._mount_at_stamp("radar", radar, stamp_ns, T_odom_base, twist, problems)
            if mount is not None:
                T_base_radar, T_base_radar_own = mount
                pts = radar.data
                if twist is not None and getattr(getattr(pts, "dtype", None), "names", None) \
                        and "radial_velocity" in pts.dtype.names:
                    pts = radar_over_ground(pts, T_base_radar_own, twist)
                inp.radar, inp.T_base_radar, inp.radar_over_ground = pts, T_base_radar, twist is not None
        if s.use_camera and image is not None and info is not None:
            mount = self._mount_at_stamp("camera", image, stamp_ns, T_odom_base, twist, problems)
            if mount is not None:
                inp.image, inp.K, inp.T_base_camera = image.data, info.K, mount[0]
        return Assembled(inp, problems)

    def _mount_at_stamp(self, sensor: str, msg: Stamped, stamp_ns: int, T_odom_base: np.ndarray, twist,
                        problems: list) -> tuple[np.ndarray, np.ndarray] | None:
        """(base_link(LiDAR stamp) <- sensor, base_link(sensor stamp) <- sensor), or None (problem noted)."""
        base = self.config.frames.base_link
        try:
            T_own = self._lookup(base, msg.frame_id, msg.stamp_ns)
        except TfError as exc:
            problems.append((f"tf_{sensor}", f"{sensor} not used for this frame: {exc}"))
            return None
        if msg.stamp_ns == stamp_ns:
            return T_own, T_own
        try:  # base(LiDAR stamp) <- base(sensor stamp) through odom
            motion = invert_transform(T_odom_base) @ self._lookup(self.config.frames.odom, base, msg.stamp_ns)
        except TfError as exc:
            if twist is None:
                why = f"{sensor} not used for this frame: no ego motion to move it to the LiDAR stamp ({exc})"
                problems.append((f"tf_{sensor}", why))
                return None
            motion = twist_motion(twist, (msg.stamp_ns - stamp_ns) / NS)
        return motion @ T_own, T_own
