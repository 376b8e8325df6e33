"""PerceptionPipeline: the whole per-LiDAR-frame step, without ROS.

The node and the offline evaluator both call ``process``, so what is measured offline is what runs
on the vehicle. One frame:

    reset decision (ResetPolicy: route start, time jumps, gaps, localization jumps, dropout, ...)
      -> encode sensors to BEV features (bev.features.encode_frame)
      -> warp the previous state into the current base_link (odom -> base_link motion, SE(2))
      -> temporal step + heads (model.step; reset cells zeroed inside the step)
      -> occupancy / dynamic grids, detections (base_link -> odom), tracker (odom)
      -> state health (temporal.health.StateHealthMonitor)

Inputs are already-decoded numpy arrays and 4x4 transforms (io.ros_convert and tf_buffer do the
ROS side). Never raises on bad sensor data: a missing sensor is a masked input, a non-finite or
implausible time step or pose becomes a reset with a reason, and non-finite outputs are reported
as unknown cells rather than published as numbers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssm_perception.bev.features import CameraFrame, LidarScan, RadarScan, encode_frame
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import PerceptionConfig
from ssm_perception.geometry import transform_points, yaw_of
from ssm_perception.heads import occupancy_probabilities
from ssm_perception.model import BevPerceptionModel, load_checkpoint
from ssm_perception.temporal.base import State
from ssm_perception.temporal.health import (
    HealthReport,
    StateHealthMonitor,
    observed_from_features,
)
from ssm_perception.temporal.reset_policy import ResetDecision, ResetPolicy
from ssm_perception.temporal.warp import is_cell_rows
from ssm_perception.tracking.detections import (
    Detection,
    decode_detections,
    detections_to_odom,
    refine_with_radar,
)
from ssm_perception.tracking.tracker import MultiObjectTracker, TrackState

log = logging.getLogger(__name__)
NS = 1_000_000_000
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
# dt handed to the model on a frame that starts from the initial state: the state is all zeros, so
# it only scales the first update; a typical LiDAR period keeps it in the trained range.
_FIRST_FRAME_DT_S = 0.1


@dataclass
class FrameInputs:
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

    @classmethod
    def from_sim(cls, scenario_config, frame) -> FrameInputs:
        """The inputs of one simulator frame (``Scenario.frames()``), every sensor it has, as a bag
        replay would give them (the scenario's config names the sensor frames)."""
        T = frame.T_base_sensor
        c = scenario_config
        return cls(
            stamp_ns=int(frame.stamp_ns), T_odom_base=frame.T_odom_base, lidar=frame.lidar,
            T_base_lidar=T[c.lidar.frame_id],
            radar=frame.radar.points if frame.radar is not None else None, T_base_radar=T[c.radar.frame_id],
            image=frame.camera.image if frame.camera is not None else None,
            K=frame.camera.K if frame.camera is not None else None, T_base_camera=T[c.camera.frame_id],
            T_map_odom=frame.T_map_odom,
        )


@dataclass
class FrameOutputs:
    stamp_ns: int
    occupancy: np.ndarray  # [H, W] float32 P(occupied), H along x (base_link grid)
    unknown: np.ndarray  # [H, W] bool: never observed since the last reset, or not finite
    dynamic: np.ndarray  # [H, W] float32 P(occupied and dynamic)
    detections_base: list[Detection]
    detections_odom: list[Detection]
    tracks: list[TrackState]  # odom
    health: HealthReport
    reset: ResetDecision
    # reset, encode, warp, temporal (model.step incl. its head convolutions), heads (decoding the
    # heads into grids and detections), tracking, health, total (the whole process() call)
    latency_ms: dict[str, float]
    sensors: dict[str, bool]  # which sensors contributed this frame
    input_problems: list[str] = field(default_factory=list)  # rejected inputs, one line each
    feature_stats: dict = field(default_factory=dict)
    T_odom_base: np.ndarray | None = None
    T_map_odom: np.ndarray | None = None


def resolve_model(config: PerceptionConfig) -> tuple[BevPerceptionModel, dict]:
    """The model the config asks for, and a dict saying where it came from.

    Order: ``model.checkpoint`` if set (a failure to load it is an error: an explicit request must
    not silently become something else); else a checkpoint of the configured kind shipped in
    ssm_perception/checkpoints/; else, for kind 'logodds', the training-free filter; else the
    training-free 'logodds' filter as an explicit, logged fallback (``info['fallback']``).
    """
    m = config.model
    if m.checkpoint:
        model, meta = load_checkpoint(m.checkpoint, map_location=m.device, expected_kind=m.kind, grid=config.grid,
                                      backend=m.backend)
        return model, {"kind": model.kind, "source": str(m.checkpoint), "metadata": meta}
    if m.kind == "logodds":
        return BevPerceptionModel(config).to(m.device).eval(), {"kind": "logodds", "source": "training-free"}
    shipped = shipped_checkpoint(m.kind)
    if shipped is not None:
        model, meta = load_checkpoint(shipped, map_location=m.device, expected_kind=m.kind, grid=config.grid,
                                      backend=m.backend)
        return model, {"kind": model.kind, "source": str(shipped), "metadata": meta}
    fallback = config.model_copy(deep=True)
    fallback.model.kind = "logodds"
    reason = (f"no checkpoint for model.kind={m.kind!r} (model.checkpoint is empty and none is shipped in "
              f"{SHIPPED_CHECKPOINTS}); falling back to the training-free 'logodds' filter")
    log.warning(reason)
    return BevPerceptionModel(fallback).to(m.device).eval(), {"kind": "logodds", "source": "training-free",
                                                               "fallback": reason}


def shipped_checkpoint(kind: str) -> Path | None:
    """The checkpoint of ``kind`` shipped in ssm_perception/checkpoints/ (``<kind>.safetensors``
    first, else any whose sidecar says that kind), or None."""
    import json

    if not SHIPPED_CHECKPOINTS.is_dir():
        return None
    preferred = SHIPPED_CHECKPOINTS / f"{kind}.safetensors"
    candidates = [preferred] if preferred.is_file() else sorted(SHIPPED_CHECKPOINTS.glob("*.safetensors"))
    for path in candidates:
        side = path.with_name(path.name + ".json")
        try:
            if json.loads(side.read_text()).get("kind") == kind:
                return path
        except (OSError, ValueError):
            continue
    return None


_shipped_checkpoint = shipped_checkpoint  # the name eval/evaluate.py imports


class PerceptionPipeline:
    """Stateful per-frame perception. ``process`` once per LiDAR frame, in stamp order."""

    def __init__(self, config: PerceptionConfig | None = None, model: BevPerceptionModel | None = None):
        self.config = config or PerceptionConfig()
        if self.config.model.cpu_threads > 0:
            torch.set_num_threads(self.config.model.cpu_threads)
        if model is None:
            model, self.model_info = resolve_model(self.config)
        else:
            self.model_info = {"kind": model.kind, "source": "given"}
        self.model = model.eval()
        self.device = self.model.device
        self.grid = BevGrid.from_config(self.config.grid)
        if self.model.grid.shape != self.grid.shape:
            raise ValueError(f"model grid {self.model.grid.shape} != config grid {self.grid.shape}")
        self.policy = ResetPolicy(self.config.reset, grid=self.grid)
        sens = self.config.sensors
        enabled = tuple(name for name, on in (("lidar", sens.use_lidar), ("radar", sens.use_radar),
                                              ("camera", sens.use_camera)) if on)
        # Only enabled sensors are watched: a vehicle without a camera must not report "camera never seen".
        self.health = StateHealthMonitor(self.grid, self.config.reset, sensors=enabled)
        self.tracker = MultiObjectTracker(self.config.tracking)
        self.state = self.model.init_state(1, self.device)
        self._warp_in_step = hasattr(getattr(self.model, "core", None), "warp_step")
        self._spare_state: State | None = None  # buffers for the next state (see process, step 4)
        self._state_finite = True
        self.frames = 0

    def request_reset(self, reason: str = "") -> None:
        """Reset the whole state at the next frame (the ~/reset service); logged and counted."""
        self.policy.request_reset(reason)

    @property
    def reset_counts(self) -> dict[str, int]:
        return dict(self.policy.counts)

    @torch.inference_mode()
    def process(self, inp: FrameInputs) -> FrameOutputs:
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

        # 1. Reset decision (cheap, first: it tells whether there is a motion to warp with).
        t0 = time.perf_counter()
        decision = self.policy.decide(stamp_ns, inp.T_odom_base, lidar_present=lidar is not None,
                                      state_finite=self._state_finite, zone=inp.zone)
        twist = inp.ego_twist if inp.ego_twist is not None else _twist_from_motion(decision)
        lat["reset"] = _ms(t0)

        # 2. Encode the sensors present.
        t0 = time.perf_counter()
        try:
            feats = encode_frame(
                self.grid,
                LidarScan(lidar, inp.T_base_lidar) if lidar is not None else None,
                RadarScan(radar, inp.T_base_radar) if radar is not None else None,
                CameraFrame(inp.image, inp.K, inp.T_base_camera) if camera_ok else None,
                ego_twist=twist,
            )
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
            # Last line of defence: input the checks above did not foresee must not stop the node.
            # The frame still advances the state (as a frame without sensors) so time stays consistent.
            log.exception("BEV encoding failed at %.3f s; frame treated as having no sensor data", stamp_ns / NS)
            problems.append(f"encoder failed: {type(exc).__name__}: {exc}")
            lidar = radar = None
            feats = encode_frame(self.grid, ego_twist=twist)
        x = feats.features.unsqueeze(0).to(self.device)  # [1, C_in, H, W]
        observed = observed_from_features(x)  # [1, H, W] bool
        lat["encode"] = _ms(t0)

        # 3. Warp (or restart) the state. The Mamba core gathers the warp inside its step (one pass
        # over the state, no warped copy), so for it this stage is only the restart and the warp's
        # time is part of "temporal"; the other cores warp here.
        t0 = time.perf_counter()
        if decision.full:
            self.state = self.model.init_state(1, self.device)
            self._spare_state = None  # a state of another episode: never written into again
            self.health.reset()
            self.tracker.reset()
            dt_s, motion, reset_mask = _FIRST_FRAME_DT_S, None, None
        else:
            dt_s, motion = float(decision.dt_s), decision.T_prev_cur
            if not self._warp_in_step:
                self.state = self.model.warp(self.state, motion)  # the model's warp (backend-specific)
            reset_mask = None if decision.cell_mask is None else decision.cell_mask.to(self.device).unsqueeze(0)
        lat["warp"] = _ms(t0)

        # 4. Temporal step (+ the heads' convolutions, inside model.step).
        t0 = time.perf_counter()
        dt = torch.tensor([dt_s], dtype=torch.float32, device=self.device)
        if self._warp_in_step:
            # The previous-but-one state is handed back as the buffer of the new one: in CPU
            # inference no frame allocates a state (the node's allocator setting would otherwise
            # map and page-fault tens of MiB every frame). Nothing else keeps a reference to it.
            prev = self.state
            heads, self.state = self.model.warp_step(x, prev, None if decision.full else motion, dt, reset_mask,
                                                     out_state=self._spare_state)
            self._spare_state = prev if reusable_state(prev) else None
        else:
            heads, self.state = self.model.step(x, self.state, dt, reset_mask)
        lat["temporal"] = _ms(t0)

        # 5. Heads -> grids and detections.
        t0 = time.perf_counter()
        p_occ, p_dyn = occupancy_probabilities(heads)
        occ = p_occ[0].float().cpu().numpy()
        dyn = p_dyn[0].float().cpu().numpy()
        trk = self.config.tracking
        floor = min(trk.detection_threshold, trk.low_score_threshold) if trk.low_score_threshold > 0 else \
            trk.detection_threshold  # the tracker's second stage needs the weak peaks too
        dets_base = decode_detections(heads, self.config.grid, floor)
        if radar is not None and dets_base and twist is not None:
            pts, sensor_xy = _radar_over_ground(radar, inp.T_base_radar, twist)
            dets_base = refine_with_radar(dets_base, pts, sensor_xy)
        lat["heads"] = _ms(t0)

        # 6. Tracking in odom (skipped, with an empty result, when the pose is unusable).
        t0 = time.perf_counter()
        if _finite_pose(inp.T_odom_base):
            dets_odom = detections_to_odom(dets_base, inp.T_odom_base)
            tracks = self.tracker.update(dets_odom, stamp_ns / NS)
        else:
            dets_odom, tracks = [], []
        lat["tracking"] = _ms(t0)

        # 7. Health and per-cell bookkeeping (ages for the next partial reset, unknown cells).
        t0 = time.perf_counter()
        report = self.health.update(self.state, stamp_ns / NS, observed, feats.sensor_mask, motion,
                                    0.0 if decision.full else dt_s)
        # The monitor already counts non-finite state values; no second pass over the state here.
        self._state_finite = report.nonfinite == 0
        if not self._state_finite:
            log.error("temporal state became non-finite at %.3f s (%d values); it is reset on the next frame",
                      stamp_ns / NS, report.nonfinite)
        if reset_mask is not None:
            self.health.reset(reset_mask & ~observed)
        self.policy.observe(observed[0])
        unknown = (self.health.observed[0, 0] <= 0.5).cpu().numpy() | ~np.isfinite(occ)
        occ = np.nan_to_num(occ, nan=0.5, posinf=1.0, neginf=0.0)
        dyn = np.nan_to_num(dyn, nan=0.0, posinf=1.0, neginf=0.0)
        lat["health"] = _ms(t0)
        lat["total"] = _ms(t_start)
        self.frames += 1
        return FrameOutputs(
            stamp_ns=stamp_ns, occupancy=occ, unknown=unknown, dynamic=dyn, detections_base=dets_base,
            detections_odom=dets_odom, tracks=tracks, health=report, reset=decision, latency_ms=lat,
            sensors=dict(feats.sensor_mask), input_problems=problems, feature_stats=feats.stats,
            T_odom_base=None if inp.T_odom_base is None else np.asarray(inp.T_odom_base, dtype=np.float64),
            T_map_odom=inp.T_map_odom,
        )


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


def _twist_from_motion(decision: ResetDecision) -> tuple[float, float, float] | None:
    """(vx, vy, yaw_rate) of base_link from the odom motion since the previous frame."""
    if decision.full or decision.T_prev_cur is None or not decision.dt_s:
        return None
    m, dt = decision.T_prev_cur, decision.dt_s
    twist = (m[0, 3] / dt, m[1, 3] / dt, yaw_of(m) / dt)
    return twist if all(math.isfinite(v) for v in twist) else None


def _radar_over_ground(radar: np.ndarray, T_base_radar: np.ndarray, twist) -> tuple[np.ndarray, tuple[float, float]]:
    """Radar returns as [N, 3] (x, y, radial velocity over ground) in base_link, and the sensor xy.

    The radar measures (v_object - v_sensor) . u with u the unit line of sight; adding v_sensor . u
    gives the object's over-ground radial velocity, which refine_with_radar expects.
    """
    xyz = np.stack([radar["x"], radar["y"], radar["z"]], 1).astype(np.float64)
    p = transform_points(np.asarray(T_base_radar, dtype=np.float64), xyz)
    s = np.asarray(T_base_radar, dtype=np.float64)[:2, 3]
    vx, vy, wz = twist
    v_sensor = np.array([vx - wz * s[1], vy + wz * s[0]])  # rigid-body velocity at the mount
    ray = p[:, :2] - s
    rng = np.linalg.norm(ray, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = ray / rng
    vr = np.asarray(radar["radial_velocity"], dtype=np.float64) + u @ v_sensor
    return np.stack([p[:, 0], p[:, 1], vr], 1), (float(s[0]), float(s[1]))
