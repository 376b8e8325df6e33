"""Named scenario presets (``ssm-perception simulate --scenario NAME``)."""

from __future__ import annotations

from collections.abc import Callable

from ssm_perception.sim.config import AdversityConfig, ScenarioConfig, TrafficConfig


def _urban(duration: float) -> ScenarioConfig:
    return ScenarioConfig(name="urban", layout="urban", duration_s=duration, zone="urban")


def _highway(duration: float) -> ScenarioConfig:
    return ScenarioConfig(
        name="highway", layout="highway", duration_s=duration, zone="highway",
        traffic=TrafficConfig(vehicles=14, trucks=4, cyclists=0, pedestrians=0, ego_speed_mps=25.0),
    )


def _parking(duration: float) -> ScenarioConfig:
    return ScenarioConfig(
        name="parking", layout="parking", duration_s=duration, zone="parking",
        traffic=TrafficConfig(vehicles=6, trucks=0, cyclists=0, pedestrians=8, parked_fraction=0.7,
                              ego_speed_mps=3.0),
    )


def _at(duration: float, fraction: float) -> float:
    """A time at this fraction of the run, on a 0.05 s grid (clear of sensor stamps' rounding)."""
    return round(duration * fraction / 0.05) * 0.05


def _adversity_mix(duration: float) -> ScenarioConfig:
    d = duration
    adv = [
        AdversityConfig(type="dropout", start_s=_at(d, 0.10), duration_s=max(0.35, _at(d, 0.06)), sensors=["lidar"]),
        AdversityConfig(type="dropout", start_s=_at(d, 0.20), duration_s=max(0.3, _at(d, 0.05)), sensors=["radar"]),
        AdversityConfig(type="dropout", start_s=_at(d, 0.30), duration_s=max(0.3, _at(d, 0.05)), sensors=["camera"]),
        AdversityConfig(type="time_gap", start_s=_at(d, 0.40), duration_s=max(0.5, _at(d, 0.10))),
        AdversityConfig(type="localization_jump", start_s=_at(d, 0.55) + 0.025, offset=(2.5, -1.5, 0.15),
                        frame="map"),
        AdversityConfig(type="localization_jump", start_s=_at(d, 0.62) + 0.025, offset=(3.0, 0.5, 0.3),
                        frame="odom"),
        AdversityConfig(type="nan_points", start_s=_at(d, 0.65), duration_s=max(0.3, _at(d, 0.05)),
                        sensors=["lidar", "radar"], fraction=0.02),
        AdversityConfig(type="stamp_jitter", start_s=_at(d, 0.70), duration_s=max(0.3, _at(d, 0.08)),
                        sensors=["lidar", "radar", "camera"], jitter_s=0.015),
        AdversityConfig(type="out_of_order", start_s=_at(d, 0.80), duration_s=max(0.4, _at(d, 0.06)),
                        sensors=["lidar", "radar"]),
        AdversityConfig(type="clutter", start_s=_at(d, 0.86), duration_s=max(0.3, _at(d, 0.08)),
                        sensors=["lidar", "radar"], rate=3000.0),
        AdversityConfig(type="zone_change", start_s=_at(d, 0.50) + 0.025, zone="urban_rain"),
    ]
    return ScenarioConfig(name="adversity_mix", layout="urban", duration_s=duration, zone="urban", adversities=adv)


def _demo(duration: float) -> ScenarioConfig:
    d = duration
    adv = [
        AdversityConfig(type="localization_jump", start_s=_at(d, 0.5) + 0.025, offset=(3.0, -1.0, 0.25),
                        frame="odom"),
        AdversityConfig(type="dropout", start_s=_at(d, 0.72), duration_s=max(0.5, _at(d, 0.1)), sensors=["lidar"]),
    ]
    return ScenarioConfig(name="demo", layout="urban", duration_s=duration, zone="urban", adversities=adv)


PRESETS: dict[str, tuple[Callable[[float], ScenarioConfig], float]] = {
    "urban": (_urban, 20.0),
    "highway": (_highway, 20.0),
    "parking": (_parking, 20.0),
    "adversity_mix": (_adversity_mix, 20.0),
    "demo": (_demo, 12.0),
}


def preset(name: str, seed: int = 0, duration_s: float | None = None) -> ScenarioConfig:
    """The named preset with this seed; duration_s None = the preset's own length."""
    from ssm_perception.sim.scenario import ScenarioError

    if name not in PRESETS:
        raise ScenarioError(f"unknown scenario preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    make, default = PRESETS[name]
    duration = float(default if duration_s is None else duration_s)
    if duration <= 0:
        raise ScenarioError(f"duration must be > 0 s, got {duration}")
    if int(seed) < 0:
        raise ScenarioError(f"seed must be >= 0, got {seed}")
    cfg = make(duration)
    return ScenarioConfig.model_validate({**cfg.model_dump(), "seed": int(seed)})
