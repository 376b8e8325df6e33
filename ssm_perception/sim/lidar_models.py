"""Spinning-LiDAR models with the beam layouts of common sensors, from their public datasheets.

Each model is a partial ``LidarConfig`` (beams, elevations, columns per turn at 10 Hz, range,
noise, ring order, intensity scale); ``lidar_config(name, **overrides)`` builds the full config.
Angles are the nominal datasheet layouts (real units carry per-unit calibration offsets, which
``jitter`` in the randomiser stands in for); per-laser azimuth offsets are not modelled (every
beam of a column fires at the same azimuth).
"""

from __future__ import annotations

import numpy as np

from ssm_perception.sim.config import LidarConfig


def _uniform(top: float, bottom: float, n: int) -> list[float]:
    return np.round(np.linspace(bottom, top, n), 4).tolist()


def _hdl64e() -> list[float]:
    # Two blocks of 32 lasers: upper +2 .. -8.33 deg (1/3 deg spacing), lower -8.87 .. -24.87 deg
    # (~1/2 deg spacing): 26.9 deg vertical field of view, denser towards the horizon.
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.87, -24.87, 32)
    return np.round(np.concatenate([upper, lower]), 4).tolist()


def _pandar64() -> list[float]:
    # Pandar64-class: +15 .. -25 deg, 0.167 deg spacing in the band +2 .. -6 deg around the horizon,
    # coarse (1 to 6 deg) above and below it.
    top = [15.0, 11.0, 8.0, 5.0, 3.0]
    band = np.linspace(2.0, -6.0, 49)
    bottom = [-7.0, -8.0, -9.0, -10.0, -11.0, -12.0, -13.0, -14.0, -19.0, -25.0]
    return np.round(np.concatenate([top, band, bottom]), 4).tolist()


# name -> LidarConfig fields. Columns per turn at 10 Hz from the datasheet horizontal resolution.
LIDAR_MODELS: dict[str, dict] = {
    # the original simulator sensor (kept as the default of LidarConfig)
    "generic32": {"beams": 32, "elevations_deg": [], "elevation_min_deg": -25.0, "elevation_max_deg": 15.0,
                  "azimuth_steps": 1800, "max_range": 100.0, "range_noise": 0.02, "ring_order": "bottom_up",
                  "intensity_model": "incidence", "intensity_max": 255.0},
    # Velodyne VLP-16: 16 beams, +-15 deg, 2 deg spacing; 0.2 deg at 10 Hz; 100 m; +-3 cm
    "vlp16": {"beams": 16, "elevations_deg": _uniform(15.0, -15.0, 16), "azimuth_steps": 1800, "max_range": 100.0,
              "range_noise": 0.015, "ring_order": "bottom_up", "intensity_model": "reflectivity",
              "intensity_max": 255.0},
    # Velodyne HDL-32E: 32 beams, +10.67 .. -30.67 deg (1.33 deg); ~0.16 deg at 10 Hz; 100 m; +-2 cm
    "hdl32e": {"beams": 32, "elevations_deg": _uniform(10.67, -30.67, 32), "azimuth_steps": 2170,
               "max_range": 100.0, "range_noise": 0.01, "ring_order": "bottom_up", "intensity_model": "reflectivity",
               "intensity_max": 255.0},
    # Velodyne HDL-64E (S2/S3): 64 beams, +2 .. -24.9 deg in two blocks; ~0.17 deg at 10 Hz; 120 m
    "hdl64e": {"beams": 64, "elevations_deg": _hdl64e(), "azimuth_steps": 2083, "max_range": 120.0,
               "range_noise": 0.02, "ring_order": "bottom_up", "intensity_model": "reflectivity",
               "intensity_max": 255.0},
    # Ouster OS1-64 (rev 6+): 64 beams, +-22.5 deg uniform; 1024 columns at 10 Hz; 120 m; signal as
    # intensity (ring 0 is the top beam in Ouster's driver)
    "os1_64": {"beams": 64, "elevations_deg": _uniform(22.5, -22.5, 64), "azimuth_steps": 1024, "max_range": 120.0,
               "range_noise": 0.03, "ring_order": "top_down", "intensity_model": "signal", "intensity_max": 1000.0},
    # Ouster OS1-128: 128 beams, +-22.5 deg uniform; 1024 columns at 10 Hz
    "os1_128": {"beams": 128, "elevations_deg": _uniform(22.5, -22.5, 128), "azimuth_steps": 1024,
                "max_range": 120.0, "range_noise": 0.03, "ring_order": "top_down", "intensity_model": "signal",
                "intensity_max": 1000.0},
    # Hesai Pandar64-class: 64 beams, +15 .. -25 deg non-uniform; 0.2 deg at 10 Hz; 200 m
    "pandar64": {"beams": 64, "elevations_deg": _pandar64(), "azimuth_steps": 1800, "max_range": 200.0,
                 "range_noise": 0.02, "ring_order": "bottom_up", "intensity_model": "reflectivity",
                 "intensity_max": 255.0},
}


def lidar_config(name: str, **overrides) -> LidarConfig:
    """The LidarConfig of a named model (``LIDAR_MODELS``), with field overrides (mount, noise...)."""
    if name not in LIDAR_MODELS:
        raise ValueError(f"unknown lidar model {name!r}; available: {', '.join(sorted(LIDAR_MODELS))}")
    return LidarConfig.model_validate({**LIDAR_MODELS[name], "model": name, **overrides})
