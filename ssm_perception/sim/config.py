"""Scenario configuration (pydantic): world layout, traffic, sensors and adversities.

One ``ScenarioConfig`` plus its seed fully determines a simulated run; it is stored in every bag
(metadata custom_data and /ground_truth/scenario) so a bag can be regenerated or explained.
"""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SensorName = Literal["lidar", "radar", "camera"]
AdversityType = Literal[
    "dropout", "time_gap", "localization_jump", "nan_points", "stamp_jitter", "out_of_order", "clutter", "zone_change",
    "weather",
]
WeatherKind = Literal["fog", "rain", "snow"]
IntensityModel = Literal["incidence", "reflectivity", "signal", "none"]
# Which fields each adversity type uses; anything else set on it is rejected as a likely mistake.
_ADVERSITY_NEEDS: dict[str, set[str]] = {
    "dropout": {"sensors", "duration_s"},
    "time_gap": {"duration_s"},
    "localization_jump": {"offset", "frame"},
    "nan_points": {"sensors", "duration_s", "fraction"},
    "stamp_jitter": {"sensors", "duration_s", "jitter_s"},
    "out_of_order": {"sensors", "duration_s"},
    "clutter": {"sensors", "duration_s", "rate"},
    "zone_change": {"zone"},
    "weather": {"sensors", "duration_s", "weather", "visibility_m", "rate", "ramp_s"},
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Mount(_Section):
    """Static sensor pose in base_link: translation [m] and roll/pitch/yaw [rad]."""

    xyz: tuple[float, float, float]
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)


class LidarConfig(_Section):
    enabled: bool = True
    frame_id: str = "lidar_top"
    rate_hz: float = Field(10.0, gt=0, description="one 360-degree sweep per period")
    beams: int = Field(32, ge=1)
    azimuth_steps: int = Field(1800, ge=8)
    elevation_min_deg: float = -25.0
    elevation_max_deg: float = 15.0
    min_range: float = Field(1.0, ge=0)
    max_range: float = Field(100.0, gt=0)
    range_noise: float = Field(0.02, ge=0, description="1-sigma range noise [m]")
    missing_prob: float = Field(0.03, ge=0, le=1, description="returns lost at random")
    latency_s: float = Field(0.03, ge=0, description="bag time = stamp + latency")
    mount: Mount = Mount(xyz=(1.0, 0.0, 1.9))
    # --- sensor model (sim/lidar_models.py fills these from datasheets; the defaults are the
    # original generic 32-beam sensor, so existing presets are unchanged)
    model: str = Field("generic32", description="name of the sensor model (informational: summaries, bags)")
    elevations_deg: list[float] = Field([], description="explicit beam elevations (any order, len = beams); "
                                                        "empty = uniform from elevation_min_deg to elevation_max_deg")
    ring_order: Literal["bottom_up", "top_down"] = Field("bottom_up", description="ring 0 = lowest (Velodyne "
                                                         "drivers) or highest beam (Ouster drivers)")
    intensity_model: IntensityModel = Field(
        "incidence", description="incidence: reflectivity x incidence x mild range falloff (original); reflectivity: "
        "calibrated, range-independent; signal: raw return strength ~ 1/r^2; none: all zeros")
    intensity_max: float = Field(255.0, gt=0, description="full scale of the intensity field (255, 1.0, 100, ...)")
    intensity_gamma: float = Field(1.0, gt=0, description="reflectivity curve: normalised value ** gamma")
    reflectivity_jitter: float = Field(0.0, ge=0, description="log-sigma of a per-material reflectivity factor "
                                                              "(drawn from the seed): sensors disagree on materials")
    dead_beams: list[int] = Field([], description="rings that never return (failed lasers)")
    weak_beams: list[int] = Field([], description="rings that lose weak_beam_missing of their returns")
    weak_beam_missing: float = Field(0.5, ge=0, le=1)
    packet_loss_prob: float = Field(0.0, ge=0, le=1, description="chance that a packet (packet_columns "
                                                                 "consecutive azimuth columns) is lost")
    packet_columns: int = Field(12, ge=1)
    blocked_sectors_deg: list[tuple[float, float]] = Field(
        [], description="azimuth sectors [from, to] (sensor frame, degrees, counter-clockwise) without returns: "
        "mount occlusions")
    self_returns: bool = Field(False, description="returns from the ego body (roof, hood) inside ego_body")
    ego_body: tuple[float, float, float, float, float, float] = Field(
        (-2.3, 2.3, -0.95, 0.95, 0.0, 1.5), description="ego body box in base_link: x0, x1, y0, y1, z0, z1 [m]")
    self_min_range: float = Field(0.3, ge=0, description="self-returns nearer than this are not reported")

    @model_validator(mode="after")
    def _check(self) -> LidarConfig:
        if self.elevations_deg and len(self.elevations_deg) != self.beams:
            raise ValueError(f"lidar.elevations_deg has {len(self.elevations_deg)} angles for {self.beams} beams")
        if len(set(self.elevations_deg)) != len(self.elevations_deg):
            raise ValueError("lidar.elevations_deg repeats an angle")
        bad = [b for b in self.dead_beams + self.weak_beams if not 0 <= b < self.beams]
        if bad:
            raise ValueError(f"lidar dead/weak beams {bad} outside 0..{self.beams - 1}")
        x0, x1, y0, y1, z0, z1 = self.ego_body
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise ValueError("lidar.ego_body must be (x0 < x1, y0 < y1, z0 < z1)")
        return self

    def elevations(self) -> list[float]:
        """Beam elevations [deg], ascending (ring order is applied on output)."""
        if self.elevations_deg:
            return sorted(self.elevations_deg)
        import numpy as np

        return np.linspace(self.elevation_min_deg, self.elevation_max_deg, self.beams).tolist()


