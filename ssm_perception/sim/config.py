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
    "dropout", "time_gap", "localization_jump", "nan_points", "stamp_jitter", "out_of_order", "clutter", "zone_change"
]
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
    rate: float = Field(0.0, ge=0, description="clutter: false returns per scan")
    zone: str = ""

    @model_validator(mode="after")
    def _check(self) -> AdversityConfig:
        needs = _ADVERSITY_NEEDS[self.type]
        defaults = AdversityConfig.model_fields
        for name in ("duration_s", "sensors", "offset", "fraction", "jitter_s", "rate", "zone"):
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
        return self

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


class TrafficConfig(_Section):
    vehicles: int = Field(14, ge=0)
    trucks: int = Field(2, ge=0)
    cyclists: int = Field(2, ge=0)
    pedestrians: int = Field(10, ge=0)
    parked_fraction: float = Field(0.6, ge=0, le=1, description="share of parking places that hold a car")
    ego_speed_mps: float = Field(10.0, gt=0)


class ScenarioConfig(_Section):
    name: str = "urban"
    layout: Literal["urban", "highway", "parking"] = "urban"
    seed: int = Field(0, ge=0)
    duration_s: float = Field(20.0, gt=0)
    start_time_s: int = Field(1_700_000_000, ge=0, description="stamp of the first message (fixed: determinism)")
    zone: str = Field("urban", description="value on /vehicle/zone at the start")
    traffic: TrafficConfig = TrafficConfig()
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
