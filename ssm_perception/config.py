"""The one configuration schema (pydantic), used by the node, the CLI and config/*.yaml.

The YAML file is a regular ROS 2 parameter file (``<node>: ros__parameters: {...}``) so that
``ros2 launch`` can pass it unchanged; nested sections become dotted parameter names
(``grid.resolution``). A plain mapping without the ``ros__parameters`` wrapper is accepted too.
Each module owns the meaning of its section; this file only declares the fields and limits.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

NODE_NAME = "ssm_perception"
# Durations (fields named *_s / *_ms) are converted to integer nanoseconds and timer periods: a day
# is far beyond any sensible value and keeps every conversion finite.
MAX_DURATION_S = 86_400.0
# nav_msgs/OccupancyGrid carries width x height int8 cells in one sequence: 2^31 - 1 at most.
MAX_GRID_CELLS = 2**31 - 1


class UserError(Exception):
    """Marker base of errors caused by the user's input (configuration, files, arguments): the CLI
    prints them as one line and exits with code 2 (ssm_perception/cli_errors.py)."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    # NaN and infinities are refused in every float field (they crash timers and tensor sizes).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _bounded_durations(cls, value, info: ValidationInfo):
        name = info.field_name or ""
        if isinstance(value, float) and name.endswith(("_s", "_ms")):
            limit = MAX_DURATION_S * (1000.0 if name.endswith("_ms") else 1.0)
            if abs(value) > limit:
                raise ValueError(f"must be at most {limit:g} (a duration; {value:g} given)")
        return value


class GridConfig(_Section):
    """Ego-centred BEV grid in base_link. Tensor layout [C, H, W]: H runs along +x, W along +y.

    Cell (i, j) has its centre at x = x_min + (i + 0.5) * resolution, y = y_min + (j + 0.5) * resolution.
    """

    length_x: float = Field(100.0, gt=0, description="extent along x (forward) [m]")
    length_y: float = Field(100.0, gt=0, description="extent along y (left) [m]")
    resolution: float = Field(0.5, gt=0, description="cell size [m]")
    z_min: float = Field(-2.5, description="lowest point height kept, in base_link [m]")
    z_max: float = Field(3.5, description="highest point height kept, in base_link [m]")

    @model_validator(mode="after")
    def _check(self) -> GridConfig:
        if self.z_max <= self.z_min:
            raise ValueError("grid.z_max must be greater than grid.z_min")
        for name in ("length_x", "length_y"):
            cells = getattr(self, name) / self.resolution
            if not math.isfinite(cells) or cells > MAX_GRID_CELLS:  # a 1e-308 m cell: round() would overflow
                raise ValueError(f"grid.{name} / grid.resolution = {cells:.6g} cells, more than an "
                                 f"OccupancyGrid holds ({MAX_GRID_CELLS}); use a coarser grid.resolution")
            if abs(cells - round(cells)) > 1e-6:
                raise ValueError(f"grid.{name} must be a multiple of grid.resolution")
        return self

    @property
    def nx(self) -> int:
        return round(self.length_x / self.resolution)

    @property
    def ny(self) -> int:
        return round(self.length_y / self.resolution)

    @property
    def x_min(self) -> float:
        return -self.length_x / 2.0

    @property
    def y_min(self) -> float:
        return -self.length_y / 2.0


def _refuse(problem: str | None, v: str) -> str:
    """``v`` if ``problem`` is empty, else ``problem`` as the validation error (one line naming the field)."""
    if problem:
        raise ValueError(problem)
    return v


class FramesConfig(_Section):
    map: str = Field("map", description="global map frame (not used by the node; for consumers of the outputs)")
    odom: str = Field("odom", description="odometry frame: tracks and markers are published in it")
    base_link: str = Field("base_link", description="vehicle frame: the BEV grid is centred on it")

    @field_validator("*")
    @classmethod
    def _frame_id(cls, v: str) -> str:
        return _refuse(frame_id_problem(v), v)

    @model_validator(mode="after")
    def _distinct(self) -> FramesConfig:
        if len({self.map, self.odom, self.base_link}) < 3:
            raise ValueError(f"frames map, odom and base_link must be three different frames, got "
                             f"{self.map!r}, {self.odom!r}, {self.base_link!r}")
        return self


