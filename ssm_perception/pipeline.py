"""PerceptionPipeline: the whole per-LiDAR-frame step, without ROS.

The node and the offline evaluator both call ``process``, so what is measured offline is what runs
on the vehicle. One frame:

    reset decision (ResetPolicy: route start, time jumps, gaps, localization jumps, dropout, ...)
      -> encode sensors to BEV features (bev.features.encode_frame)
      -> warp the previous state into the current base_link (odom -> base_link motion, SE(2))
      -> temporal step + heads (model.step; reset cells zeroed inside the step)
      -> occupancy / dynamic grids, detections (base_link -> odom), tracker (odom), track rule
         (tracking.support: a track is published only while the current scan has returns under it)
      -> state health (temporal.health.StateHealthMonitor), the rule check of the network against the
         scan's direct evidence (evidence.EvidenceCheck), input distribution shift (temporal.shift)

Inputs are already-decoded numpy arrays and 4x4 transforms (io.ros_convert and tf_buffer do the
ROS side). Never raises on bad sensor data: a missing sensor is a masked input, a non-finite or
implausible time step or pose becomes a reset with a reason, and non-finite outputs are reported
as unknown cells rather than published as numbers.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.device import GraphCache, counters_tensor, fill_counters
from ssm_perception.bev.features import (
    CameraFrame,
    LidarScan,
    RadarScan,
    encode_frame,
)
from ssm_perception.bev.grid import BevGrid
from ssm_perception.bev.lidar_input import LidarInput
from ssm_perception.config import PerceptionConfig
from ssm_perception.evidence import (
    EvidenceCheck,
    EvidenceGrids,
    EvidenceReport,
    direct_now,
    evidence_channels,
    evidence_planes,
    grids_from_planes,
)
from ssm_perception.frame_assembler import ego_twist, radar_over_ground
from ssm_perception.geometry import transform_points
from ssm_perception.model import BevPerceptionModel, load_checkpoint
from ssm_perception.pipeline_graph import (
    copy_to_host,
    device_outputs,
    make_graph_step,
    pack_frame,
    read_back,
    unpack_frame,
)
from ssm_perception.temporal.base import State
from ssm_perception.temporal.health import (
    HealthReport,
    StateHealthMonitor,
    observed_from_features,
)
from ssm_perception.temporal.reset_policy import ResetDecision, ResetPolicy
from ssm_perception.temporal.shift import ShiftDetector, ShiftReport
from ssm_perception.temporal.warp import is_cell_rows
from ssm_perception.threads import configure_threads
from ssm_perception.tracking.detections import (
    Detection,
    detections_from_table,
    refine_with_radar,
)
from ssm_perception.tracking.stage import tracking_stage
from ssm_perception.tracking.support import TrackSupportReport, TrackSupportRule
from ssm_perception.tracking.tracker import MultiObjectTracker, TrackState
from ssm_perception.weights import SHIPPED_CHECKPOINTS
from ssm_perception.weights import shipped_checkpoint as _shipped_in

log = logging.getLogger(__name__)
NS = 1_000_000_000
# dt handed to the model on a frame that starts from the initial state: the state is all zeros, so
# it only scales the first update; a typical LiDAR period keeps it in the trained range.
_FIRST_FRAME_DT_S = 0.1


@dataclass
class FrameInputs:
    """One LiDAR frame's inputs, as `frame_assembler.FrameAssembler` builds them (the node, `evaluate`,
    the simulator frames, the trainer and the bench all do): every transform refers to base_link at
    the LiDAR stamp, radar and camera already moved there through the ego motion."""

    stamp_ns: int  # LiDAR stamp; everything below is at (or already compensated to) this stamp
    T_odom_base: np.ndarray  # 4x4 pose of base_link in odom
    lidar: np.ndarray | None = None  # structured (x, y, z, intensity[, t, ring]) in the LiDAR frame
    T_base_lidar: np.ndarray | None = None
    radar: np.ndarray | None = None  # structured (x, y, z, radial_velocity, rcs) in the radar frame
    T_base_radar: np.ndarray | None = None
    image: np.ndarray | None = None  # [H, W, 3] RGB uint8 or [H, W] mono
    K: np.ndarray | None = None  # 3x3 camera intrinsics
    T_base_camera: np.ndarray | None = None  # base_link <- camera optical frame
    T_map_odom: np.ndarray | None = None  # for consumers that want map-frame output
    zone: str | None = None  # operational zone, when signalled (/vehicle/zone)
    ego_twist: tuple[float, float, float] | None = None  # (vx, vy, yaw_rate) in base_link; None = from odom
    # True: radar radial_velocity is over ground (the assembler removed the ego motion); False: as the
    # driver gives it (relative to the sensor), and process() compensates it with the twist.
    radar_over_ground: bool = False
    lidar_frame: str = "lidar"  # the cloud's frame_id (named in the mounting diagnostics)
    # LiDAR frames that arrived since the previous processed one but were skipped (node busy): the
    # reset policy does not mistake the skipped span for a time gap or a dropout.
    skipped_lidar_ns: tuple[int, ...] = ()

    @classmethod
    def from_sim(cls, scenario_config, frame, assembler=None) -> FrameInputs:
        """The inputs of one simulator frame (``Scenario.frames()``), every sensor it has, through the
        frame assembler as a bag replay would give them: the scenario's poses go into the assembler's
        TF buffer (odom -> base_link at each sensor's stamp, the static mounts), then pairing and
        motion compensation are the assembler's. Pass the same ``assembler`` for consecutive frames
        (`sim_inputs` does): it carries the previous pose for the ego twist."""
        from types import SimpleNamespace

        from ssm_perception.frame_assembler import FrameAssembler, Stamped

        if assembler is None:
            assembler = FrameAssembler(PerceptionConfig())
        fr, tf, c = assembler.config.frames, assembler.tf, scenario_config
        for frame_id, T in frame.T_base_sensor.items():
            if tf.parent_of(frame_id) is None:
                tf.set_transform(T, fr.base_link, frame_id, 0, static=True)
        tf.set_transform(frame.T_odom_base, fr.odom, fr.base_link, int(frame.stamp_ns))
        if frame.T_map_odom is not None:
            tf.set_transform(frame.T_map_odom, fr.map, fr.odom, int(frame.stamp_ns))
        for other in (frame.radar, frame.camera):
            if other is not None and getattr(other, "T_odom_base", None) is not None:
                tf.set_transform(other.T_odom_base, fr.odom, fr.base_link, int(other.stamp_ns))
        if frame.radar is not None:
            assembler.radar = Stamped(frame.radar.points, c.radar.frame_id, int(frame.radar.stamp_ns))
        if frame.camera is not None:
            assembler.image = Stamped(frame.camera.image, c.camera.frame_id, int(frame.camera.stamp_ns))
            assembler.camera_info = SimpleNamespace(K=frame.camera.K)
        out = assembler.assemble(int(frame.stamp_ns), frame.lidar, c.lidar.frame_id)
        if out.inputs is None:  # the scenario's own poses are always there
            raise RuntimeError(f"simulated frame at {frame.stamp_ns} could not be assembled: {out.problems}")
        return out.inputs

    def scans(self, sensors=None) -> tuple[LidarScan | None, RadarScan | None, CameraFrame | None]:
        """The encoder's inputs of the sensors present (and enabled in ``sensors``, a SensorsConfig)."""
        on = (lambda name: getattr(sensors, f"use_{name}")) if sensors is not None else (lambda name: True)
        lidar = LidarScan(self.lidar, self.T_base_lidar) if self.lidar is not None and on("lidar") else None
        radar = RadarScan(self.radar, self.T_base_radar) if self.radar is not None and on("radar") else None
        camera = CameraFrame(self.image, self.K, self.T_base_camera) \
            if self.image is not None and on("camera") else None
        return lidar, radar, camera


def sim_inputs(scenario, config: PerceptionConfig | None = None, frames=None):
    """FrameInputs of every frame of a `sim.scenario.Scenario` (or of ``frames``, its SimFrames),
    through one frame assembler."""
    from ssm_perception.frame_assembler import FrameAssembler

    assembler = FrameAssembler(config or PerceptionConfig())
    for frame in (scenario.frames() if frames is None else frames):
        yield FrameInputs.from_sim(scenario.config, frame, assembler)


@dataclass
class FrameOutputs:
    stamp_ns: int
    occupancy: np.ndarray  # [H, W] float32 P(occupied), H along x (base_link grid)
    # [H, W] bool: the model has nothing here: not finite, or (for an evidence-only filter such as
    # log-odds, which infers nothing) never observed since the last reset. Published as -1.
    unknown: np.ndarray
    dynamic: np.ndarray  # [H, W] float32 P(occupied and dynamic)
    detections_base: list[Detection]
    detections_odom: list[Detection]
    tracks: list[TrackState]  # odom; what is published: the tracker's output through the track rule
    health: HealthReport
    reset: ResetDecision
    # reset, encode, warp, temporal (model.step incl. its head convolutions), heads (decoding the
    # heads into grids and detections), tracking, health, total (the whole process() call)
    latency_ms: dict[str, float]
    sensors: dict[str, bool]  # which sensors contributed this frame
    input_problems: list[str] = field(default_factory=list)  # rejected inputs, one line each
    feature_stats: dict = field(default_factory=dict)
    # LiDAR input checks (bev/lidar_input.py): {name: (level 0 OK / 1 WARN / 2 ERROR, message)}, e.g.
    # intensity scale, fields, ego footprint, mounting, heading; the node shows them in /diagnostics.
    sensor_checks: dict[str, tuple[int, str]] = field(default_factory=dict)
    T_odom_base: np.ndarray | None = None
    T_map_odom: np.ndarray | None = None
    evidence: EvidenceGrids | None = None  # the current scan's direct evidence (None without LiDAR features)
    evidence_report: EvidenceReport | None = None  # the rule check: network vs evidence, with a level
    shift: ShiftReport | None = None  # input distribution shift (severe weather, changed sensor)
    direct_age_s: np.ndarray | None = None  # [H, W] s since a range sensor last observed the cell; inf: never
    # True between process(inp, track=False) and PerceptionPipeline.track(out): tracks and
    # detections_odom are still empty (the node publishes the grid in between)
    tracking_pending: bool = False
    # the track rule (tracking/support.py): tracks withheld for lack of LiDAR support, or static on returns
    track_support: TrackSupportReport | None = None


def resolve_model(config: PerceptionConfig) -> tuple[BevPerceptionModel, dict]:
    """The model the config asks for, and a dict saying where it came from.

    Order: ``model.checkpoint`` if set (a failure to load it is an error: an explicit request must
    not silently become something else); else a checkpoint of the configured kind shipped in
    ssm_perception/checkpoints/; else, for kind 'logodds', the training-free filter; else the
    training-free 'logodds' filter as an explicit, logged fallback (``info['fallback']``).
    """
    m = config.model
    # Weights not pinned in the package's manifest load only with model.allow_untrusted_weights
    # (weights.py); model fields that shape the weights must equal the checkpoint's.
    if m.checkpoint:
        model, meta = load_checkpoint(m.checkpoint, map_location=m.device, expected_kind=m.kind, grid=config.grid,
                                      backend=m.backend, allow_untrusted=m.allow_untrusted_weights, expected_model=m)
        return model, {"kind": model.kind, "source": str(m.checkpoint), "metadata": meta}
    if m.kind == "logodds":
        return BevPerceptionModel(config).to(m.device).eval(), {"kind": "logodds", "source": "training-free"}
    shipped = shipped_checkpoint(m.kind)
    if shipped is not None:
        # (inside the package's checkpoints/ only weights matching the manifest load, allowed or not)
        model, meta = load_checkpoint(shipped, map_location=m.device, expected_kind=m.kind, grid=config.grid,
                                      backend=m.backend, allow_untrusted=m.allow_untrusted_weights, expected_model=m)
        return model, {"kind": model.kind, "source": str(shipped), "metadata": meta}
    fallback = config.model_copy(deep=True)
    fallback.model.kind = "logodds"
    reason = (f"no checkpoint for model.kind={m.kind!r} (model.checkpoint is empty and none is shipped in "
              f"{SHIPPED_CHECKPOINTS}); falling back to the training-free 'logodds' filter")
    log.warning(reason)
    return BevPerceptionModel(fallback).to(m.device).eval(), {"kind": "logodds", "source": "training-free",
                                                               "fallback": reason}


def shipped_checkpoint(kind: str) -> Path | None:
    """The checkpoint of ``kind`` shipped in SHIPPED_CHECKPOINTS (weights.shipped_checkpoint), or None."""
    return _shipped_in(kind, SHIPPED_CHECKPOINTS)


class PerceptionPipeline:
    """Stateful per-frame perception. ``process`` once per LiDAR frame, in stamp order."""

    def __init__(self, config: PerceptionConfig | None = None, model: BevPerceptionModel | None = None):
        self.config = config or PerceptionConfig()
        self.config.check_environment()  # device present, backend runnable (ConfigError naming the field)
        self.threads = configure_threads(self.config.model.cpu_threads)  # the one place (threads.py)
        if model is None:
            model, self.model_info = resolve_model(self.config)
        else:
            self.model_info = {"kind": model.kind, "source": "given"}
        self.model = model.eval()
        self.device = self.model.device
        if self.device.type == "cpu" and self.model.kind == "mamba":
            from ssm_perception.temporal import cpu_kernel

            cpu_kernel.warm()  # compile/load the CPU state update now, not in the first frame
        self.grid = BevGrid.from_config(self.config.grid)
        if self.model.grid.shape != self.grid.shape:
            raise ValueError(f"model grid {self.model.grid.shape} != config grid {self.grid.shape}")
        self.policy = ResetPolicy(self.config.reset, grid=self.grid, device=self.device)  # age grid on the device
        sens = self.config.sensors
        enabled = tuple(name for name, on in (("lidar", sens.use_lidar), ("radar", sens.use_radar),
                                              ("camera", sens.use_camera)) if on)
        # Only enabled sensors are watched: a vehicle without a camera must not report "camera never seen".
        self.health = StateHealthMonitor(self.grid, self.config.reset, sensors=enabled)
        self.tracker = MultiObjectTracker(self.config.tracking)
        self.track_support = TrackSupportRule(self.config.track_support, self.grid)  # tracks need LiDAR returns
        self.lidar_input = LidarInput(self.config.lidar_input)  # per-sensor normalisation + mounting checks
        self.evidence_check = EvidenceCheck(self.config.evidence)
        self.shift = ShiftDetector(self.config.distribution_shift)
        # A filter of evidence alone (log-odds) holds the uninformative prior where nothing was
        # observed: that is "nothing", published as -1. Learned models infer there (that is their point).
        self.infers_unobserved = self.model.kind != "logodds"
        self.state = self.model.init_state(1, self.device)
        self._warp_in_step = hasattr(getattr(self.model, "core", None), "warp_step")
        self._spare_state: State | None = None  # buffers for the next state (see process, step 4)
        self._state_finite = True
        self._pending_tracking: FrameOutputs | None = None  # a frame returned before its tracking step
        self.frames = 0
        # True: each stage timer waits for the device first (CUDA runs asynchronously; the bench sets it,
        # the node does not, since the wait costs latency).
        self.sync_timers = False
        # The frame's outputs come to the host in one packed copy (pipeline_graph.packed_read_back);
        # on the CPU they are simply viewed. Tests set it on the CPU to check the packed path.
        self.packed_read_back = self.device.type != "cpu"
        trk = self.config.tracking
        # The decoder's score floor: the tracker's second stage needs the weak peaks too.
        self._floor = min(trk.detection_threshold, trk.low_score_threshold) if trk.low_score_threshold > 0 \
            else trk.detection_threshold
        self._graph, self.graph_status = make_graph_step(self.model, self.config.grid, self._floor,
                                                         self.config.model.cuda_graph)
        # The BEV encoders' CUDA graphs (bev.device.GraphCache; model.cuda_graph on a CUDA device):
        # fixed-capacity clouds, one replay per encoder half instead of tens of launches.
        self.encoder_graphs = GraphCache(enabled=self.config.model.cuda_graph and self.device.type == "cuda")
        self.health.graphs = self.encoder_graphs  # its per-cell step too ("health")
        self.policy.graphs = self.encoder_graphs  # and the age step ("age")

    def _graph_step(self, x, motion, dt_s: float, reset_mask):
        """The temporal step through the CUDA graph (pipeline_graph.CudaGraphStep); None if it
        cannot run, after which every frame runs eagerly (the reason is in ``graph_status``)."""
        from ssm_perception.temporal.fused_step import warp_params

        affine, bilinear = (None, True) if motion is None else warp_params(motion, self.grid, 1)
        try:
            frame, self.state = self._graph(x, self.state, affine, bilinear, dt_s, reset_mask)
        except Exception as exc:  # noqa: BLE001 - a capture the driver or a kernel refuses: eager from now on
            log.warning("CUDA graph step failed (%s); running eagerly", exc)
            self.graph_status = f"failed, eager: {type(exc).__name__}: {exc}"[:300]
            self._graph = None  # self.state is still the previous state: the frame runs eagerly from it
            return None
        self._spare_state = None
        self.graph_status = "captured"
        return frame

    def request_reset(self, reason: str = "") -> None:
        """Reset the whole state at the next frame (the ~/reset service); logged and counted."""
        self.policy.request_reset(reason)

    @property
    def reset_counts(self) -> dict[str, int]:
        return dict(self.policy.counts)

    def _ms(self, t0: float) -> float:
        if self.sync_timers and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return _ms(t0)

    @torch.inference_mode()
    def process(self, inp: FrameInputs, track: bool = True) -> FrameOutputs:
        """One frame. ``track`` False: the frame comes back before its tracking step (stage 7,
        ``tracking_pending``), which ``track(out)`` then runs: the node publishes the grid first, so
        tracking never delays it. Either way the tracker sees every frame once and in order (a step
        left pending runs at the start of the next ``process``), with the same code."""
        self.finish_tracking()
        t_start = time.perf_counter()
        lat: dict[str, float] = {}
        stamp_ns = int(inp.stamp_ns)
        use = self.config.sensors
        problems: list[str] = []  # input defects this frame (the sensor is then treated as missing)
        lidar = _checked_points("lidar", inp.lidar, inp.T_base_lidar, ("x", "y", "z"), problems) \
            if use.use_lidar else None
        radar = _checked_points("radar", inp.radar, inp.T_base_radar, ("x", "y", "z", "radial_velocity"),
                                problems) if use.use_radar else None
        camera_ok = use.use_camera and _checked_camera(inp, problems)
        input_ms = 0.0  # counted in the "encode" stage: it prepares the cloud for the encoder
        if lidar is not None:  # sensor-agnostic input: intensity scale, fields, self-returns (one place)
            t0 = time.perf_counter()
            try:
                lidar = self.lidar_input(lidar, inp.T_base_lidar, inp.T_odom_base, stamp_ns, inp.lidar_frame)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                problems.append(f"lidar input failed: {type(exc).__name__}: {exc}")
                lidar = None
            input_ms = _ms(t0)

        # 1. Reset decision (cheap, first: it tells whether there is a motion to warp with).
        t0 = time.perf_counter()
        shift = self.shift.update(lidar) if lidar is not None else ShiftReport(0, "no LiDAR this scan", False, None,
                                                                               shifts=self.shift.shifts)
        reset_on_shift = shift.message if shift.detected and self.config.distribution_shift.reset else None
        decision = self.policy.decide(stamp_ns, inp.T_odom_base, lidar_present=lidar is not None,
                                      state_finite=self._state_finite, zone=inp.zone,
                                      distribution_shift=reset_on_shift,
                                      skipped_ns=inp.skipped_lidar_ns)
        # The assembler's twist; hand-built inputs without one get it from the same odom motion.
        twist = inp.ego_twist if inp.ego_twist is not None else \
            (None if decision.full else ego_twist(decision.T_prev_cur, decision.dt_s))
        if radar is not None and not inp.radar_over_ground:
            radar = radar_over_ground(radar, inp.T_base_radar, twist) if twist is not None else radar
        lat["reset"] = self._ms(t0)

        # 2. Encode the sensors present.
        t0 = time.perf_counter()
        try:
            feats = encode_frame(
                self.grid,
                LidarScan(lidar, inp.T_base_lidar) if lidar is not None else None,
                RadarScan(radar, inp.T_base_radar) if radar is not None else None,
                CameraFrame(inp.image, inp.K, inp.T_base_camera) if camera_ok else None,
                ego_twist=twist, device=self.device,  # LiDAR deskew (bev.lidar.deskew, the only one)
                resolve=False,  # counters and sensor flags come with the frame's one read-back (step 6)
                graphs=self.encoder_graphs, derived=_frame_masks,
            )
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
            # Last line of defence: input the checks above did not foresee must not stop the node.
            # The frame still advances the state (as a frame without sensors) so time stays consistent.
            log.exception("BEV encoding failed at %.3f s; frame treated as having no sensor data", stamp_ns / NS)
            problems.append(f"encoder failed: {type(exc).__name__}: {exc}")
            lidar = radar = None
            feats = encode_frame(self.grid, ego_twist=twist, device=self.device, resolve=False, derived=_frame_masks)
        x = feats.features.unsqueeze(0)  # [1, C_in, H, W], encoded on the model's device
        # [1, H, W] bool: observed by any sensor (health, reset policy), and directly by a range sensor
        # (the evidence grids come with the read-back); computed with the features (_frame_masks)
        observed, direct = feats.derived
        lat["encode"] = self._ms(t0) + input_ms

        # 3. Warp (or restart) the state. The Mamba core gathers the warp inside its step (one pass
        # over the state, no warped copy), so for it this stage is only the restart and the warp's
        # time is part of "temporal"; the other cores warp here.
        t0 = time.perf_counter()
        if decision.full:
            self.state = self.model.init_state(1, self.device)
            self._spare_state = None  # a state of another episode: never written into again
            self.health.reset()
            self.tracker.reset()
            self.track_support.reset()
            self.evidence_check.reset()
            dt_s, motion, reset_mask = _FIRST_FRAME_DT_S, None, None
        else:
            dt_s, motion = float(decision.dt_s), decision.T_prev_cur
            if not self._warp_in_step:
                self.state = self.model.warp(self.state, motion)  # the model's warp (backend-specific)
            reset_mask = None if decision.cell_mask is None else decision.cell_mask.to(self.device).unsqueeze(0)
        lat["warp"] = self._ms(t0)

        # 4. Temporal step (+ neck and heads; with the CUDA graph also the detection decode).
        t0 = time.perf_counter()
        floor = self._floor
        frame = None
        if self._graph is not None:
            frame = self._graph_step(x, None if decision.full else motion, dt_s, reset_mask)
        if frame is None:
            if not (math.isfinite(dt_s) and dt_s > 0):  # the policy resets otherwise; checked here, on the host
                raise ValueError(f"dt must be finite and > 0, got {dt_s}")
            dt = torch.full((1,), dt_s, dtype=torch.float32, device=self.device)  # a fill: no upload, no wait
            if self._warp_in_step:
                # The previous-but-one state is handed back as the buffer of the new one: in CPU
                # inference no frame allocates a state (the node's allocator setting would otherwise
                # map and page-fault tens of MiB every frame). Nothing else keeps a reference to it.
                prev = self.state
                heads, self.state = self.model.warp_step(x, prev, None if decision.full else motion, dt,
                                                         reset_mask, out_state=self._spare_state)
                self._spare_state = prev if reusable_state(prev) else None
            else:
                heads, self.state = self.model.step(x, self.state, dt, reset_mask)
        lat["temporal"] = self._ms(t0)

        # 5. Health and per-cell bookkeeping (ages for the next partial reset, unknown cells) on the
        # device; its scalars, the unknown mask and the ages travel in the frame's one read-back (step 6).
        t0 = time.perf_counter()
        # (cells of a partial reset are forgotten by the monitor too, unless observed now: forget=)
        health_scalars = self.health.measure(self.state, observed, motion, 0.0 if decision.full else dt_s,
                                             direct=direct, forget=reset_mask)
        self.policy.observe(observed[0])
        lat["health"] = self._ms(t0)

        # 6. Heads -> grids and detections (decoded on the device: pipeline_graph), one read-back.
        t0 = time.perf_counter()
        if frame is None:
            frame = device_outputs(heads, self.config.grid, floor)
        # Everything the host needs from this frame, in one device-to-host copy (on the CPU: views):
        # grids, unknown mask, detection table, the scan's evidence planes and the direct-observation
        # age, and one float64 vector of scalars: the health monitor's five, the stale-cell count of a
        # deferred reset check, the encoders' counters and sensor flags.
        pending = {"mask": feats.sensor_mask, "stats": feats.stats}
        counters = counters_tensor(pending)
        cells = decision.cells_pending
        scalars = [health_scalars, (health_scalars.new_zeros(()) if cells is None else cells.double()).reshape(1)]
        if counters is not None:
            scalars.append(counters.to(health_scalars.device))
        scalars = torch.cat(scalars)
        h = self.health
        if self.packed_read_back:  # one packed copy; its device half replays as a CUDA graph on CUDA
            packed = self.encoder_graphs.run(
                "read_back", (self.infers_unobserved, tuple(evidence_channels(self.config.evidence))),
                functools.partial(_frame_for_host, infers_unobserved=self.infers_unobserved,
                                  evidence_cfg=self.config.evidence),
                frame.p_occ, frame.p_dyn, frame.table, h.observed, feats.features, h.direct_seen,
                h.direct_unobserved_s, scalars)
            host = unpack_frame(copy_to_host(packed), self.grid.shape, frame.table.shape[0],
                                {"evidence": (4, *self.grid.shape), "direct_age": self.grid.shape}, scalars.numel())
        else:
            never = torch.zeros_like(h.observed[0, 0], dtype=torch.bool) if self.infers_unobserved \
                else h.observed[0, 0] <= 0.5
            host = read_back(frame, never, {"evidence": evidence_planes(feats.features, self.config.evidence),
                                            "direct_age": h.direct_age_s()[0]}, scalars)
        values = host.scalars.tolist()
        if counters is not None:
            fill_counters(pending, values[6:])
        report = self.health.finish(values[:5], stamp_ns / NS, feats.sensor_mask)
        self.policy.resolve_cells(decision, values[5])
        # The monitor already counts non-finite state values; no second pass over the state here.
        self._state_finite = report.nonfinite == 0
        if not self._state_finite:
            log.error("temporal state became non-finite at %.3f s (%d values); it is reset on the next frame",
                      stamp_ns / NS, report.nonfinite)
        occ, dyn, unknown = host.occupancy, host.dynamic, host.unknown
        evidence = grids_from_planes(host.extras["evidence"])
        ev_report = self.evidence_check.update(occ, evidence)
        direct_age = host.extras["direct_age"]
        dets_base = detections_from_table(host.table)
        if radar is not None and dets_base and twist is not None:
            pts, sensor_xy = _radar_in_base(radar, inp.T_base_radar)
            dets_base = refine_with_radar(dets_base, pts, sensor_xy)
        lat["heads"] = self._ms(t0)

        lat["tracking"] = 0.0  # stage 7 (``track``) adds its time here and to "total"
        lat["total"] = self._ms(t_start)
        self.frames += 1
        out = FrameOutputs(
            stamp_ns=stamp_ns, occupancy=occ, unknown=unknown, dynamic=dyn, detections_base=dets_base,
            detections_odom=[], tracks=[], health=report, reset=decision, latency_ms=lat,
            sensors=dict(feats.sensor_mask), input_problems=problems, feature_stats=feats.stats,
            sensor_checks=self.lidar_input.summary(),
            T_odom_base=None if inp.T_odom_base is None else np.asarray(inp.T_odom_base, dtype=np.float64),
            T_map_odom=inp.T_map_odom, evidence=evidence, evidence_report=ev_report, shift=shift,
            direct_age_s=direct_age, tracking_pending=True,
        )
        self._pending_tracking = out
        return self.track(out) if track else out

    def track(self, out: FrameOutputs) -> FrameOutputs:
        """Stage 7 of the frame ``out`` (the latest ``process`` result): tracking in odom and the track
        rule (tracking/support.py), skipped with an empty result when the pose is unusable. Fills
        ``tracks`` (what is published), ``track_support`` and ``detections_odom`` and
        adds its time to ``latency_ms`` ("tracking", "total"). A no-op for a frame already tracked."""
        if not out.tracking_pending:
            return out
        if out is not self._pending_tracking:
            raise RuntimeError("track(out) must follow the process() call that returned out")
        t0 = time.perf_counter()
        if _finite_pose(out.T_odom_base):
            # the track rule: published tracks need returns of the current scan (tracking/support.py)
            counts = out.evidence.nonground_count if out.evidence is not None and out.sensors.get("lidar") else None
            band = out.evidence.band_count if counts is not None else None
            out.detections_odom, _, out.tracks, out.track_support = tracking_stage(
                self.tracker, self.track_support, out.detections_base, out.T_odom_base, out.stamp_ns / NS, counts,
                band_count=band)
        out.tracking_pending, self._pending_tracking = False, None
        ms = self._ms(t0)
        out.latency_ms["tracking"] = ms
        out.latency_ms["total"] += ms
        return out

    def finish_tracking(self) -> None:
        """Run the tracking step a caller left pending (before the next frame, a reset, or shutdown)."""
        if self._pending_tracking is not None:
            self.track(self._pending_tracking)


def _frame_masks(features: Tensor) -> tuple[Tensor, Tensor]:
    """features [C, H, W] -> (observed, direct) [1, H, W] bool (observed_from_features, direct_now):
    computed inside encode_frame's assembly step (one CUDA graph with it on CUDA)."""
    return observed_from_features(features.unsqueeze(0)), direct_now(features).unsqueeze(0)


def _frame_for_host(p_occ: Tensor, p_dyn: Tensor, table: Tensor, observed: Tensor, features: Tensor,
                    direct_seen: Tensor, direct_unobserved_s: Tensor, scalars: Tensor, *, infers_unobserved: bool,
                    evidence_cfg) -> Tensor:
    """What the host needs from a frame, packed (pipeline_graph.pack_frame): a pure tensor function
    of the health monitor's maps, the features and the heads' outputs (a CUDA graph on CUDA)."""
    never = torch.zeros_like(observed[0, 0], dtype=torch.bool) if infers_unobserved else observed[0, 0] <= 0.5
    age = torch.where(direct_seen[0, 0] > 0.5, direct_unobserved_s[0, 0],
                      torch.full_like(direct_unobserved_s[0, 0], math.inf))  # StateHealthMonitor.direct_age_s
    return pack_frame(p_occ, p_dyn, table, never, scalars, evidence_planes(features, evidence_cfg), age)


def reusable_state(state: State) -> bool:
    """A state whose buffers the Mamba CPU step can write the next state into (cell rows on the CPU)."""
    return set(state) == {"ssm"} and is_cell_rows(state["ssm"])


def _ms(t0: float) -> float:
    return 1e3 * (time.perf_counter() - t0)


def _finite_pose(T) -> bool:
    a = np.asarray(T, dtype=np.float64) if T is not None else None
    return a is not None and a.shape == (4, 4) and bool(np.all(np.isfinite(a)))


def _checked_points(name: str, pts, T, fields: tuple[str, ...], problems: list[str]):
    """The cloud if usable, else None with a line in ``problems`` (absent is not a problem)."""
    if pts is None:
        return None
    if not _finite_pose(T):
        problems.append(f"{name}: no valid base_link <- sensor transform")
        return None
    names = getattr(getattr(pts, "dtype", None), "names", None)
    if names is None or any(f not in names for f in fields):
        problems.append(f"{name}: cloud needs fields {list(fields)}, has {list(names or [])}")
        return None
    vector = [f for f in fields if pts.dtype[f].shape != () or pts.dtype[f].kind not in "uif"]
    if vector:
        problems.append(f"{name}: fields {vector} must be scalar numbers (PointField count 1)")
        return None
    return pts


def _checked_camera(inp: FrameInputs, problems: list[str]) -> bool:
    if inp.image is None:
        return False
    K = None if inp.K is None else np.asarray(inp.K, dtype=np.float64)
    if K is None or K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        problems.append("camera: missing or degenerate intrinsics K")
        return False
    if not _finite_pose(inp.T_base_camera):
        problems.append("camera: no valid base_link <- camera transform")
        return False
    img = np.asarray(inp.image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or img.size == 0:
        problems.append(f"camera: image must be [H, W, 3] or [H, W], got {img.shape}")
        return False
    return True


def _radar_in_base(radar: np.ndarray, T_base_radar: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Radar returns as [N, 3] (x, y, over-ground radial velocity) in base_link, and the sensor xy."""
    xyz = np.stack([radar["x"], radar["y"], radar["z"]], 1).astype(np.float64)
    T = np.asarray(T_base_radar, dtype=np.float64)
    p = transform_points(T, xyz)
    vr = np.asarray(radar["radial_velocity"], dtype=np.float64)
    return np.stack([p[:, 0], p[:, 1], vr], 1), (float(T[0, 3]), float(T[1, 3]))
