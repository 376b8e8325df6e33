"""The perception node: a thin rclpy adapter around `PerceptionPipeline`.

Callbacks only check, decode and store; a worker thread runs the pipeline, so slow model steps never
starve the TF and clock subscriptions (the rclpy tf2 pitfall in the field notes).

Input gates (callbacks): a LiDAR cloud enters the frame queue only if its stamp is neither zero, nor
more than ``sensors.max_stamp_future_s`` ahead of, nor ``sensors.max_stamp_age_s`` behind the node
clock, its frame is ``sensors.lidar_frame_id`` (when set), it has x/y/z fields that match its size, and
it comes from the topic's publisher (`input_gate.SourceLock`: a second publisher is refused while the
first is alive). Transforms pass the future-stamp gate (old ones are history) and
`input_gate.TfEdgeGate` (second publisher, implausible jumps held back until confirmed). Rejected
messages are counted per flag and never used for ages or rates.

TF waiting (as tf2's MessageFilter): a frame waits in a bounded queue (``sensors.frame_queue_size``)
until its transforms can be interpolated, at most ``sensors.tf_wait_s`` (steady clock); then it is
tried once more with the extrapolation limit and otherwise dropped with its cause (TF missing, TF
late, frame unknown). /diagnostics ("output") turns ERROR, naming the cause, when LiDAR arrives but no
frame was produced for ``diagnostics.no_output_error_s``.

Overload: ready frames are processed in stamp order while the worker keeps up. When it does not (the
recent processing time exceeds the recent interval between LiDAR arrivals, e.g. a burst, or a node
slower than its sensor) the newest ready frame wins and the older ones are skipped: counted in
``frames_dropped_busy`` (flag ``lidar_backlog``), reported as "overloaded" on /diagnostics, and handed
to the reset policy as skipped, so a skipped span is never a time gap or a sensor dropout (nor are
messages lost in transport: gaps in the driver's publication sequence numbers); the model's dt stays
the real interval between processed frames.

Bad input never stops the node: each problem is counted under a flag name, logged at most once
per `LOG_THROTTLE_S` per flag, and shown in /diagnostics (WARN while recent). SIGINT and SIGTERM stop
it cleanly: the worker finishes its frame, then the node and the context go down, in that order.
"""

from __future__ import annotations

import bisect
import math
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockChange, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from ssm_perception.config import NODE_NAME, ConfigError, PerceptionConfig
from ssm_perception.defaults import default_config_path
from ssm_perception.frame_assembler import Stamped
from ssm_perception.memory import (
    MEMPROFILE_ENV,
    MemoryProfile,
    fix_malloc_mmap_threshold,
)
from ssm_perception.msg import TrackArray
from ssm_perception.nodes import parameters
from ssm_perception.weights import CheckpointError

ZONE_TOPIC = "/vehicle/zone"
LOG_THROTTLE_S = 5.0  # per flag: a flood of bad packets gives one line per 5 s, not one per packet
FLAG_RECENT_S = 5.0  # a flag raised within this window keeps its diagnostics status at WARN
RATE_WINDOW = 20  # arrivals kept per sensor for the rate estimate
LATENCY_WINDOW = 200  # frames kept for latency percentiles