class TopicsConfig(_Section):
    lidar: str = Field("/sensing/lidar/points", description="input: LiDAR sensor_msgs/PointCloud2 (drives the frame rate)")
    radar: str = Field("/sensing/radar/points", description="input: radar sensor_msgs/PointCloud2")
    camera_image: str = Field(
        "/sensing/camera/front/image_raw", description="input: camera sensor_msgs/Image"
    )
    camera_info: str = Field(
        "/sensing/camera/front/camera_info", description="input: sensor_msgs/CameraInfo of that camera"
    )
    occupancy_grid: str = Field(
        "/perception/occupancy_grid", description="output: nav_msgs/OccupancyGrid in base_link"
    )
    tracks: str = Field("/perception/tracks", description="output: ssm_perception/TrackArray in odom")
    markers: str = Field("/perception/markers", description="output: visualization_msgs/MarkerArray of the tracks")
    observation: str = Field(
        "/perception/observation", description="output: nav_msgs/OccupancyGrid in base_link, per cell observed now "
        "(100), age of the last direct observation (1..99) or inferred only (0); README, Published grids"
    )
    diagnostics: str = Field("/diagnostics", description="output: diagnostic_msgs/DiagnosticArray")

    @field_validator("*")
    @classmethod
    def _topic_name(cls, v: str) -> str:
        return _refuse(topic_name_problem(v), v)


class SensorsConfig(_Section):
    use_lidar: bool = Field(True, description="subscribe to the LiDAR")
    use_radar: bool = Field(True, description="subscribe to the radar and fuse it")
    use_camera: bool = Field(True, description="subscribe to the camera and fuse it")
    radar_tolerance_s: float = Field(0.1, ge=0, description="max |stamp difference| radar vs LiDAR")
    camera_tolerance_s: float = Field(0.1, ge=0, description="max |stamp difference| camera vs LiDAR")
    tf_extrapolation_limit_s: float = Field(0.1, ge=0, description="TF lookups may extrapolate this far")
    tf_cache_s: float = Field(10.0, gt=0, description="seconds of /tf history kept for lookups")
    # Input gates and the TF wait (perception_node module docstring; README "Runtime robustness").
    tf_wait_s: float = Field(1.5, gt=0, description="a LiDAR frame waits this long (steady clock) for its transforms")
    frame_queue_size: int = Field(20, ge=1, description="LiDAR frames waiting for TF or the worker; oldest dropped")
    lidar_frame_id: str = Field("", description="accept only clouds in this frame; empty = any frame TF connects")
    max_stamp_future_s: float = Field(0.5, ge=0, description="stamps further ahead of the node clock are rejected")
    max_stamp_age_s: float = Field(2.0, gt=0, description="stamps older than this on arrival are rejected")
    publisher_handover_s: float = Field(
        1.0, gt=0, description="a second publisher on a sensor topic or TF edge is refused until the first one "
        "has been silent this long")
    tf_jump_confirm: int = Field(
        3, ge=1, description="consecutive messages an implausible TF jump must persist for before it is used")

    @field_validator("lidar_frame_id")
    @classmethod
    def _frame_id(cls, v: str) -> str:
        return _refuse(frame_id_problem(v) if v else None, v)  # empty: any frame TF connects


class LidarInputConfig(_Section):
    """Per-sensor normalisation and checks applied to every LiDAR cloud before the BEV encoder
    (ssm_perception/bev/lidar_input.py): real LiDARs differ in intensity scale, fields and mounting."""

    intensity_mode: Literal["auto", "fixed", "ignore"] = Field(
        "auto", description="auto: scale detected from the first scans (95th percentile matched to the training "
        "data's, logged once); fixed: multiply by intensity_scale; ignore: replace by the training median "
        "(as for a cloud without an intensity field)",
    )
    intensity_scale: float = Field(1.0, gt=0, description="fixed mode: raw intensity x this = the 0..255 scale "
                                   "the model was trained on (255 for a 0..1 sensor, 1/257 for 0..65535)")
    auto_scans: int = Field(10, ge=1, description="auto mode: scans whose intensities set the scale")
    ego_footprint: bool = Field(True, description="drop returns inside the ego box below (self-returns)")
    # Ego box in base_link [m]; defaults: the simulated vehicle body (sim lidar.ego_body) + 0.1 m.
    ego_x_min: float = Field(-2.4, description="ego box: rear end in base_link x [m]")
    ego_x_max: float = Field(2.4, description="ego box: front end in base_link x [m]")
    ego_y_min: float = Field(-1.05, description="ego box: right side in base_link y [m]")
    ego_y_max: float = Field(1.05, description="ego box: left side in base_link y [m]")
    ego_z_min: float = Field(0.15, description="ego box: bottom in base_link z [m] (above the ground)")
    ego_z_max: float = Field(1.7, description="ego box: top (roof) in base_link z [m]")
    mount_check: bool = Field(True, description="check the LiDAR mounting from the scans (ground normal, "
                              "ground height, heading against odometry) and report it in diagnostics")
    mount_max_tilt_deg: float = Field(5.0, gt=0, description="ground normal vs +z of base_link beyond this: WARN")
    mount_max_ground_offset_m: float = Field(0.4, gt=0, description="ground height at base_link beyond this: WARN")
    mount_max_heading_deg: float = Field(30.0, gt=0, description="scan motion vs odom motion heading: WARN")

    @model_validator(mode="after")
    def _check(self) -> LidarInputConfig:
        for a in "xyz":
            if getattr(self, f"ego_{a}_max") <= getattr(self, f"ego_{a}_min"):
                raise ValueError(f"lidar_input.ego_{a}_max must be greater than lidar_input.ego_{a}_min")
        return self