class RadarConfig(_Section):
    enabled: bool = True
    frame_id: str = "radar_front"
    rate_hz: float = Field(15.0, gt=0)
    fov_deg: float = Field(120.0, gt=0, le=360)
    azimuth_step_deg: float = Field(0.5, gt=0)
    elevations_deg: tuple[float, ...] = (0.0, 1.5)
    max_range: float = Field(150.0, gt=0)
    detect_prob: float = Field(0.9, ge=0, le=1)
    max_detections_per_object: int = Field(3, ge=1)
    false_alarms_per_scan: float = Field(2.0, ge=0)
    range_noise: float = Field(0.15, ge=0)
    azimuth_noise_deg: float = Field(0.3, ge=0)
    velocity_noise: float = Field(0.1, ge=0)
    latency_s: float = Field(0.02, ge=0)
    mount: Mount = Mount(xyz=(3.7, 0.0, 0.5))


class CameraConfig(_Section):
    enabled: bool = True
    frame_id: str = "camera_front_optical"
    rate_hz: float = Field(12.5, gt=0)
    width: int = Field(640, ge=8)
    height: int = Field(384, ge=8)
    hfov_deg: float = Field(90.0, gt=1, lt=179)
    render_scale: int = Field(4, ge=1, description="rays cast on a grid this many times coarser, then upsampled")
    latency_s: float = Field(0.05, ge=0)
    # camera_front_optical: z forward, x right, y down (REP-103 _optical).
    mount: Mount = Mount(xyz=(1.6, 0.0, 1.5), rpy=(-1.5707963267948966, 0.0, -1.5707963267948966))

    @model_validator(mode="after")
    def _check(self) -> CameraConfig:
        if self.width % self.render_scale or self.height % self.render_scale:
            raise ValueError("camera width and height must be multiples of render_scale")
        return self


class AdversityConfig(_Section):
    """One adversity placed at a known time window [start_s, start_s + duration_s) of the scenario."""

    type: AdversityType
    start_s: float = Field(ge=0, description="seconds after the scenario start")
    duration_s: float = Field(0.0, ge=0)
    sensors: list[SensorName] = []
    offset: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="localization jump dx, dy [m], dyaw [rad]")
    frame: Literal["map", "odom"] = Field("map", description="jump in map->odom (relocalization) or odom->base_link")
    fraction: float = Field(0.0, ge=0, le=1, description="share of points made NaN/inf")
    jitter_s: float = Field(0.0, ge=0, description="max |stamp jitter|")
    rate: float = Field(0.0, ge=0, description="clutter: false returns per scan; weather: near-range returns per "
                                                "LiDAR scan at full strength")
    zone: str = ""
    weather: WeatherKind = Field("fog", description="weather: fog, rain or snow")
    visibility_m: float = Field(0.0, ge=0, description="weather: meteorological visibility at full strength [m] "
                                                       "(extinction 3 / visibility, Koschmieder)")
    ramp_s: float = Field(0.0, ge=0, description="weather: seconds from the onset (start_s) to full strength")

    @model_validator(mode="after")
    def _check(self) -> AdversityConfig:
        needs = _ADVERSITY_NEEDS[self.type]
        defaults = AdversityConfig.model_fields
        for name in ("duration_s", "sensors", "offset", "fraction", "jitter_s", "rate", "zone", "weather",
                     "visibility_m", "ramp_s"):
            value = getattr(self, name)
            if name not in needs and value != defaults[name].default:
                raise ValueError(f"adversity {self.type!r} does not use {name!r}")
        if "sensors" in needs and not self.sensors:
            raise ValueError(f"adversity {self.type!r} needs a non-empty 'sensors' list")
        if "duration_s" in needs and self.duration_s <= 0:
            raise ValueError(f"adversity {self.type!r} needs duration_s > 0")
        if self.type == "localization_jump" and not any(self.offset):
            raise ValueError("localization_jump needs a non-zero offset")
        if self.type == "nan_points" and (self.fraction <= 0 or set(self.sensors) - {"lidar", "radar"}):
            raise ValueError("nan_points needs fraction > 0 and sensors among lidar, radar")
        if self.type == "clutter" and (self.rate <= 0 or set(self.sensors) - {"lidar", "radar"}):
            raise ValueError("clutter needs rate > 0 and sensors among lidar, radar")
        if self.type == "stamp_jitter" and self.jitter_s <= 0:
            raise ValueError("stamp_jitter needs jitter_s > 0")
        if self.type == "zone_change" and not self.zone:
            raise ValueError("zone_change needs a zone name")
        if self.type == "weather" and (self.visibility_m <= 0 or set(self.sensors) - {"lidar", "camera"}):
            raise ValueError("weather needs visibility_m > 0 and sensors among lidar, camera")
        return self

    def strength(self, t_s: float) -> float:
        """Weather: 0 before the onset, ramping linearly to 1 over ramp_s, 1 until the end."""
        if not self.active(t_s):
            return 0.0
        return 1.0 if self.ramp_s <= 0 else min(1.0, (t_s - self.start_s) / self.ramp_s)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


