"""The perception node: a thin rclpy adapter around `PerceptionPipeline`.

Callbacks only decode and store; a worker thread runs the pipeline on the newest LiDAR frame, so
slow model steps never starve the TF and clock subscriptions (the rclpy tf2 pitfall in the field
notes) and a backlog of stale frames is dropped (and counted) instead of adding latency.

Bursts (a driver or the network flushing a queue of scans at once) are deliberately collapsed to
their newest frame: one slot holds the next frame, a newer arrival replaces it, so the backlog is at
most one frame, latency stays one frame time, and published stamps only increase. Each replaced frame
counts in ``frames_dropped_busy`` and raises the ``lidar_backlog`` flag (WARN on /diagnostics while
recent). The skipped span is a gap like any other: longer than ``reset.max_time_gap_s`` it resets.

Bad input never stops the node: each problem is counted under a flag name, logged at most once
per `LOG_THROTTLE_S` per flag, and shown in /diagnostics (WARN while recent).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
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
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from ssm_perception_msgs.msg import TrackArray
from std_msgs.msg import String
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from ssm_perception.config import NODE_NAME, ConfigError, PerceptionConfig
from ssm_perception.frame_assembler import Stamped
from ssm_perception.memory import MMAP_THRESHOLD_BYTES, fix_malloc_mmap_threshold  # noqa: F401  (re-exported)
from ssm_perception.nodes import parameters

ZONE_TOPIC = "/vehicle/zone"
LOG_THROTTLE_S = 5.0  # per flag: a flood of bad packets gives one line per 5 s, not one per packet
FLAG_RECENT_S = 5.0  # a flag raised within this window keeps its diagnostics status at WARN
STAMP_FUTURE_TOLERANCE_S = 0.5  # a sensor stamp this far ahead of the node clock is rejected
RATE_WINDOW = 20  # arrivals kept per sensor for the rate estimate
LATENCY_WINDOW = 200  # frames kept for latency percentiles

# REP-2003: maps are served reliable + transient_local (depth 1) so late joiners (RViz) get the last one.
MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(
    depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
SENSOR_QOS = qos_profile_sensor_data  # best effort, keep last 5, volatile
OK, WARN, ERROR = (int.from_bytes(v, "little") for v in (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                                                          DiagnosticStatus.ERROR))


def default_config_path() -> Path | None:
    """config/ssm_perception.yaml: the source tree first, then the installed share directory."""
    source = Path(__file__).resolve().parents[2] / "config" / "ssm_perception.yaml"
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        share = Path(get_package_share_directory("ssm_perception"))
    except (ImportError, OSError, PackageNotFoundError):  # no ament index (pip install): the venv's share/
        share = Path(sys.prefix) / "share" / "ssm_perception"
    installed = share / "config" / "ssm_perception.yaml"
    return installed if installed.is_file() else None


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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
        self.arrivals.append(now_ns)
        self.last_stamp_ns = stamp_ns
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

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # One descriptor per parameter from the schema (nodes/parameters.py); runtime changes are
        # validated by the schema and applied to the live configuration.
        self.config = parameters.declare(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        cfg = self.config

        from ssm_perception.frame_assembler import FrameAssembler
        from ssm_perception.pipeline import PerceptionPipeline
        from ssm_perception.tf_buffer import TfBuffer

        self.pipeline = PerceptionPipeline(cfg)
        self.tf = TfBuffer(cfg.sensors.tf_cache_s)
        # Pairing, TF lookups, ego twist and motion compensation: the same assembler evaluate,
        # the simulator, the trainer and the bench use. Its message slots are guarded by _lock.
        self.assembler = FrameAssembler(cfg, self.tf)

        self._lock = threading.Lock()  # guards the latest-input slots below and the TF buffer
        self._stats_lock = threading.Lock()  # latency windows: written by the worker, read by diagnostics
        self._wake = threading.Condition(self._lock)
        self._pending_lidar: tuple[PointCloud2, int] | None = None
        self._last_lidar_ns: int | None = None
        self._clock_jumped_back = False
        self._stop = False

        self.stats = {name: _SensorStats() for name in ("lidar", "radar", "camera_image", "camera_info", "tf")}
        self.flags: Counter[str] = Counter()  # flag name -> times raised
        self._flag_last: dict[str, float] = {}  # flag name -> steady time last raised
        self._flag_logged: dict[str, float] = {}
        self._flag_text: dict[str, str] = {}
        self.resets: Counter[str] = Counter()  # reason -> count
        self.last_reset: tuple[str, int] | None = None
        self.frames_processed = 0
        self.frames_dropped_busy = 0
        self.stage_ms: dict[str, deque] = {}
        self.pipeline_latency_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self.last_health = None  # temporal.health.HealthReport of the last frame
        self.sensor_checks: dict = {}  # LiDAR input checks of the last frame (bev/lidar_input.py)
        self.last_evidence = None  # evidence.EvidenceReport of the last frame
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

        s = cfg.sensors
        subs = [(s.use_lidar, PointCloud2, t.lidar, self._on_lidar, SENSOR_QOS),
                (s.use_radar, PointCloud2, t.radar, self._on_radar, SENSOR_QOS),
                (s.use_camera, Image, t.camera_image, self._on_image, SENSOR_QOS),
                (s.use_camera, CameraInfo, t.camera_info, self._on_camera_info, SENSOR_QOS),
                (True, TFMessage, "/tf", lambda m: self._on_tf(m, static=False), TF_QOS),
                (True, TFMessage, "/tf_static", lambda m: self._on_tf(m, static=True), TF_STATIC_QOS),
                (True, String, ZONE_TOPIC, self._on_zone, OUTPUT_QOS)]
        for used, msg_type, topic, callback, qos in subs:
            if used:
                self.create_subscription(msg_type, topic, self._guarded(topic, callback), qos)
        self.create_service(Trigger, "~/reset", self._on_reset_service)

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
        """An exception escaping a callback would stop rclpy.spin: turn it into a flag instead."""
        def run(msg) -> None:
            try:
                callback(msg)
            except Exception as exc:  # noqa: BLE001 - whatever a message does, the node keeps running
                self.flag("callback_error", f"message on {topic} dropped: {type(exc).__name__}: {exc}")
        return run

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def flag(self, name: str, text: str) -> None:
        """Count a problem, log it (throttled per flag name) and keep it for /diagnostics."""
        now = time.monotonic()
        self.flags[name] += 1
        self._flag_last[name] = now
        self._flag_text[name] = text
        if now - self._flag_logged.get(name, -math.inf) >= LOG_THROTTLE_S:
            self._flag_logged[name] = now
            n = self.flags[name]
            self.get_logger().warning(f"[{name}] {text} (seen {n}x; throttled to one line per {LOG_THROTTLE_S:g} s)")

    def _check_stamp(self, sensor: str, stamp_ns: int) -> bool:
        """Reject zero stamps and stamps from the future of the node clock."""
        if stamp_ns <= 0:
            self.flag(f"{sensor}_stamp_zero", f"{sensor}: message with a zero stamp dropped")
            return False
        now = self._now_ns()
        ahead = (stamp_ns - now) * 1e-9
        if now > 0 and ahead > STAMP_FUTURE_TOLERANCE_S:  # now == 0: sim time without /clock yet
            self.flag(f"{sensor}_stamp_future",
                      f"{sensor}: stamp {ahead:.2f} s ahead of the node clock (use_sim_time mismatch?); dropped")
            return False
        return True

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
    def _on_lidar(self, msg: PointCloud2) -> None:
        stamp = _ns(msg.header.stamp)
        if not self._check_stamp("lidar", stamp):
            self.stats["lidar"].rejected += 1
            return
        self.stats["lidar"].seen(self._now_ns(), stamp)
        with self._wake:
            stale, self._pending_lidar = self._pending_lidar, (msg, stamp)
            self._wake.notify()
        if stale is not None:
            # Newest frame wins: the backlog is at most one frame, so a burst (a driver or network
            # flushing a queue) costs one frame time, not one per message, and stamps stay in order.
            self.frames_dropped_busy += 1
            self.flag("lidar_backlog", f"LiDAR frame at {stale[1] * 1e-9:.3f} s dropped unprocessed: a newer one "
                      "arrived while the worker was busy (input faster than processing; newest frame kept)")

    def _on_radar(self, msg: PointCloud2) -> None:
        from ssm_perception.io.ros_convert import pointcloud_to_array

        stamp = _ns(msg.header.stamp)
        if not self._check_stamp("radar", stamp):
            self.stats["radar"].rejected += 1
            return
        try:
            pts = pointcloud_to_array(msg)
        except ValueError as exc:
            self.stats["radar"].rejected += 1
            self.flag("radar_malformed", f"radar cloud on {self.config.topics.radar} dropped: {exc}")
            return
        self.stats["radar"].seen(self._now_ns(), stamp)
        with self._lock:
            self.assembler.radar = Stamped(pts, msg.header.frame_id, stamp)

    def _on_image(self, msg: Image) -> None:
        from ssm_perception.io.ros_convert import image_to_array

        stamp = _ns(msg.header.stamp)
        if not self._check_stamp("camera", stamp):
            self.stats["camera_image"].rejected += 1
            return
        try:
            img = image_to_array(msg)
        except ValueError as exc:
            self.stats["camera_image"].rejected += 1
            self.flag("camera_image_malformed", f"image on {self.config.topics.camera_image} dropped: {exc}")
            return
        self.stats["camera_image"].seen(self._now_ns(), stamp)
        with self._lock:
            self.assembler.image = Stamped(img, msg.header.frame_id, stamp)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        from ssm_perception.io.ros_convert import camera_info_to_model

        stamp = _ns(msg.header.stamp)
        try:
            info = camera_info_to_model(msg)
        except ValueError as exc:
            self.stats["camera_info"].rejected += 1
            self.flag("camera_info_malformed", f"camera_info on {self.config.topics.camera_info} dropped: {exc}")
            return
        self.stats["camera_info"].seen(self._now_ns(), stamp)
        with self._lock:
            self.assembler.camera_info = info

    def _on_tf(self, msg: TFMessage, static: bool) -> None:
        for t in msg.transforms:
            try:
                with self._lock:
                    if not self.tf.set_from_message(t, static=static):
                        # Older than the whole cache: time was reset (bag loop) before the clock said so.
                        self.tf.clear()
                        self.tf.set_from_message(t, static=static)
            except ValueError as exc:  # TfDataError: NaN, zero quaternion, second parent, empty frame
                self.flag("tf_malformed", f"{'/tf_static' if static else '/tf'} transform dropped: {exc}")
                continue
            self.stats["tf"].seen(self._now_ns(), _ns(t.header.stamp))

    def _on_zone(self, msg: String) -> None:
        # The reset policy sees the zone with every frame and resets when it changes.
        if msg.data != self.assembler.zone:
            self.get_logger().info(f"zone {self.assembler.zone!r} -> {msg.data!r}")
        with self._lock:
            self.assembler.zone = msg.data

    def _on_reset_service(self, request, response):
        self.pipeline.request_reset("~/reset service call")
        response.success = True
        response.message = "reset requested: applied at the next LiDAR frame"
        self.get_logger().info("reset requested through ~/reset")
        return response

    def _on_time_jump(self, jump) -> None:
        if jump.clock_change == ClockChange.ROS_TIME_NO_CHANGE and jump.delta.nanoseconds < 0:
            self._clock_jumped_back = True
            with self._lock:
                self.tf.clear()
            self.get_logger().warning(
                f"node clock jumped by {jump.delta.nanoseconds * 1e-9:.3f} s: TF buffer cleared"
            )

    # ------------------------------------------------------------------ the frame step (worker thread)
    def _work(self) -> None:
        while True:
            with self._wake:
                while self._pending_lidar is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                msg, stamp = self._pending_lidar
                self._pending_lidar = None
            try:
                self.process_lidar(msg, stamp)
            except Exception as exc:  # noqa: BLE001 - the node must survive anything a frame can throw
                self.flag("frame_error", f"frame at {stamp * 1e-9:.3f} s failed: {type(exc).__name__}: {exc}")

    def process_lidar(self, msg: PointCloud2, stamp: int) -> None:
        from ssm_perception.io import ros_convert as rc

        cfg = self.config
        try:
            points = rc.pointcloud_to_array(msg)
        except ValueError as exc:
            self.flag("lidar_malformed", f"LiDAR cloud on {cfg.topics.lidar} dropped: {exc}")
            return
        last = self._last_lidar_ns
        jumped_back = False
        if last is not None and stamp == last:
            self.flag("lidar_duplicate", f"LiDAR frame at {stamp * 1e-9:.3f} s received twice; second dropped")
            return
        if last is not None and stamp < last:
            # A late packet is dropped; time itself going back (bag loop, simulator restart: the node
            # clock jumped back, or the step is larger than any plausible delay) resets the state.
            jumped, self._clock_jumped_back = self._clock_jumped_back, False
            if not jumped and (last - stamp) * 1e-9 <= cfg.reset.max_time_gap_s:
                self.flag("lidar_out_of_order", f"LiDAR frame at {stamp * 1e-9:.3f} s is older than the last "
                          f"processed one ({(last - stamp) * 1e-6:.0f} ms earlier); dropped")
                return
            jumped_back = True

        with self._lock:  # TF and the latest radar/camera are written by the callbacks
            if jumped_back:
                self.assembler.reset()  # no twist across a backward jump of time
            assembled = self.assembler.assemble(stamp, points, msg.header.frame_id)
        for flag, text in assembled.problems:
            self.flag(flag, text)
        if assembled.inputs is None:
            return
        self._last_lidar_ns = stamp
        out = self.pipeline.process(assembled.inputs)
        self._publish(out, stamp)

    def _publish(self, out, stamp: int) -> None:
        from ssm_perception.io import ros_convert as rc

        grid, observation, tracks, markers = rc.frame_messages(out, self.config)
        self.pub_observation.publish(observation)  # first: a lockstep replay waits on the occupancy grid
        self.pub_grid.publish(grid)
        self.pub_tracks.publish(tracks)
        self.pub_markers.publish(markers)
        # Pipeline latency as production stacks define it: publication time minus sensor stamp, on the
        # node clock (sim time in replays), so it includes transport and queueing, not only compute.
        with self._stats_lock:
            self.pipeline_latency_ms.append((self._now_ns() - stamp) * 1e-6)
            for stage, ms in out.latency_ms.items():
                self.stage_ms.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(float(ms))
        self.frames_processed += 1
        self.last_health = out.health
        self.sensor_checks = out.sensor_checks
        self.last_evidence = out.evidence_report
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
            self._worker.join(timeout=5.0)
        super().destroy_node()


# ---------------------------------------------------------------------------------------- memory profile
MEMPROFILE_ENV = "SSM_PERCEPTION_MEMPROFILE"  # path of a JSON-lines file; unset = off
MEMPROFILE_PERIOD_ENV = "SSM_PERCEPTION_MEMPROFILE_S"  # seconds between records (default 10)


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33+): byte counts summed over every malloc arena.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class MemoryProfile:
    """Debug option: where does the node's memory go over a long run?

    Every ``period_s`` a thread appends one JSON line to ``path`` with /proc/self/smaps_rollup (RSS
    split into anonymous and file-backed), glibc's mallinfo2 (bytes in use vs freed but kept by the
    allocator, over all arenas) and the number of malloc arenas (from malloc_info), the thread count,
    and tracemalloc's traced Python memory with the 10 source lines that grew most since the first
    record. Python-object growth shows in tracemalloc, C allocations kept free in mallinfo2's
    ``fordblks``; together with RSS they tell a leak from allocator retention. tracemalloc slows
    allocation, so this is for diagnosis runs only (scripts/soak.py --memory-profile).
    """

    def __init__(self, path: str | Path, period_s: float = 10.0, frames: int = 4):
        self.path, self.period_s, self.frames = Path(path), float(period_s), frames
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first = None
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.mallinfo2.restype = _MallInfo2
            self._libc.fopen.restype = ctypes.c_void_p  # a FILE*: the default int would truncate it
            self._libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            self._libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            self._libc.fclose.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):  # not glibc (musl, macOS): the rest still works
            self._libc = None

    @classmethod
    def from_env(cls) -> MemoryProfile | None:
        path = os.environ.get(MEMPROFILE_ENV)
        return cls(path, float(os.environ.get(MEMPROFILE_PERIOD_ENV, "10"))) if path else None

    def start(self) -> None:
        import tracemalloc

        tracemalloc.start(self.frames)
        # The baseline is taken here, not by the thread: what the caller allocates after start()
        # must show up as growth, however late the thread gets to run.
        self._first = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="memory_profile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def _run(self) -> None:
        # one record at the start, one every period, and one at the stop
        while True:
            self._write()
            if self._stop.wait(self.period_s):
                self._write()
                return

    def _write(self) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(self.record()) + "\n")

    def malloc_arenas(self) -> int | None:
        """Number of malloc arenas (<heap> elements of malloc_info's XML)."""
        if self._libc is None:
            return None
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
            fp = self._libc.fopen(tmp.name.encode(), b"w")
            if not fp:
                return None
            self._libc.malloc_info(0, fp)
            self._libc.fclose(fp)
            return Path(tmp.name).read_text().count("<heap nr=")

    def record(self) -> dict:
        import tracemalloc

        rec: dict = {"t_s": round(time.monotonic() - self._t0, 2)}
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                rec[f"smaps.{key}"] = int(value.split()[0]) * 1024
        rec["threads"] = next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines()
                              if ln.startswith("Threads:"))
        if self._libc is not None:
            mi = self._libc.mallinfo2()
            rec.update({f"mallinfo.{name}": getattr(mi, name) for name, _ in _MallInfo2._fields_})
            rec["malloc_arenas"] = self.malloc_arenas()
        if tracemalloc.is_tracing():
            rec["tracemalloc.current"], rec["tracemalloc.peak"] = tracemalloc.get_traced_memory()
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if self._first is None:
                self._first = snap
            rec["tracemalloc.top_growth"] = [
                {"where": str(d.traceback[0]), "size_diff": d.size_diff, "count_diff": d.count_diff, "size": d.size}
                for d in snap.compare_to(self._first, "lineno")[:10]]
        return rec


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


def main(argv: list[str] | None = None) -> int:
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
    rclpy.init(args=argv)
    node = None
    try:
        node = PerceptionNode()
        node.get_logger().info(malloc_note)
        if profile is not None:
            profile.start()
            node.get_logger().info(f"{MEMPROFILE_ENV}: memory profile every {profile.period_s:g} s -> {profile.path}")
        rclpy.spin(node)
    except ConfigError as exc:
        print(f"{NODE_NAME}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            # Printed, not logged: after Ctrl-C the context (and with it /rosout) is already shut down.
            print(f"[{NODE_NAME}] shutting down: {node.summary()}", file=sys.stderr, flush=True)
            node.destroy_node()
        if profile is not None:
            profile.stop()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