class ModelConfig(_Section):
    kind: Literal["mamba", "logodds", "single", "convgru", "attention"] = Field(
        "mamba", description="temporal core: the Mamba state-space model or one of the baselines"
    )
    backend: Literal["reference", "mamba_ssm", "fused"] = Field(
        "reference", description="mamba only: pure PyTorch, stock mamba-ssm kernels, or fused Triton step"
    )
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch device")
    checkpoint: str = Field("", description="path to weights; empty = the checkpoint shipped with the package")
    d_model: int = Field(32, gt=0, description="channels of the BEV features and the temporal core")
    # 2 KB of fp32 state per cell (nheads 4 x headdim 16 x d_state 8): a 128x128 CPU step stays
    # near 40 ms on 2 cores (results/bench_mamba_cpu.json); d_state must be a power of two (Triton).
    d_state: int = Field(8, gt=0, description="mamba: state size per head channel (a power of two)")
    headdim: int = Field(16, gt=0, description="mamba: channels per head")
    expand: int = Field(2, gt=0, description="mamba: inner width = expand x d_model")
    attention_history: int = Field(8, gt=0, description="frames kept by the attention baseline")
    neck: Literal["unet", "none"] = Field(
        "unet", description="spatial context between the temporal core and the heads (ssm_perception/neck.py)"
    )
    max_cells_per_call: int = Field(16384, gt=0, description="chunking for the mamba-ssm kernels")
    cuda_graph: bool = Field(
        True, description="on CUDA: run the temporal step, neck, heads and detection decode as CUDA graphs "
        "(Mamba with backend 'fused'; anything else runs eagerly and the node logs why); ignored on the CPU"
    )
    cpu_threads: int = Field(
        1, ge=0, le=1024, description="torch CPU threads (0 = torch's default). 1 is fastest when other processes "
        "share the cores: OpenMP workers stall waiting for each other (measured 4x slower with 2 on 2 busy cores)"
    )
    allow_untrusted_weights: bool = Field(
        False, description="load model.checkpoint although its sha256 is not pinned in the package's "
        "checkpoints/MANIFEST.json (your own training runs); a warning is logged"
    )

    @model_validator(mode="after")
    def _architecture(self) -> ModelConfig:
        if self.kind == "mamba" and (self.expand * self.d_model) % self.headdim:
            raise ValueError(f"model.expand * model.d_model ({self.expand * self.d_model}) must be a multiple of "
                             f"model.headdim ({self.headdim})")
        if self.kind == "mamba" and self.backend == "fused" and self.d_state & (self.d_state - 1):
            raise ValueError(f"model.backend 'fused' needs model.d_state to be a power of two, got {self.d_state}")
        return self

    def state_channels(self) -> int:
        """fp32 channels of the temporal state per cell (see each core's init_state)."""
        return {"mamba": self.expand * self.d_model * self.d_state, "convgru": self.d_model,
                "attention": self.attention_history * (self.d_model + 2), "single": 0, "logodds": 2}[self.kind]


