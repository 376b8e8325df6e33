"""Named scenario presets (``ssm-perception simulate --scenario NAME``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ssm_perception.sim.config import (
    AdversityConfig,
    ScenarioConfig,
    SceneryConfig,
    TrafficConfig,
)


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


# ------------------------------------------------------------------------------ randomisation
# Training mode toward real sensors: every seed draws a LiDAR model with its datasheet beam layout,
# a mounting, noise, intensity model, beam failures, self-returns and (sometimes) fog, rain or snow
# with an onset inside the run, plus traffic and scenery. Deterministic per seed (own streams).
RANDOMISED: dict[str, str | None] = {"randomised": None, "randomised_urban": "urban",
                                     "randomised_highway": "highway", "randomised_parking": "parking"}
_LIDAR_WEIGHTS = {"generic32": 0.10, "vlp16": 0.15, "hdl32e": 0.18, "hdl64e": 0.15, "os1_64": 0.15,
                  "os1_128": 0.10, "pandar64": 0.17}


def _snap(t: float) -> float:
    return round(t / 0.05) * 0.05


def randomise_lidar(cfg: ScenarioConfig, r: np.random.Generator) -> dict:
    """LidarConfig fields of a random sensor model, mounting and failure pattern."""
    from ssm_perception.sim.lidar_models import LIDAR_MODELS

    names = list(_LIDAR_WEIGHTS)
    name = str(r.choice(names, p=np.array(list(_LIDAR_WEIGHTS.values())) / sum(_LIDAR_WEIGHTS.values())))
    m = dict(LIDAR_MODELS[name])
    n_b = m["beams"]
    if m["elevations_deg"]:  # per-unit calibration offsets of a few hundredths of a degree
        m["elevations_deg"] = [round(e + float(r.normal(0, 0.03)), 4) for e in m["elevations_deg"]]
        if len(set(m["elevations_deg"])) != n_b:
            m["elevations_deg"] = LIDAR_MODELS[name]["elevations_deg"]
    fast = r.random() < 0.1  # 20 Hz: half the columns per turn
    yaw = float(r.choice([0.0, math.pi, math.pi / 2], p=[0.85, 0.1, 0.05])) + float(r.normal(0, math.radians(1.0)))
    mount = {"xyz": (float(r.uniform(0.0, 1.6)), float(r.normal(0, 0.05)), float(r.uniform(1.6, 2.2))),
             "rpy": (float(r.normal(0, math.radians(0.5))),
                     float(np.clip(r.normal(0, math.radians(1.5)), -math.radians(4), math.radians(4))), yaw)}
    intensity = m["intensity_model"] if r.random() < 0.6 else str(
        r.choice(["incidence", "reflectivity", "signal", "none"], p=[0.25, 0.3, 0.3, 0.15]))
    out = {
        **m, "model": name, "mount": mount,
        "rate_hz": 20.0 if fast else 10.0,
        "azimuth_steps": m["azimuth_steps"] // 2 if fast else m["azimuth_steps"],
        "range_noise": round(m["range_noise"] * float(r.uniform(0.7, 2.0)), 4),
        "missing_prob": round(float(r.uniform(0.0, 0.08)), 4),
        "max_range": round(m["max_range"] * float(r.uniform(0.7, 1.0)), 1),
        "min_range": round(float(r.uniform(0.3, 2.0)), 2),
        "intensity_model": intensity,
        "intensity_max": float(r.choice([1.0, 100.0, 255.0, m["intensity_max"]])),
        "intensity_gamma": round(float(r.lognormal(0.0, 0.35)), 3),
        "reflectivity_jitter": round(float(r.uniform(0.0, 0.4)), 3),
        "self_returns": bool(r.random() < 0.35),
        "self_min_range": round(float(r.uniform(0.2, 0.8)), 2),
    }
    if r.random() < 0.15:
        out["dead_beams"] = sorted(int(b) for b in r.choice(n_b, size=int(r.integers(1, 4)), replace=False))
    if r.random() < 0.15:
        out["weak_beams"] = sorted(int(b) for b in r.choice(n_b, size=int(r.integers(1, 5)), replace=False))
        out["weak_beam_missing"] = round(float(r.uniform(0.3, 0.9)), 3)
    if r.random() < 0.15:
        out["packet_loss_prob"] = round(float(r.uniform(0.005, 0.05)), 4)
    if r.random() < 0.1:  # something on the roof behind the sensor
        c, w = float(r.uniform(150, 210)), float(r.uniform(10, 40))
        out["blocked_sectors_deg"] = [(round(c - w / 2, 1), round(c + w / 2, 1))]
    return out


def randomise_weather(cfg: ScenarioConfig, r: np.random.Generator, p: float = 0.3) -> list[AdversityConfig]:
    """With probability p: fog, rain or snow with an onset inside the run (a weather adversity,
    so /ground_truth/events carries its time window)."""
    if r.random() >= p:
        return []
    d = cfg.duration_s
    kind = str(r.choice(["fog", "rain", "snow"], p=[0.4, 0.45, 0.15]))
    vis = {"fog": r.uniform(40, 300), "rain": r.uniform(300, 2000), "snow": r.uniform(150, 800)}[kind]
    frac = {"fog": r.uniform(0.01, 0.06) * min(3.0, 100.0 / vis), "rain": r.uniform(0.001, 0.01),
            "snow": r.uniform(0.005, 0.03)}[kind]
    onset = _snap(float(r.uniform(0.0, 0.6)) * d)
    if onset >= d - 0.05:
        return []
    n_rays = cfg.lidar.beams * cfg.lidar.azimuth_steps
    sensors = ["lidar"] + (["camera"] if cfg.camera.enabled else [])
    return [AdversityConfig(type="weather", weather=kind, start_s=onset, duration_s=round(d - onset, 3),
                            sensors=sensors, visibility_m=round(float(vis), 1), rate=round(float(frac) * n_rays, 1),
                            ramp_s=round(float(r.uniform(0.0, 3.0)), 2))]


_TRAFFIC = {  # (low, high) inclusive per layout: realistic counts around the ego
    "urban": {"vehicles": (8, 22), "trucks": (0, 4), "buses": (0, 2), "cyclists": (0, 6), "pedestrians": (4, 20),
              "pedestrian_group_max": (1, 4)},
    "highway": {"vehicles": (8, 22), "trucks": (2, 8), "buses": (0, 2), "cyclists": (0, 0), "pedestrians": (0, 0),
                "pedestrian_group_max": (1, 1)},
    "parking": {"vehicles": (3, 9), "trucks": (0, 0), "buses": (0, 0), "cyclists": (0, 0), "pedestrians": (4, 14),
                "pedestrian_group_max": (1, 3)},
}
_EGO_SPEED = {"urban": (7.0, 13.0), "highway": (20.0, 30.0), "parking": (2.0, 4.0)}


def randomise(cfg: ScenarioConfig, seed: int) -> ScenarioConfig:
    """``cfg`` with a random LiDAR, traffic, scenery and weather, deterministic for ``seed``."""
    r = np.random.default_rng([int(seed), 20])
    lay = cfg.layout
    traffic = {k: int(r.integers(lo, hi + 1)) for k, (lo, hi) in _TRAFFIC[lay].items()}
    traffic["parked_fraction"] = round(float(r.uniform(0.3, 0.95)), 3)
    traffic["ego_speed_mps"] = round(float(r.uniform(*_EGO_SPEED[lay])), 2)
    scenery = SceneryConfig(vegetation=round(float(r.uniform(0, 1)), 3), fences=round(float(r.uniform(0, 0.6)), 3),
                            poles=round(float(r.uniform(0, 1)), 3), front_parking=round(float(r.uniform(0, 0.5)), 3),
                            kerb_height=round(float(r.uniform(0.1, 0.2)), 3))
    data = cfg.model_dump()
    data.update(seed=int(seed), traffic=TrafficConfig(**traffic).model_dump(), scenery=scenery.model_dump(),
                lidar={**data["lidar"], **randomise_lidar(cfg, r)})
    out = ScenarioConfig.model_validate(data)
    weather = randomise_weather(out, r)
    if weather:
        out = ScenarioConfig.model_validate({**out.model_dump(), "adversities": data["adversities"] +
                                             [w.model_dump() for w in weather]})
    if r.random() < 0.35:  # a hill or dip beyond the ego's path (2-7 % grade)
        slope = round(float(r.uniform(0.02, 0.07)) * float(r.choice([-1.0, 1.0])), 4)
        out = ScenarioConfig.model_validate({**out.model_dump(), "scenery": {**out.scenery.model_dump(),
                                                                             "slope": slope}})
    return out


_WEATHER_DEFAULTS = {"fog": (80.0, 0.03), "rain": (800.0, 0.005), "snow": (300.0, 0.015)}  # visibility, clutter


def with_overrides(cfg: ScenarioConfig, lidar_model: str = "", weather: str = "") -> ScenarioConfig:
    """``cfg`` with a named LiDAR model (sim/lidar_models.py; its mount and frame kept) and/or
    weather ``KIND[:ONSET_S[:VISIBILITY_M]]`` (fog, rain, snow) from the onset to the end of the run,
    for LiDAR and camera, with a 1 s ramp (``ssm-perception simulate --lidar-model/--weather``)."""
    from ssm_perception.sim.lidar_models import LIDAR_MODELS, lidar_config
    from ssm_perception.sim.scenario import ScenarioError

    data = cfg.model_dump()
    if lidar_model:
        if lidar_model not in LIDAR_MODELS:
            raise ScenarioError(f"unknown lidar model {lidar_model!r}; available: {', '.join(sorted(LIDAR_MODELS))}")
        keep = {k: data["lidar"][k] for k in ("enabled", "frame_id", "mount", "latency_s", "missing_prob")}
        data["lidar"] = lidar_config(lidar_model, **keep).model_dump()
    if weather:
        parts = weather.split(":")
        kind = parts[0]
        if kind not in _WEATHER_DEFAULTS or len(parts) > 3:
            raise ScenarioError(f"--weather must be KIND[:ONSET_S[:VISIBILITY_M]] with KIND fog, rain or snow, "
                                f"got {weather!r}")
        try:
            onset = float(parts[1]) if len(parts) > 1 else 0.0
            vis = float(parts[2]) if len(parts) > 2 else _WEATHER_DEFAULTS[kind][0]
        except ValueError:
            raise ScenarioError(f"--weather {weather!r}: onset and visibility must be numbers") from None
        if not (0.0 <= onset < cfg.duration_s and math.isfinite(vis) and vis > 0):
            raise ScenarioError(f"--weather {weather!r}: needs 0 <= onset < duration ({cfg.duration_s:g} s) and "
                                "visibility > 0")
        lid = ScenarioConfig.model_validate(data).lidar
        frac = _WEATHER_DEFAULTS[kind][1] * (min(3.0, 100.0 / vis) if kind == "fog" else 1.0)
        sensors = [x for x in ("lidar", "camera") if data[x]["enabled"]]
        data["adversities"] = data["adversities"] + [AdversityConfig(
            type="weather", weather=kind, start_s=onset, duration_s=round(cfg.duration_s - onset, 6), sensors=sensors,
            visibility_m=vis, rate=round(frac * lid.beams * lid.azimuth_steps, 1), ramp_s=1.0).model_dump()]
    return ScenarioConfig.model_validate(data)


def _randomised(name: str, seed: int, duration: float) -> ScenarioConfig:
    layout = RANDOMISED[name]
    if layout is None:
        r = np.random.default_rng([int(seed), 21])
        layout = str(r.choice(["urban", "highway", "parking"], p=[0.55, 0.25, 0.2]))
    base = PRESETS[layout][0](duration)
    return randomise(ScenarioConfig.model_validate({**base.model_dump(), "name": name}), seed)


def preset(name: str, seed: int = 0, duration_s: float | None = None) -> ScenarioConfig:
    """The named preset with this seed; duration_s None = the preset's own length. The
    ``randomised*`` names draw sensor and scene from the seed (``randomise``)."""
    from ssm_perception.sim.scenario import ScenarioError

    if name not in PRESETS and name not in RANDOMISED:
        raise ScenarioError(f"unknown scenario preset {name!r}; available: {', '.join(sorted(PRESETS))}; "
                            f"training: {', '.join(RANDOMISED)}")
    default = PRESETS[name][1] if name in PRESETS else 30.0
    duration = float(default if duration_s is None else duration_s)
    if duration <= 0:
        raise ScenarioError(f"duration must be > 0 s, got {duration}")
    if int(seed) < 0:
        raise ScenarioError(f"seed must be >= 0, got {seed}")
    if name in RANDOMISED:
        return _randomised(name, int(seed), duration)
    cfg = PRESETS[name][0](duration)
    return ScenarioConfig.model_validate({**cfg.model_dump(), "seed": int(seed)})