# REP-2003: maps are served reliable + transient_local (depth 1) so late joiners (RViz) get the last one.
MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# Deeper than tf2's 100: a replay at 3x sends 150 transforms a second, and while a slow frame holds the
# interpreter the executor may not take them for a while; lost transforms would drop whole frames.
TF_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(
    depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
SENSOR_QOS = qos_profile_sensor_data  # best effort, keep last 5, volatile
# The reset service keeps every request of a burst (the default depth of 10 lost 87-90 of 100
# concurrent calls: their callers waited forever); requests and responses share this QoS.
SERVICE_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
OVERLOAD_WINDOW = 5  # frames whose processing time is compared with the LiDAR arrival interval
OK, WARN, ERROR = (int.from_bytes(v, "little") for v in (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                                                          DiagnosticStatus.ERROR))


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _publisher(info) -> bytes | None:
    """The DDS identity (GID) of a message's publisher from rclpy's MessageInfo, None if unknown."""
    gid = info.get("publisher_gid") if isinstance(info, dict) else None
    if isinstance(gid, dict):
        gid = gid.get("data")
    try:
        return bytes(gid) if gid is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class _Frame:
    """A LiDAR frame that passed the input gates, waiting for its transforms or for the worker."""

    msg: PointCloud2
    points: np.ndarray
    stamp: int
    arrived: float  # time.monotonic() at arrival
    snapshot: tuple = ()  # FrameAssembler.snapshot() at arrival: the radar/camera to pair with it
    transforms: tuple | None = None  # (T_base_lidar, T_odom_base) once resolvable


class TfWaitError(Exception):
    """A frame's transforms are not (yet) available; ``cause`` is what /diagnostics names."""

    def __init__(self, cause: str, flag: str, text: str):
        super().__init__(text)
        self.cause, self.flag = cause, flag


@dataclass
class _SensorStats:
    """Arrival bookkeeping of one input topic (rate from the node clock, age of the last stamp)."""

    arrivals: deque = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))
    last_stamp_ns: int | None = None
    received: int = 0
    rejected: int = 0

    def seen(self, now_ns: int, stamp_ns: int) -> None:
        if self.arrivals and now_ns < self.arrivals[-1]:  # the clock went back (bag loop): restart
            self.arrivals.clear()
            self.last_stamp_ns = None
        self.arrivals.append(now_ns)
        # The newest stamp: one late message must not make the sensor look silent.
        self.last_stamp_ns = stamp_ns if self.last_stamp_ns is None else max(self.last_stamp_ns, stamp_ns)
        self.received += 1

    def rate_hz(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        span = (self.arrivals[-1] - self.arrivals[0]) * 1e-9
        return (len(self.arrivals) - 1) / span if span > 0 else 0.0

    def age_s(self, now_ns: int) -> float:
        return math.inf if self.last_stamp_ns is None else (now_ns - self.last_stamp_ns) * 1e-9


class PerceptionNode(Node):
    """rclpy node: sensors + TF in, occupancy grid / tracks / markers / diagnostics out.

    Parameters are the dotted fields of `PerceptionConfig` (``grid.resolution``, ...); pass them
    with ``--params-file config/ssm_perception.yaml`` or ``parameter_overrides``. An invalid
    configuration raises `ConfigError` (one line naming the field) from the constructor.
    """

    def __init__(self, *, defer_setup: bool = False, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # One descriptor per parameter from the schema (nodes/parameters.py); runtime changes are
        # validated by the schema and applied to the live configuration.
        self.config = parameters.declare(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if not defer_setup:  # the managed node (nodes/lifecycle_node.py) sets up on `configure`
            self.setup()

    def setup(self) -> None:
        """Pipeline, publishers, subscriptions, ~/reset, timers and the worker thread."""
        cfg = self.config

        from ssm_perception.frame_assembler import FrameAssembler
        from ssm_perception.input_gate import SourceLock, TfEdgeGate
        from ssm_perception.pipeline import PerceptionPipeline
        from ssm_perception.tf_buffer import TfBuffer

        self.pipeline = PerceptionPipeline(cfg)
        if self.pipeline.device.type == "cuda":
            # Triton compiles, cuBLAS/cuDNN handles and the allocator pool now, before the sensor
            # subscriptions: else the first frame takes seconds and ten scans a second are skipped.
            from ssm_perception.warmup import warm_up

            w = warm_up(cfg, self.pipeline.model)
            self.get_logger().info(f"warm-up on {self.pipeline.device}: {w['frames']} simulated frames through a "
                                   f"scratch pipeline in {w['seconds']:.1f} s")
        self.tf = TfBuffer(cfg.sensors.tf_cache_s)
        # Pairing, TF lookups, ego twist and motion compensation: the same assembler evaluate,
        # the simulator, the trainer and the bench use. Its message slots are guarded by _lock.
        self.assembler = FrameAssembler(cfg, self.tf)
        self._tf_limit_ns = int(cfg.sensors.tf_extrapolation_limit_s * 1e9)
        s = cfg.sensors
        self.tf_gate = TfEdgeGate(cfg.reset.max_speed_mps, cfg.reset.pose_jump_m, cfg.reset.pose_jump_yaw_rad,
                                  s.tf_jump_confirm, s.publisher_handover_s)
        self.sources = {n: SourceLock(s.publisher_handover_s) for n in ("lidar", "radar", "camera_image", "camera_info")}

        self._lock = threading.Lock()  # guards the inputs below (queue, slots, TF buffer and gate)
        self._stats_lock = threading.Lock()  # latency windows: written by the worker, read by diagnostics
        self._wake = threading.Condition(self._lock)
        self._queue: list[_Frame] = []  # frames waiting for TF or for the worker, in stamp order
        self._skipped: list[int] = []  # stamps skipped while busy since the last processed frame (worker)
        self._reset_requests = 0  # ~/reset calls not yet applied (under _lock)
        self._proc_s: deque = deque(maxlen=OVERLOAD_WINDOW)  # wall seconds per processed frame
        self._arrival_wall: deque = deque(maxlen=OVERLOAD_WINDOW + 1)  # monotonic arrival of accepted frames
        self._busy_at: deque = deque(maxlen=1000)  # monotonic times frames were skipped while busy
        self._lidar_msg_wall: float | None = None  # monotonic time of the last LiDAR message (any)
        self._no_output_since: float | None = None  # first LiDAR message after the last produced frame
        self._last_output_wall: float | None = None
        self._last_drop: tuple[str, str] | None = None  # (cause, text) of the last frame lost before the worker
        self._last_lidar_ns: int | None = None
        self._clock_jumped_back = False
        self._new_epoch = False  # time went back: the assembler forgets the previous pose (worker)
        self._stop = False

        self.stats = {name: _SensorStats() for name in ("lidar", "radar", "camera_image", "camera_info", "tf")}
        self.flags: Counter[str] = Counter()  # flag name -> times raised
        self._last_flag_text = ""
        self._flag_last: dict[str, float] = {}  # flag name -> steady time last raised
        self._flag_logged: dict[str, float] = {}
        self._flag_text: dict[str, str] = {}
        self.resets: Counter[str] = Counter()  # reason -> count
        self.last_reset: tuple[str, int] | None = None
        self.frames_processed = 0
        self.frames_dropped_busy = 0
        self.frames_dropped_tf = 0
        self.frames_lost_transport = 0
        self._lidar_seq: tuple | None = None  # (publisher, sequence number, stamp) of the last accepted frame
        self.stage_ms: dict[str, deque] = {}
        self.pipeline_latency_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self.last_health = None  # temporal.health.HealthReport of the last frame
        self.sensor_checks: dict = {}  # LiDAR input checks of the last frame (bev/lidar_input.py)
        self.last_evidence = None  # evidence.EvidenceReport of the last frame
        self.last_track_support = None  # tracking.support.TrackSupportReport of the last frame
        self.last_shift = None  # temporal.shift.ShiftReport of the last frame
        self._shift_detected_at: float | None = None  # steady time of the last detected shift
        self._shift_detected_msg = ""
        self.partial_resets = 0

        t = cfg.topics
        self.pub_grid = self.create_publisher(OccupancyGrid, t.occupancy_grid, MAP_QOS)
        self.pub_observation = self.create_publisher(OccupancyGrid, t.observation, MAP_QOS)
        self.pub_tracks = self.create_publisher(TrackArray, t.tracks, OUTPUT_QOS)
        self.pub_markers = self.create_publisher(MarkerArray, t.markers, OUTPUT_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, t.diagnostics, OUTPUT_QOS)

        subs = [(s.use_lidar, PointCloud2, t.lidar, self._on_lidar, SENSOR_QOS),
                (s.use_radar, PointCloud2, t.radar, self._on_radar, SENSOR_QOS),
                (s.use_camera, Image, t.camera_image, self._on_image, SENSOR_QOS),
                (s.use_camera, CameraInfo, t.camera_info, self._on_camera_info, SENSOR_QOS),
                (True, TFMessage, "/tf", lambda m, i: self._on_tf(m, i, static=False), TF_QOS),
                (True, TFMessage, "/tf_static", lambda m, i: self._on_tf(m, i, static=True), TF_STATIC_QOS),
                (True, String, ZONE_TOPIC, self._on_zone, OUTPUT_QOS)]
        for used, msg_type, topic, callback, qos in subs:
            if used:
                self.create_subscription(msg_type, topic, self._guarded(topic, callback), qos)
        self.create_service(Trigger, "~/reset", self._on_reset_service, qos_profile=SERVICE_QOS)

        # A backward jump of the node clock (bag loop, simulator restart) invalidates every cached
        # transform; the pipeline sees the backward stamps and resets its state itself.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_time_jump,
        )
        # Diagnostics on the steady clock: they keep coming while a replay is paused or over.
        self._diag_timer = self.create_timer(
            cfg.diagnostics.period_s, self.publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: grid {cfg.grid.nx}x{cfg.grid.ny} @ {cfg.grid.resolution} m, model {self.pipeline.model_info['kind']}"
            f"/{cfg.model.backend} on {cfg.model.device}; lidar {t.lidar} -> {t.occupancy_grid}, {t.tracks}, "
            f"{t.markers}, {t.diagnostics}"
        )

    # ------------------------------------------------------------------ bookkeeping
    def _guarded(self, topic: str, callback):
        """An exception escaping a callback would stop rclpy.spin: turn it into a flag instead. The
        wrapper takes rclpy's MessageInfo (publisher identity) and passes it on where wanted."""
        import inspect

        with_info = len(inspect.signature(callback).parameters) >= 2

        def run(msg, info) -> None:
            try:
                callback(msg, info) if with_info else callback(msg)
            except Exception as exc:  # noqa: BLE001 - whatever a message does, the node keeps running
                self.flag("callback_error", f"message on {topic} dropped: {type(exc).__name__}: {exc}")
        return run

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def flag(self, name: str, text: str) -> str:
        """Count a problem, log it (throttled per flag name) and keep it for /diagnostics; returns ``text``."""
        now = time.monotonic()
        self._last_flag_text = text
        self.flags[name] += 1
        self._flag_last[name] = now
        self._flag_text[name] = text
        if now - self._flag_logged.get(name, -math.inf) >= LOG_THROTTLE_S:
            self._flag_logged[name] = now
            n = self.flags[name]
            self.get_logger().warning(f"[{name}] {text} (seen {n}x; throttled to one line per {LOG_THROTTLE_S:g} s)")
        return text

    def _check_stamp(self, sensor: str, stamp_ns: int, check_age: bool = True) -> bool:
        """Reject zero stamps and stamps too far in the future or (``check_age``) the past of the node clock."""
        if stamp_ns <= 0:
            self.flag(f"{sensor}_stamp_zero", f"{sensor}: message with a zero stamp dropped")
            return False
        now = self._now_ns()
        if now <= 0:  # sim time without /clock yet: nothing to compare with
            return True
        ahead = (stamp_ns - now) * 1e-9
        s = self.config.sensors
        if ahead > s.max_stamp_future_s:
            self.flag(f"{sensor}_stamp_future", f"{sensor}: stamp {ahead:.2f} s ahead of the node clock (limit "
                      f"{s.max_stamp_future_s:g} s; use_sim_time mismatch?); dropped")
            return False
        if check_age and -ahead > s.max_stamp_age_s:
            self.flag(f"{sensor}_stamp_old", f"{sensor}: stamp {-ahead:.2f} s behind the node clock (limit "
                      f"{s.max_stamp_age_s:g} s); dropped")
            return False
        return True

    def _check_source(self, sensor: str, info) -> bool:
        """Refuse a second publisher on a sensor topic while the first one is alive (input_gate.SourceLock)."""
        if self.sources[sensor].check(_publisher(info), time.monotonic()):
            return True
        self.flag(f"{sensor}_second_publisher", f"{sensor}: message from a second publisher while the first one "
                  f"is alive (handover after {self.config.sensors.publisher_handover_s:g} s of silence); dropped")
        return False

    def _on_set_parameters(self, params) -> SetParametersResult:
        # Parameters that need a restart are read-only (rclpy refuses them); the others go through
        # the schema like the parameter file and then into the live configuration.
        result, cfg = parameters.validate_change(self, params)
        if cfg is not None:
            names = [p.name for p in params if parameters.is_runtime(p.name)]
            for live in {id(c): c for c in (self.config, getattr(getattr(self, "pipeline", None), "config", None)) if c}.values():
                parameters.apply_live(live, cfg, names)
        return result

    # ------------------------------------------------------------------ callbacks (cheap)
    def _on_lidar(self, msg: PointCloud2, info=None) -> None:
        from ssm_perception.io.ros_convert import pointcloud_to_array

        self._lidar_msg_wall = now_wall = time.monotonic()
        if self._no_output_since is None:
            self._no_output_since = now_wall
        stamp = _ns(msg.header.stamp)
        st = self.stats["lidar"]
        want = self.config.sensors.lidar_frame_id
        if not self._check_source("lidar", info) or not self._check_stamp("lidar", stamp):
            st.rejected += 1
            self._lost("LiDAR rejected by the input gates", self._last_flag_text)
            return
        if want and msg.header.frame_id.lstrip("/") != want.lstrip("/"):
            st.rejected += 1
            self._lost("LiDAR rejected by the input gates", self.flag("lidar_wrong_frame", f"LiDAR cloud in frame {msg.header.frame_id!r}, "
                                             f"expected {want!r} (sensors.lidar_frame_id); dropped"))
            return
        try:
            points = pointcloud_to_array(msg)
            missing = {"x", "y", "z"} - set(points.dtype.names or ())
            if missing:
                raise ValueError(f"no field(s) {', '.join(sorted(missing))}")
        except ValueError as exc:
            st.rejected += 1
            self._lost("LiDAR rejected by the input gates", self.flag("lidar_malformed", f"LiDAR cloud on {self.config.topics.lidar} "
                                             f"dropped: {exc}"))
            return
        with self._wake:
            if not self._admit(stamp):
                st.rejected += 1
                return
            st.seen(self._now_ns(), stamp)
            self._arrival_wall.append(now_wall)
            self._note_transport_loss(info, stamp)
            frame = _Frame(msg, points, stamp, now_wall, self.assembler.snapshot())
            self._queue.insert(bisect.bisect([f.stamp for f in self._queue], stamp), frame)
            if len(self._queue) > self.config.sensors.frame_queue_size:
                # The sensor delivered it and the worker did not get to it: skipped while busy.
                self._skip_busy(self._queue.pop(0), f"the frame queue ({self.config.sensors.frame_queue_size}) is full")
            self._wake.notify()

    def _admit(self, stamp: int) -> bool:
        """Duplicate / out-of-order checks against the frames processed and queued (under the lock).
        A late frame is dropped; time itself going back (the node clock jumped back, or by more than
        any plausible delay: a bag loop, a simulator restart) starts a new epoch: the queue is flushed
        and the pipeline resets with 'time_backwards'."""
        last = self._last_lidar_ns
        if stamp == last or any(f.stamp == stamp for f in self._queue):
            self.flag("lidar_duplicate", f"LiDAR frame at {stamp * 1e-9:.3f} s received twice; second dropped")
            return False
        if last is not None and stamp < last:
            jumped, self._clock_jumped_back = self._clock_jumped_back, False
            if not jumped and (last - stamp) * 1e-9 <= self.config.reset.max_time_gap_s:
                self.flag("lidar_out_of_order", f"LiDAR frame at {stamp * 1e-9:.3f} s is older than the last "
                          f"processed one ({(last - stamp) * 1e-6:.0f} ms earlier); dropped")
                return False
            self._queue.clear()
            self._skipped.clear()
            self._new_epoch = True
        return True

    def _note_transport_loss(self, info, stamp: int) -> None:
        """A gap in the driver's publication sequence numbers: best-effort transport dropped LiDAR
        messages (typically while this process was too busy to take them). The sensor did send them,
        so their span is no dropout or time gap: estimated stamps join the skipped frames (under the lock)."""
        seq = info.get("publication_sequence_number") if isinstance(info, dict) else None
        pub, prev = _publisher(info), self._lidar_seq
        self._lidar_seq = (pub, int(seq), stamp) if seq is not None else None
        if seq is None or prev is None or prev[0] != pub or not prev[1] + 1 < seq or stamp <= prev[2]:
            return
        missing = int(seq) - prev[1] - 1
        self._skipped.extend(prev[2] + (stamp - prev[2]) * (k + 1) // (missing + 1) for k in range(missing))
        self.frames_lost_transport += missing
        self.flag("lidar_lost_in_transport", f"{missing} LiDAR message(s) before {stamp * 1e-9:.3f} s lost in "
                  "transport (publication sequence gap; best effort, node busy?)")

    def _lost(self, cause: str, text: str | None) -> None:
        self._last_drop = (cause, text or "")

    def _drop_busy_or_tf(self, frame: _Frame, why: str) -> None:
        """A frame leaves the queue unprocessed: skipped while busy if its transforms were there
        (the sensor did deliver it), else lost to TF (under the lock)."""
        try:
            self._transforms(frame, self._tf_limit_ns)
        except TfWaitError as exc:
            self.frames_dropped_tf += 1
            self._lost(exc.cause, self.flag(exc.flag, f"LiDAR frame at {frame.stamp * 1e-9:.3f} s dropped ({why}): "
                                                      f"{exc}"))
            return
        self._skip_busy(frame, why)

    def _skip_busy(self, frame: _Frame, why: str) -> None:
        self.frames_dropped_busy += 1
        self._skipped.append(frame.stamp)
        self._busy_at.append(time.monotonic())
        self.flag("lidar_backlog", f"LiDAR frame at {frame.stamp * 1e-9:.3f} s skipped unprocessed: {why}")

    def _gated(self, source: str, msg, info, decode, what: str, stamp_sensor: str | None):
        """The input gates of radar, image and camera_info: one publisher per topic, a plausible stamp
        (``stamp_sensor``'s limits; None: not checked), a message that decodes. A rejection is counted
        and flagged ("<source>_malformed" when it does not decode). Returns (decoded, stamp) or None."""
        stamp = _ns(msg.header.stamp)
        st = self.stats[source]
        if not self._check_source(source, info) or (stamp_sensor and not self._check_stamp(stamp_sensor, stamp)):
            st.rejected += 1
            return None
        try:
            value = decode(msg)
        except ValueError as exc:
            st.rejected += 1
            self.flag(f"{source}_malformed", f"{what} on {getattr(self.config.topics, source)} dropped: {exc}")
            return None
        st.seen(self._now_ns(), stamp)
        return value, stamp

    def _on_radar(self, msg: PointCloud2, info=None) -> None:
        from ssm_perception.io.ros_convert import pointcloud_to_array

        got = self._gated("radar", msg, info, pointcloud_to_array, "radar cloud", "radar")
        if got is not None:
            with self._lock:
                self.assembler.radar = Stamped(got[0], msg.header.frame_id, got[1])

    def _on_image(self, msg: Image, info=None) -> None:
        from ssm_perception.io.ros_convert import image_to_array

        got = self._gated("camera_image", msg, info, image_to_array, "image", "camera")
        if got is not None:
            with self._lock:
                self.assembler.image = Stamped(got[0], msg.header.frame_id, got[1])

    def _on_camera_info(self, msg: CameraInfo, info=None) -> None:
        from ssm_perception.io.ros_convert import camera_info_to_model

        got = self._gated("camera_info", msg, info, camera_info_to_model, "camera_info", None)
        if got is not None:
            with self._lock:
                self.assembler.camera_info = got[0]

    def _on_tf(self, msg: TFMessage, info, static: bool) -> None:
        publisher, now_wall = _publisher(info), time.monotonic()
        topic = "/tf_static" if static else "/tf"
        stored = False
        for t in msg.transforms:
            stamp = _ns(t.header.stamp)
            # Old transforms are history (interpolation needs them; the cache bounds them), so only
            # zero and future stamps are refused here.
            if not static and not self._check_stamp("tf", stamp, check_age=False):
                self.stats["tf"].rejected += 1
                continue
            tr, rot = t.transform.translation, t.transform.rotation
            try:
                with self._lock:
                    child = t.child_frame_id.lstrip("/")
                    current = None
                    if static and self.tf.parent_of(child) is not None:
                        e = self.tf._edges[child]
                        current = (e.trans[0], e.quats[0]) if e.static else None
                    verdict = self.tf_gate.check(t.header.frame_id, child, stamp, (tr.x, tr.y, tr.z),
                                                 (rot.x, rot.y, rot.z, rot.w), publisher, now_wall, static, current)
                    for s_ns, tv, qv in verdict.accept:
                        if not self.tf.set_translation_quat(tv, qv, t.header.frame_id, t.child_frame_id, s_ns, static):
                            # Older than the whole cache: time was reset (bag loop) before the clock said so.
                            self.tf.clear()
                            self.tf.set_translation_quat(tv, qv, t.header.frame_id, t.child_frame_id, s_ns, static)
                        stored = True
            except ValueError as exc:  # TfDataError: NaN, zero quaternion, second parent, empty frame
                self.stats["tf"].rejected += 1
                self.flag("tf_malformed", f"{topic} transform dropped: {exc}")
                continue
            if verdict.flag is not None:
                self.flag(verdict.flag, verdict.text)
            if not verdict.accept:
                self.stats["tf"].rejected += 1
                continue
            self.stats["tf"].seen(self._now_ns(), stamp)
        if stored:
            with self._wake:  # frames waiting for these transforms
                self._wake.notify()

    def _on_zone(self, msg: String) -> None:
        # The reset policy sees the zone with every frame and resets when it changes.
        if msg.data != self.assembler.zone:
            self.get_logger().info(f"zone {self.assembler.zone!r} -> {msg.data!r}")
        with self._lock:
            self.assembler.zone = msg.data

    def _on_reset_service(self, request, response):
        # Applied by the worker at the next frame; requests arriving together become one reset.
        with self._lock:
            self._reset_requests += 1
        response.success = True
        response.message = "reset requested: applied at the next LiDAR frame"
        self.get_logger().info("reset requested through ~/reset")
        return response

    def _on_time_jump(self, jump) -> None:
        if jump.clock_change == ClockChange.ROS_TIME_NO_CHANGE and jump.delta.nanoseconds < 0:
            with self._wake:
                self._clock_jumped_back = True
                self.tf.clear()
                self.tf_gate.clear()
                self._queue.clear()  # frames of the old time line
            self.get_logger().warning(
                f"node clock jumped by {jump.delta.nanoseconds * 1e-9:.3f} s: TF buffer and frame queue cleared"
            )

    # ------------------------------------------------------------------ the frame step (worker thread)
    def _transforms(self, frame: _Frame, limit_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(T_base_lidar, T_odom_base) at the frame's stamp, or TfWaitError naming the cause (under the lock)."""
        from ssm_perception.tf_buffer import TfExtrapolationError, TfLookupError

        frames = self.config.frames
        src = frame.msg.header.frame_id
        try:
            T_odom_base = self.tf.lookup(frames.odom, frames.base_link, frame.stamp, limit_ns)
        except TfExtrapolationError as exc:
            raise TfWaitError("TF late", "tf_extrapolation", f"{frames.odom} -> {frames.base_link}: {exc}") from None
        except (TfLookupError, ValueError) as exc:
            raise TfWaitError("TF missing", "tf_missing", f"{frames.odom} -> {frames.base_link}: {exc}") from None
        try:
            T_base_lidar = self.tf.lookup(frames.base_link, src, frame.stamp, limit_ns)
        except TfExtrapolationError as exc:
            raise TfWaitError("TF late", "tf_extrapolation", f"{frames.base_link} -> {src}: {exc}") from None
        except (TfLookupError, ValueError) as exc:
            known = src.lstrip("/") in self.tf.frames()
            raise TfWaitError("TF missing" if known else "frame unknown", "tf_missing" if known else "tf_frame_unknown",
                              f"{frames.base_link} -> {src!r}: {exc}") from None
        return T_base_lidar, T_odom_base

    def overloaded(self) -> bool:
        """True while the recent processing time per frame exceeds the recent LiDAR arrival interval
        (medians: the first frame's lazy initialisation alone does not count as overload)."""
        if len(self._proc_s) < 3 or len(self._arrival_wall) < 3:
            return False
        return float(np.median(self._proc_s)) > float(np.median(np.diff(self._arrival_wall)))

    def _select(self) -> _Frame | None:
        """The next frame to process, or None (under the lock). Drops expired and superseded frames."""
        now = time.monotonic()
        wait_s = self.config.sensors.tf_wait_s
        ready: list[_Frame] = []
        for f in list(self._queue):
            try:
                f.transforms = self._transforms(f, 0)  # interpolated, as tf2's MessageFilter waits for
            except TfWaitError:
                if now - f.arrived < wait_s:
                    continue  # keep waiting
                try:  # waited long enough: what the extrapolation limit allows, else drop
                    f.transforms = self._transforms(f, self._tf_limit_ns)
                except TfWaitError as exc2:
                    self._queue.remove(f)
                    self.frames_dropped_tf += 1
                    self._lost(exc2.cause, self.flag(exc2.flag, f"LiDAR frame at {f.stamp * 1e-9:.3f} s dropped after "
                                                    f"waiting {now - f.arrived:.2f} s for TF: {exc2}"))
                    continue
            ready.append(f)
        if not ready:
            return None
        pick = ready[-1] if len(ready) > 1 and self.overloaded() else ready[0]
        for f in [f for f in self._queue if f.stamp < pick.stamp]:  # older than the pick: never processed
            self._queue.remove(f)
            if f in ready:
                self._skip_busy(f, "newer frames were ready while the worker was busy (overloaded: newest kept)")
            else:
                self._drop_busy_or_tf(f, "a newer frame was ready first")
        self._queue.remove(pick)
        return pick

    def _next_deadline(self) -> float | None:
        """Seconds until the oldest waiting frame's TF wait runs out (None: queue empty)."""
        if not self._queue:
            return None
        first = min(f.arrived for f in self._queue)
        return max(0.01, first + self.config.sensors.tf_wait_s - time.monotonic() + 0.001)

    def _work(self) -> None:
        while True:
            with self._wake:
                frame = None
                while not self._stop:
                    frame = self._select()
                    if frame is not None:
                        break
                    self._wake.wait(self._next_deadline())
                if self._stop:
                    return
                # Skipped stamps up to this frame go with it; later ones (transport losses noted
                # before the newer frames are taken) wait for the next frame.
                skipped = tuple(x for x in self._skipped if x < frame.stamp)
                self._skipped = [x for x in self._skipped if x > frame.stamp]
                requests, self._reset_requests = self._reset_requests, 0
            t0 = time.monotonic()
            try:
                if requests:
                    self.pipeline.request_reset(f"~/reset service call{'s' if requests > 1 else ''} ({requests})")
                self.process_lidar(frame, skipped)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything a frame can throw
                self.flag("frame_error", f"frame at {frame.stamp * 1e-9:.3f} s failed: {type(exc).__name__}: {exc}")
            finally:
                if self.frames_processed > 1:  # the first frame includes lazy initialisation
                    self._proc_s.append(time.monotonic() - t0)

    def process_lidar(self, frame: _Frame, skipped: tuple[int, ...] = ()) -> None:
        with self._lock:  # TF and the latest radar/camera are written by the callbacks
            if self._new_epoch:
                self._new_epoch = False
                self.assembler.reset()  # no twist across a backward jump of time
            # Radar/camera as stored now (after the TF wait: every message published before this scan
            # has been handled, whichever callback ran first) plus those kept at its arrival; the
            # assembler pairs by stamp, so lockstep replays pair exactly as `evaluate` does.
            snapshot = self.assembler.snapshot(keep=frame.snapshot)
            assembled = self.assembler.assemble(frame.stamp, frame.points, frame.msg.header.frame_id, snapshot)
        for flag, text in assembled.problems:
            self.flag(flag, text)
        if assembled.inputs is None:  # its TF vanished since it was found ready (clock jump)
            self.frames_dropped_tf += 1
            return
        stamp = frame.stamp
        self._last_lidar_ns = stamp
        assembled.inputs.skipped_lidar_ns = skipped
        out = self.pipeline.process(assembled.inputs, track=False)  # tracking runs after the grid is out
        self._publish(out, stamp)

    def _publish(self, out, stamp: int) -> None:
        """The grids as soon as they are ready, then the frame's tracking step, then the tracks."""
        from ssm_perception.io import ros_convert as rc

        grid, observation = rc.grid_messages(out, self.config)
        self.pub_observation.publish(observation)  # first: a lockstep replay waits on the occupancy grid
        self.pub_grid.publish(grid)
        # Pipeline latency as production stacks define it: publication time minus sensor stamp, on the
        # node clock (sim time in replays), so it includes transport and queueing, not only compute.
        # Measured at the grid, which tracking no longer delays.
        latency_ms = (self._now_ns() - stamp) * 1e-6
        self.pipeline.track(out)
        tracks, markers = rc.track_messages(out, self.config)
        self.pub_tracks.publish(tracks)
        self.pub_markers.publish(markers)
        self._last_output_wall, self._no_output_since = time.monotonic(), None
        with self._stats_lock:
            self.pipeline_latency_ms.append(latency_ms)
            for stage, ms in out.latency_ms.items():
                self.stage_ms.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(float(ms))
        self.frames_processed += 1
        self.last_health = out.health
        self.sensor_checks = out.sensor_checks
        self.last_evidence = out.evidence_report
        self.last_track_support = out.track_support
        self.last_shift = out.shift
        if out.shift is not None and out.shift.detected:
            self._shift_detected_at, self._shift_detected_msg = time.monotonic(), out.shift.message
            self.get_logger().warning(f"{out.shift.message} at {stamp * 1e-9:.3f} s")
        decision = out.reset
        if decision.full:
            self.resets.update(decision.reasons)
            self.last_reset = (",".join(decision.reasons), stamp)
            self.get_logger().info(f"state reset at {stamp * 1e-9:.3f} s: " + "; ".join(
                f"{r} ({d})" for r, d in zip(decision.reasons, decision.details, strict=False)))
            self.publish_diagnostics()  # make the reset visible within the frame, not a period later
        elif decision.cell_mask is not None:
            self.partial_resets += 1  # stale cells: routine (grid edges), counted apart from full resets

    # ------------------------------------------------------------------ diagnostics
    def _track_rule_values(self) -> dict:
        """The track rule of the last frame (tracking/support.py): tracks published and withheld."""
        t = self.last_track_support
        if t is None:
            return {}
        return {"track_rule_checked": t.checked, "tracks_published": t.published,
                "tracks_withheld_no_returns": len(t.withheld_unsupported),
                "tracks_withheld_static_on_returns": len(t.withheld_static),
                "tracks_withheld_on_structure": len(t.withheld_shape)}

    def publish_diagnostics(self) -> None:
        with self._stats_lock:  # the timer (executor) and the worker (after a reset) both publish
            msg = self.diagnostics()
        self.pub_diag.publish(msg)

    def diagnostics(self) -> DiagnosticArray:
        """One DiagnosticArray: state health and resets, each input's rate and age, latency, input flags."""
        from ssm_perception.io.ros_convert import diagnostic_array, diagnostic_status

        cfg = self.config
        now = self._now_ns()
        statuses = []

        def status(name: str, level: int, message: str, values: dict) -> None:
            statuses.append(diagnostic_status(f"{NODE_NAME}: {name}", level, message, values,
                                              cfg.diagnostics.hardware_id))

        # state health (temporal.health) + resets with reasons
        h = self.last_health
        if h is None:
            level, msg, health = OK, "no frame processed yet", {}
        else:
            level, msg = int(h.level), "; ".join(h.messages) or "state healthy"
            health = {"nonfinite": h.nonfinite, "norm_mean": h.norm_mean, "norm_max": h.norm_max,
                      "norm_ratio": h.norm_ratio, "never_observed_fraction": h.never_observed_fraction,
                      "stale_cells": h.stale_cells}
        status("state", level, msg, {
            "model": f"{self.pipeline.model_info.get('kind')} ({self.pipeline.model_info.get('source')})",
            "frames_processed": self.frames_processed, "frames_dropped_busy": self.frames_dropped_busy,
            "resets_total": sum(self.resets.values()),
            **{f"resets.{r}": n for r, n in sorted(self.resets.items())},
            "partial_resets": self.partial_resets,
            "last_reset_reason": self.last_reset[0] if self.last_reset else "",
            "last_reset_stamp": self.last_reset[1] * 1e-9 if self.last_reset else "",
            **{f"health.{k}": v for k, v in health.items()},
        })

        # rule check: the network against the current scan's direct evidence (out-of-distribution signal)
        e = self.last_evidence
        if e is None:
            status("evidence", OK, "no frame processed yet", {})
        else:
            status("evidence", e.level, e.message, {
                "disagreement": e.disagreement if e.disagreement is not None else "",
                "disagreement_mean": e.disagreement_mean if e.disagreement_mean is not None else "",
                "evidence_cells": e.evidence_cells, "network_free_on_evidence": e.network_free,
                "see_through_cells": e.free_cells, "see_through_called_occupied": e.contradictions,
                "warn": cfg.evidence.disagreement_warn, "error": cfg.evidence.disagreement_error,
                "floor_applied": cfg.evidence.enabled,
                **self._track_rule_values(),
            })

        # input distribution shift (severe weather, changed sensor): WARN while a detection is recent
        sh = self.last_shift
        recent_shift = self._shift_detected_at is not None and time.monotonic() - self._shift_detected_at < FLAG_RECENT_S
        values = {"shifts_detected": sh.shifts if sh else 0, "last_shift": self._shift_detected_msg,
                  "reset_on_shift": cfg.distribution_shift.reset}
        if sh is not None and sh.stats is not None:
            values.update({"returns": sh.stats.returns, "near_clutter_share": sh.stats.near_share,
                           "median_log_intensity": sh.stats.intensity if sh.stats.intensity is not None else ""})
            values.update({f"reference.{k}": v for k, v in sh.reference.items() if v is not None})
        status("input distribution", WARN if recent_shift else OK,
               self._shift_detected_msg if recent_shift else (sh.message if sh else "no frame processed yet"), values)

        # output: frames produced, skipped while busy (overloaded), lost to TF; ERROR naming the cause
        # when LiDAR arrives but nothing comes out
        t_wall = time.monotonic()
        s = cfg.sensors
        with self._lock:
            waiting = len(self._queue)
            blocker = None
            if self._queue:
                try:
                    self._transforms(self._queue[0], 0)
                except TfWaitError as exc:
                    blocker = (f"waiting for TF ({exc.cause})", str(exc))
            busy_recent = sum(1 for x in self._busy_at if t_wall - x < FLAG_RECENT_S)
            proc_ms = float(np.median(self._proc_s)) * 1e3 if self._proc_s else 0.0
            period_ms = float(np.median(np.diff(self._arrival_wall))) * 1e3 if len(self._arrival_wall) > 2 else 0.0
        overloaded = self.overloaded() or busy_recent > 0
        values = {"frames_processed": self.frames_processed, "frames_dropped_busy": self.frames_dropped_busy,
                  "frames_dropped_tf": self.frames_dropped_tf, "frames_lost_transport": self.frames_lost_transport,
                  "frames_waiting": waiting,
                  "skipped_recent": busy_recent, "processing_ms.median": proc_ms, "lidar_interval_ms.median": period_ms,
                  "overloaded": overloaded,
                  "since_last_frame_s": (t_wall - self._last_output_wall) if self._last_output_wall else ""}
        level, msg = OK, "no LiDAR yet" if self._lidar_msg_wall is None else "producing frames"
        lidar_live = self._lidar_msg_wall is not None and t_wall - self._lidar_msg_wall < cfg.diagnostics.no_output_error_s
        since = self._no_output_since
        if lidar_live and since is not None and t_wall - since > cfg.diagnostics.no_output_error_s:
            cause, text = blocker or self._last_drop or ("unknown", "no frame reached the worker")
            level = ERROR
            msg = f"LiDAR arrives but no frame produced for {t_wall - since:.1f} s: {cause}: {text}"
            values["cause"] = cause
        elif overloaded:
            level = WARN
            msg = (f"overloaded: {busy_recent} frame(s) skipped in the last {FLAG_RECENT_S:g} s (processing "
                   f"{proc_ms:.0f} ms per frame, LiDAR every {period_ms:.0f} ms); newest frame kept")
        values["tf_wait_s"] = s.tf_wait_s
        status("output", level, msg, values)

        # inputs: rate (node clock) and age of the newest stamp
        used = {"lidar": cfg.sensors.use_lidar, "radar": cfg.sensors.use_radar,
                "camera_image": cfg.sensors.use_camera, "camera_info": cfg.sensors.use_camera, "tf": True}
        for name, st in self.stats.items():
            if not used[name]:
                continue
            age = st.age_s(now)
            level, msg = OK, "ok"
            if st.received == 0:
                level, msg = (ERROR if name == "lidar" else WARN), "no data"
            elif age > cfg.reset.sensor_dropout_s:
                level, msg = (ERROR if name == "lidar" else WARN), f"silent for {age:.1f} s"
            status(f"sensor {name}", level, msg, {
                "rate_hz": st.rate_hz(), "age_s": age, "received": st.received, "rejected": st.rejected,
            })

        # latency: per stage (compute) and sensor stamp -> publication (what downstream sees)
        lat = {}
        for stage, xs in sorted(self.stage_ms.items()):
            lat[f"{stage}_ms.last"] = xs[-1]
            lat[f"{stage}_ms.p50"] = float(np.percentile(xs, 50))
            lat[f"{stage}_ms.p99"] = float(np.percentile(xs, 99))
        level, msg = OK, "no frame yet"
        if self.pipeline_latency_ms:
            xs = self.pipeline_latency_ms
            p50 = float(np.percentile(xs, 50))
            lat.update({"pipeline_latency_ms.last": xs[-1], "pipeline_latency_ms.p50": p50,
                        "pipeline_latency_ms.p99": float(np.percentile(xs, 99))})
            msg = f"pipeline latency p50 {p50:.1f} ms"
            if p50 > cfg.diagnostics.latency_error_ms:
                level = ERROR
            elif p50 > cfg.diagnostics.latency_warn_ms:
                level = WARN
        status("latency", level, msg, lat)

        # LiDAR input checks: intensity scale, fields, ego footprint, mounting and heading vs TF
        checks = self.sensor_checks
        warn = [m for lv, m in checks.values() if lv > OK]
        status("lidar input", max([lv for lv, _ in checks.values()], default=OK),
               "; ".join(warn) or ("checks passed" if checks else "no LiDAR frame yet"),
               {k: m for k, (_, m) in sorted(checks.items())})

        # input problems: WARN while any flag was raised recently
        t = time.monotonic()
        recent = sorted(k for k, last in self._flag_last.items() if t - last < FLAG_RECENT_S)
        msg = ("recent input problems: " + ", ".join(recent)) if recent else "no recent input problems"
        status("input", WARN if recent else OK, msg, {
            **{f"flags.{k}": n for k, n in sorted(self.flags.items())},
            **{f"last.{k}": self._flag_text[k] for k in recent},
        })
        return diagnostic_array(statuses, now)

    def summary(self) -> str:
        received = ", ".join(f"{k} {v.received} (rejected {v.rejected})" for k, v in self.stats.items())
        resets = ", ".join(f"{k} {n}" for k, n in sorted(self.resets.items())) or "none"
        return (f"{self.frames_processed} frames processed, {self.frames_dropped_busy} dropped while busy; "
                f"received: {received}; resets: {resets}")

    def destroy_node(self) -> None:
        if hasattr(self, "_worker"):  # construction may have failed before the worker existed
            with self._wake:
                self._stop = True
                self._wake.notify()
            self._worker.join(timeout=30.0)  # the frame in progress is finished and published first
        super().destroy_node()


def _params_files(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--params-file"]


def validate_params_file(path: str | Path) -> None:
    """Check this node's sections of a ROS 2 parameter file (``ssm_perception``, ``/ns/ssm_perception``
    or ``/**``); other nodes' sections are theirs. Raises `ConfigError` naming the field."""
    import yaml

    from ssm_perception.config import flatten

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read parameter file: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a ROS 2 parameter file (top level is not a mapping)")
    params = {}
    for key, section in data.items():
        if str(key) == "/**" or str(key).strip("/").split("/")[-1] == NODE_NAME:
            body = section.get("ros__parameters") if isinstance(section, dict) else None
            params.update(flatten(body or {}))
    params.pop("use_sim_time", None)
    try:
        PerceptionConfig.from_ros_parameters(params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def main(argv: list[str] | None = None, node_class: type = PerceptionNode) -> int:
    """Console script `perception_node`. Without ``--params-file`` the packaged YAML is used."""
    argv = list(sys.argv if argv is None else argv)
    files = _params_files(argv)
    if not files and (default := default_config_path()) is not None:
        argv += (["--ros-args"] if "--ros-args" not in argv else []) + ["--params-file", str(default)]
        files = [str(default)]
    # Validate the files before rclpy reads them: rclpy ignores unknown keys (a typo would silently
    # fall back to a default) and its type errors do not name the field.
    for path in files:
        try:
            validate_params_file(path)
        except ConfigError as exc:
            print(f"{NODE_NAME}: invalid configuration: {exc}", file=sys.stderr)
            return 2
    malloc_note = fix_malloc_mmap_threshold()  # before rclpy starts the DDS threads
    profile = MemoryProfile.from_env()  # debug option (SSM_PERCEPTION_MEMPROFILE), off by default
    from ssm_perception.nodes.shutdown import (
        ignore_signals_while_exiting,
        stop_on_signals,
    )

    # SIGINT/SIGTERM only set `stop` (nodes/shutdown.py): the context stays valid until the worker has
    # finished its frame and the node is destroyed, so nothing publishes into a dead context.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stop_on_signals(stop, NODE_NAME)
    node = executor = None
    try:
        node = node_class()
        node.get_logger().info(malloc_note)
        if profile is not None:
            profile.start()
            node.get_logger().info(f"{MEMPROFILE_ENV}: memory profile every {profile.period_s:g} s -> {profile.path}")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)  # returns at least every 0.1 s to look at `stop`
    except ConfigError as exc:
        print(f"{NODE_NAME}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:  # weights missing, corrupt, unpinned or not matching the configuration
        print(f"{NODE_NAME}: cannot load the model: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            print(f"[{NODE_NAME}] shutting down: {node.summary()}", file=sys.stderr, flush=True)
            if executor is not None:
                executor.remove_node(node)
            node.destroy_node()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if profile is not None:
            profile.stop()
        rclpy.try_shutdown()
        ignore_signals_while_exiting()
    return 0


if __name__ == "__main__":
    sys.exit(main())