class ResetConfig(_Section):
    max_time_gap_s: float = Field(1.0, gt=0, description="larger gap between frames resets the state")
    pose_jump_m: float = Field(2.0, gt=0, description="odom->base_link jump beyond motion model")
    pose_jump_yaw_rad: float = Field(0.5, gt=0, description="odom->base_link heading jump that resets the state")
    max_speed_mps: float = Field(50.0, gt=0, description="plausible ego speed for jump detection")
    sensor_dropout_s: float = Field(1.0, gt=0, description="LiDAR silence that resets the state")
    unobserved_cell_reset_s: float = Field(5.0, gt=0, description="partial reset of stale cells")
    state_norm_ratio: float = Field(10.0, gt=1, description="state norm vs running baseline")


class EvidenceConfig(_Section):
    """Rule check of the published grid (ssm_perception/evidence.py; README, Published grids).

    A cell with direct evidence in the current scan (at least ``min_returns`` LiDAR returns between
    ``min_height_m`` and ``max_height_m`` above the fitted ground, after deskew) is never published
    below ``floor``: the network may add occupancy, never erase what the LiDAR sees.
    """

    enabled: bool = Field(True, description="apply the evidence floor to the published grid")
    min_returns: int = Field(2, ge=1, description="returns in the height band that make a cell evidence")
    min_height_m: float = Field(0.25, description="band start above ground; one of the LiDAR encoder's bin edges")
    max_height_m: float = Field(2.5, description="band end above ground; one of the encoder's bin edges")
    floor: float = Field(
        0.75, gt=0.5, le=1.0, description="published P(occupied) of an evidence cell is at least this (> 0.5: "
        "occupied); on validation seeds 84 % of the evidence cells the network calls free are occupied "
        "(results/evidence_rule_validation.json, README)"
    )
    free_space: Literal["keep", "clear"] = Field(
        "keep", description="where the current scan sees through a cell the network calls occupied: keep the "
        "network's value (counted as a contradiction) or clear it to 0.5 (README, Published grids)"
    )
    disagreement_warn: float = Field(
        0.2, ge=0, le=1, description="share of evidence cells the network calls free (running mean) for WARN"
    )
    disagreement_error: float = Field(0.5, ge=0, le=1, description="... for ERROR (out-of-distribution)")
    min_cells: int = Field(20, ge=1, description="fewer evidence cells in a frame: no disagreement sample")
    ema: float = Field(0.2, gt=0, le=1, description="weight of the newest frame in the running disagreement")
    age_step_s: float = Field(0.1, gt=0, description="observation grid: one value step per this many seconds")

    @model_validator(mode="after")
    def _check(self) -> EvidenceConfig:
        from ssm_perception.bev.lidar import (
            HEIGHT_BIN_EDGES,  # here, not at import: bev imports config
        )

        for name in ("min_height_m", "max_height_m"):
            v = getattr(self, name)
            if not any(abs(v - e) < 1e-6 for e in HEIGHT_BIN_EDGES):
                raise ValueError(f"evidence.{name} must be one of the LiDAR encoder's height bin edges "
                                 f"{list(HEIGHT_BIN_EDGES)} (the evidence reuses its per-bin counts), got {v}")
        if self.max_height_m <= self.min_height_m:
            raise ValueError("evidence.max_height_m must be greater than evidence.min_height_m")
        if self.disagreement_error < self.disagreement_warn:
            raise ValueError("evidence.disagreement_error must be >= evidence.disagreement_warn")
        return self


class DistributionShiftConfig(_Section):
    """Severe weather / sensor change detector on LiDAR statistics (ssm_perception/temporal/shift.py).

    Per scan: share of returns closer than ``near_range_m`` and alone in their ``clutter_voxel_m``
    voxel (rain, snow and fog clutter; surfaces give many returns per voxel), number of returns,
    median log(1 + intensity). Each is compared with a running reference learned over
    ``warmup_frames`` healthy scans; a change beyond its threshold for ``persist_frames`` scans in a row
    is a shift: WARN in /diagnostics and, with ``reset``, a full reset (reason ``distribution_shift``),
    after which the reference is learned again from the new conditions.
    """

    enabled: bool = Field(True, description="watch the LiDAR statistics for a distribution shift")
    reset: bool = Field(True, description="reset the temporal state when a shift is detected")
    near_range_m: float = Field(10.0, gt=0, description="clutter: returns closer than this to the LiDAR ...")
    clutter_voxel_m: float = Field(0.3, gt=0, description="... and alone in a voxel of this size")
    near_share_delta: float = Field(
        0.02, gt=0, le=1, description="absolute rise of the clutter share (of all returns) that is a shift"
    )
    return_rate_change: float = Field(
        0.35, gt=0, lt=1, description="relative change of the return count (either way) that is a shift"
    )
    intensity_delta: float = Field(
        1.0, gt=0, description="change of the median log(1 + intensity) that is a shift (1.0: a factor of ~2.7; "
        "the median moves by up to 0.7 between open and built-up simulated streets)"
    )
    warmup_frames: int = Field(10, ge=1, description="scans that form the reference (after start and each reset)")
    ema: float = Field(0.05, gt=0, le=1, description="weight of a healthy scan in the running reference")
    persist_frames: int = Field(3, ge=1, description="consecutive shifted scans before it counts")