class TrafficConfig(_Section):
    vehicles: int = Field(14, ge=0)
    trucks: int = Field(2, ge=0)
    buses: int = Field(0, ge=0, description="buses (class truck in the ground truth, 12 m long)")
    cyclists: int = Field(2, ge=0)
    pedestrians: int = Field(10, ge=0)
    pedestrian_group_max: int = Field(1, ge=1, description="crossing and sidewalk pedestrians walk in groups of "
                                                           "1..this many (extra members on top of 'pedestrians')")
    parked_fraction: float = Field(0.6, ge=0, le=1, description="share of parking places that hold a car")
    ego_speed_mps: float = Field(10.0, gt=0)


class SceneryConfig(_Section):
    """Extra static scenery (all off by default: the original layouts). Drawn from its own random
    stream, so switching it on never moves what the original layout placed."""

    vegetation: float = Field(0.0, ge=0, le=1, description="hedges along building fronts and bushes on verges")
    fences: float = Field(0.0, ge=0, le=1, description="share of building gaps / verges closed by a fence")
    poles: float = Field(0.0, ge=0, le=1, description="extra signs, bollards and signal poles")
    front_parking: float = Field(0.0, ge=0, le=1, description="share of buildings set back behind a forecourt "
                                                              "with cars parked along the front")
    kerb_height: float = Field(0.15, gt=0, le=0.3)
    slope: float = Field(0.0, ge=-0.1, le=0.1, description="grade of a hill (> 0) or dip (< 0) that starts at a "
                                                           "straight line beyond the ego's path; 0 = flat world")


class ScenarioConfig(_Section):
    name: str = "urban"
    layout: Literal["urban", "highway", "parking"] = "urban"
    seed: int = Field(0, ge=0)
    duration_s: float = Field(20.0, gt=0)
    start_time_s: int = Field(1_700_000_000, ge=0, description="stamp of the first message (fixed: determinism)")
    zone: str = Field("urban", description="value on /vehicle/zone at the start")
    traffic: TrafficConfig = TrafficConfig()
    scenery: SceneryConfig = SceneryConfig()
    lidar: LidarConfig = LidarConfig()
    radar: RadarConfig = RadarConfig()
    camera: CameraConfig = CameraConfig()
    tf_rate_hz: float = Field(50.0, ge=50.0)
    odom_scale_error: float = Field(0.01, description="relative odometry speed error (drift)")
    odom_yaw_rate_bias: float = Field(0.002, description="odometry yaw-rate bias [rad/s] (drift)")
    adversities: list[AdversityConfig] = []

    @model_validator(mode="after")
    def _check(self) -> ScenarioConfig:
        for a in self.adversities:
            if a.start_s > self.duration_s:
                raise ValueError(f"adversity {a.type!r} starts at {a.start_s} s, after the end ({self.duration_s} s)")
            disabled = [s for s in a.sensors if not getattr(self, s).enabled]
            if disabled:
                raise ValueError(f"adversity {a.type!r} names disabled sensor(s) {disabled}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml_text(cls, text: str) -> ScenarioConfig:
        return cls.model_validate(yaml.safe_load(text))