class PerClass(_Section):
    """One number per object class (our class numbering: car 1, truck 2, cyclist 3, pedestrian 4; io/track_fields.py maps it to the labels of msg/ObjectClassification.msg)."""

    car: float = Field(ge=0, description="car")
    truck: float = Field(ge=0, description="truck")
    cyclist: float = Field(ge=0, description="cyclist")
    pedestrian: float = Field(ge=0, description="pedestrian")

    def of(self, cls: int, default: float) -> float:
        """The value for class ``cls``; ``default`` for classes without one (0 unknown)."""
        return {1: self.car, 2: self.truck, 3: self.cyclist, 4: self.pedestrian}.get(int(cls), default)


class TrackingConfig(_Section):
    detection_threshold: float = Field(
        0.25, ge=0, le=1, description="centre-heatmap floor for decoding peaks (and the threshold of class 0); "
        "keep it at or below the lowest score_threshold, or peaks between the two are never decoded "
        "(not enforced: checkpoints store older tracking sections)"
    )
    score_threshold: PerClass = Field(
        default_factory=lambda: PerClass(car=0.3, truck=0.25, cyclist=0.45, pedestrian=0.4),
        description="per-class detection score a detection needs to reach the tracker (scripts/tune_tracking.py)",
    )
    nms_radius_m: PerClass = Field(
        default_factory=lambda: PerClass(car=3.0, truck=3.0, cyclist=2.0, pedestrian=0.75),
        description="circle NMS: a detection this close to a better one of a compatible class is dropped",
    )
    min_evidence: float = Field(
        0.2, ge=0, le=1, description="minimum P(occupied) of the occupancy head at a detection's centre cell"
    )
    gate_mahalanobis: float = Field(
        100.0, gt=0, description="association gate on the squared Mahalanobis distance over (x, y, yaw); chi2(3 dof) "
        "99.2 % would be 11.83, but the detector's errors are larger than the filter's measurement noise says, and "
        "the tight gate split objects into two tracks (scripts/diagnose_id_switches.py)",
    )
    low_score_threshold: float = Field(
        0.0, ge=0, le=1, description="second association stage (as ByteTrack): detections scoring at least "
        "this but below their class threshold may keep a confirmed or coasting track alive, never start one; "
        "0 = off",
    )
    # Defaults of the detection selection and the lifecycle below: scripts/tune_tracking.py on validation
    # seeds 100000-100003 for the shipped temporal model (results/tracking_tuning_round3.json, the last of
    # three rounds; README, Tracking evaluation).
    confirm_hits: int = Field(1, ge=1, description="associated detections that confirm a tentative track")
    max_coast_s: float = Field(1.5, ge=0, description="a track unmatched this long is deleted")
    report_coast_s: float = Field(
        0.3, ge=0, description="a coasting track is reported this long after its last detection (kept for "
        "re-identification until max_coast_s)"
    )
    min_existence: float = Field(
        0.1, ge=0, le=1, description="a coasting track whose internal existence score (birth prior P_D x score, "
        "Bayes-updated per frame) falls below this is deleted; the published existence_probability is P(real), "
        "the same updates from even birth odds (tracking/tracker.py, _bayes)"
    )
    detection_probability: float = Field(
        0.3, gt=0, lt=1, description="P(detected | exists) per frame in the existence update; below the "
        "detector's recall because occlusion is not modelled, so a short occlusion does not kill a track"
    )
    publish_tentative: bool = Field(
        False, description="also publish tentative tracks (not yet confirmed); planners usually want only confirmed"
    )


class TrackSupportConfig(_Section):
    """Rule check of the published tracks (ssm_perception/tracking/support.py; README, "Your own
    recordings"), the tracks' counterpart of the grid's evidence floor.

    A track is published (confirmed or coasting) only while the current, motion-compensated LiDAR scan
    supports it: at least ``min_returns`` non-ground returns inside its box grown by ``margin_m`` in
    at least one of the last ``window_frames`` scans. An unsupported track (an occluded object the
    network remembers, or one it invents) lives on in the tracker with its id and is published again
    when returns come back. A track that never moved (``static_move_m`` over ``static_min_s``) while
    sitting on returns in at least ``static_support`` of its scans (a parked car, or a false track on
    a wall or building front) is published only if its class is one that stands still and its mean
    detection score reaches ``static_min_score`` of that class. Scans without LiDAR are not checked.
    """

    enabled: bool = Field(True, description="withhold tracks the current LiDAR scan does not support")
    min_returns: int = Field(
        2, ge=1, description="non-ground returns of the current scan inside the track's footprint that support it"
    )
    margin_m: float = Field(
        0.5, ge=0, le=5, description="the track's box is grown by this for the support test [m] (the detector's "
        "position error; on validation seeds 100000-100001, checkpoint before #20, 0.25 cost 0.016 car and 0.156 "
        "pedestrian MOTA, 0.5 cost 0.001 and 0.023)")
    window_frames: int = Field(
        1, ge=1, le=100, description="a track is published while it was supported in at least one of the last "
        "this many LiDAR scans (1: this scan)"
    )
    static_rule: bool = Field(True, description="withhold static tracks on long-lived returns unless confident "
                              "(static_min_score)")
    static_min_s: float = Field(3.0, gt=0, description="a track younger than this is never judged static [s]")
    static_move_m: float = Field(
        1.0, gt=0, description="a track that stayed within this of its first position never moved [m]"
    )
    static_support: float = Field(
        0.8, ge=0, le=1, description="... and sits on long-lived returns when supported in at least this share "
        "of its scans"
    )
    static_min_score: PerClass = Field(
        default_factory=lambda: PerClass(car=0.4, truck=0.4, cyclist=0.6, pedestrian=0.5),
        description="a static track on returns is published only if its mean detection score reaches this for "
        "its class (vehicles park; a value above 1 never publishes static tracks of that class; unknown class "
        "0: never); pedestrian 0.5 on validation seeds 100000-100001 (0.6 withheld waiting pedestrians: "
        "-0.043 pedestrian MOTA)",
    )
    shape_check: bool = Field(True, description="withhold tracks that sit on structure going on past their box "
                              "(a wall, a hedge, a building front): connected cells with returns of the current "
                              "scan in the evidence height band reaching beyond shape_reach_m of the box")
    shape_reach_m: float = Field(2.0, gt=0, le=20, description="structure this far outside the track's box belongs "
                                 "to something larger than the object [m]")
    shape_max_beyond_m2: float = Field(
        15.0, gt=0, description="a track is withheld when the structure under its box covers more than this beyond "
        "shape_reach_m [m^2]; a margin over what tracks within 2 m of real and simulated objects showed "
        "(scripts/track_shape_stats.py, results/track_shape_stats.json)")


class DiagnosticsConfig(_Section):
    period_s: float = Field(1.0, gt=0, description="seconds between /diagnostics messages")
    latency_warn_ms: float = Field(100.0, gt=0, description="pipeline latency p50 above this is WARN")
    latency_error_ms: float = Field(200.0, gt=0, description="pipeline latency p50 above this is ERROR")
    no_output_error_s: float = Field(
        2.0, gt=0, description="LiDAR arriving but no frame produced for this long is an ERROR naming the cause")
    hardware_id: str = Field("ssm_perception", description="hardware_id of the diagnostic statuses")

    @model_validator(mode="after")
    def _order(self) -> DiagnosticsConfig:
        if self.latency_warn_ms > self.latency_error_ms:
            raise ValueError(f"diagnostics.latency_warn_ms ({self.latency_warn_ms:g}) must not exceed "
                             f"diagnostics.latency_error_ms ({self.latency_error_ms:g})")
        return self


class PerceptionConfig(_Section):
    grid: GridConfig = GridConfig()
    frames: FramesConfig = FramesConfig()
    topics: TopicsConfig = TopicsConfig()
    sensors: SensorsConfig = SensorsConfig()
    lidar_input: LidarInputConfig = LidarInputConfig()
    model: ModelConfig = ModelConfig()
    reset: ResetConfig = ResetConfig()
    tracking: TrackingConfig = TrackingConfig()
    track_support: TrackSupportConfig = TrackSupportConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    # a factory: EvidenceConfig's validator imports bev.lidar, which must not run while config is imported
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    distribution_shift: DistributionShiftConfig = DistributionShiftConfig()

    @model_validator(mode="after")
    def _fits_in_memory(self) -> PerceptionConfig:
        g, m = self.grid, self.model
        nx, ny = g.length_x / g.resolution, g.length_y / g.resolution  # floats: a 1e-300 m cell must not overflow
        cells = nx * ny
        need = memory_estimate(nx, ny, m)
        have = host_memory_bytes()
        if cells > MAX_GRID_CELLS or (have and need > have):
            state = cells * m.state_channels() * 4
            raise ValueError(
                f"grid: {nx:.6g} x {ny:.6g} cells is too large: the {m.kind} state would need {state / 2**30:.3g} GiB "
                f"({need / 2**30:.3g} GiB with the working buffers)"
                + (f", this machine has {have / 2**30:.3g} GiB" if have else "")
                + (f", and an OccupancyGrid holds at most {MAX_GRID_CELLS} cells" if cells > MAX_GRID_CELLS else "")
                + "; use a smaller grid.length_x/length_y or a coarser grid.resolution")
        return self

    def check_environment(self) -> None:
        """What the schema cannot know: is the configured device there (with enough memory), and can
        the configured backend run on it. Raises ConfigError naming the field."""
        check_device(self)

    # ---------------------------------------------------------------- (de)serialization
    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> PerceptionConfig:
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"the top level must be a mapping of sections, not a {type(data).__name__}")
        data = dict(data or {})
        if len(data) == 1:  # ROS parameter file: {node_name: {ros__parameters: {...}}}
            (only,) = data.values()
            if isinstance(only, dict) and "ros__parameters" in only:
                data = only["ros__parameters"] or {}
        if "ros__parameters" in data:
            data = data["ros__parameters"] or {}
        data.pop("use_sim_time", None)  # a ROS parameter, handled by rclpy itself
        return cls.model_validate(unflatten(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> PerceptionConfig:
        return validate_yaml(path, cls.from_mapping)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "") -> PerceptionConfig:
        """What the command-line tools take: the YAML at ``path`` (empty/None = the defaults), with
        ``model.device`` overridden when ``device`` is given; the device is checked to be present."""
        cfg = cls.from_yaml(path) if path else cls()
        if device:
            try:
                cfg.model.device = device
            except ValidationError as exc:
                raise ConfigError(describe_validation_error(exc)) from None
        cfg.check_environment()
        return cfg

    def to_ros_parameters(self) -> dict[str, Any]:
        """Flat {'grid.resolution': 0.5, ...} for declare_parameters."""
        return flatten(self.model_dump())

    @classmethod
    def from_ros_parameters(cls, params: dict[str, Any]) -> PerceptionConfig:
        try:
            return cls.model_validate(unflatten(params))
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from exc

    def to_yaml(self, node_name: str = NODE_NAME) -> str:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 10x faster, same output
        return yaml.dump({node_name: {"ros__parameters": self.model_dump()}}, Dumper=dumper, sort_keys=False)


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the offending field."""


MAX_CONFIG_BYTES = 1 << 20  # a parameter file is a few KiB; refuse to parse anything huge
MAX_CONFIG_VALUES = 100_000  # aliases can make a small file expand to billions of values


def _too_many_values(data, limit: int) -> bool:
    """True if walking ``data`` visits more than ``limit`` values (stops there: no blow-up)."""
    stack, seen = [data], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def validate_yaml(path: str | Path, validate):
    """``validate(mapping)`` on a YAML file; every failure is a ConfigError naming the file (and field)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a configuration file")
    try:
        with path.open("rb") as f:  # bounded read: also pipes and /dev/stdin
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES} bytes, too large for a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (invalid UTF-8 at byte {exc.start})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (NUL byte at offset {text.index(chr(0))})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a {type(data).__name__}")
    if _too_many_values(data, MAX_CONFIG_VALUES):
        raise ConfigError(f"{path}: more than {MAX_CONFIG_VALUES} values (nested YAML aliases?)")
    try:
        return validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the dotted field: 'grid.resolution: Input should be > 0'."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "finite_number":
            msg = "must be a finite number (not NaN or infinity)"
        parts.append(f"{loc}: {msg}" if err["loc"] else msg)
    return one_line("; ".join(parts))


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace (YAML and pydantic messages span lines) and cap the length."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------- names and resources
_NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# rmw: a fully qualified topic name is at most 255 - 8 characters (the DDS prefix takes the rest).
MAX_TOPIC_NAME = 247


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid ROS 2 topic name (None if it is): the rules of rcl's
    validate_topic_name (written here because the core must not import rclpy; test_config checks
    that everything rclpy refuses is refused here too). Substitutions ({node}) are not expanded by
    this package, so they are refused."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_TOPIC_NAME:
        return f"is {len(name)} characters long, at most {MAX_TOPIC_NAME} are allowed"
    if "{" in name or "}" in name:
        return f"{name!r}: substitutions ({{...}}) are not supported"
    body = name
    if name.startswith("~"):
        if name == "~":
            return None
        if not name.startswith("~/"):
            return f"{name!r}: '~' must be followed by '/'"
        body = name[2:]
    elif name.startswith("/"):
        body = name[1:]
    if not body:
        return f"{name!r} names no topic"
    if body.endswith("/"):
        return f"{name!r} must not end with '/'"
    for token in body.split("/"):
        if not token:
            return f"{name!r} must not contain repeated '/'"
        if not all(c.isascii() and (c.isalnum() or c == "_") for c in token):
            return f"{name!r}: only letters, digits, '_' and '/' are allowed ('~' only first)"
        if not _NAME_TOKEN.fullmatch(token):
            return f"{name!r}: a name token must not start with a digit"
    return None


_FRAME_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")


def frame_id_problem(frame: str) -> str | None:
    """Why ``frame`` is not a usable TF frame id (None if it is): non-empty, no leading '/' (tf2
    refuses those), letters, digits and _ . / - only."""
    if not frame:
        return "must not be empty"
    if frame.startswith("/"):
        return f"{frame!r}: tf2 frame ids must not start with '/'"
    if len(frame) > 255 or not _FRAME_ID.fullmatch(frame):
        return f"{frame!r}: only letters, digits and _ . / - are allowed (at most 255 characters)"
    return None


def memory_estimate(nx: float, ny: float, model: ModelConfig) -> float:
    """Bytes the pipeline needs for an nx x ny grid, roughly: the state twice (current + the buffer
    the next one is written into) and a few d_model-wide working tensors per cell, fp32."""
    copies = 5 if model.kind == "mamba" else 2  # the Mamba update makes state-sized intermediates
    per_cell = copies * model.state_channels() + 16 * model.d_model + 64
    return float(nx) * float(ny) * per_cell * 4


def host_memory_bytes() -> int:
    """Physical memory of this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_device(cfg: PerceptionConfig) -> None:
    """model.device present (and big enough for the grid), model.backend runnable on it."""
    import importlib.util

    m = cfg.model
    if m.kind == "mamba" and m.backend == "mamba_ssm" and importlib.util.find_spec("mamba_ssm") is None:
        raise ConfigError("model.backend: 'mamba_ssm' needs the mamba-ssm package (make setup-gpu), "
                          "which is not installed; use 'reference'")
    if m.kind == "mamba" and m.backend == "fused" and importlib.util.find_spec("triton") is None:
        raise ConfigError("model.backend: 'fused' needs the triton package, which is not installed; use 'reference'")
    if not m.device.startswith("cuda"):
        if m.kind == "mamba" and m.backend != "reference" and not (
                m.backend == "fused" and os.environ.get("TRITON_INTERPRET") == "1"):
            raise ConfigError(f"model.backend: {m.backend!r} runs on a CUDA device, model.device is {m.device!r}")
        return
    import torch

    if not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"model.device: {m.device!r} requested but {why}; use model.device 'cpu'")
    index = int(m.device.split(":")[1]) if ":" in m.device else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"model.device: {m.device!r} requested but only {count} CUDA device(s) are visible")
    have = torch.cuda.get_device_properties(index).total_memory
    need = memory_estimate(cfg.grid.nx, cfg.grid.ny, m)
    if need > have:
        raise ConfigError(f"grid: {cfg.grid.nx} x {cfg.grid.ny} cells would need about {need / 2**30:.3g} GiB on "
                          f"{m.device}, which has {have / 2**30:.3g} GiB")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = unflatten(v)
        parts = str(k).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"parameter {k!r} conflicts with a scalar at {p!r}")
        if isinstance(v, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(v)
        else:
            node[parts[-1]] = v
    return out
