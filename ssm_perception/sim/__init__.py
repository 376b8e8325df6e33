"""Scenario simulator: 2.5D driving worlds, LiDAR/radar/camera models, ground truth, adversities.

    from ssm_perception.sim import Scenario, write_bag
    sc = Scenario.from_preset("urban", seed=0, duration_s=20)
    for frame in sc.frames(): ...          # in memory (training), one SimFrame per LiDAR scan
    write_bag(sc, "out/urban_bag")        # every sensor message at its own rate, as a rosbag2

Names are imported lazily so that ``ssm-perception --help`` does not pay for numpy/pydantic.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Scenario": "ssm_perception.sim.scenario",
    "SimFrame": "ssm_perception.sim.scenario",
    "ScenarioError": "ssm_perception.sim.scenario",
    "ScenarioConfig": "ssm_perception.sim.config",
    "AdversityConfig": "ssm_perception.sim.config",
    "PRESETS": "ssm_perception.sim.presets",
    "preset": "ssm_perception.sim.presets",
    "write_bag": "ssm_perception.sim.writer",
}

__all__ = ["PRESETS", "AdversityConfig", "Scenario", "ScenarioConfig", "ScenarioError", "SimFrame", "preset", "write_bag"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssm_perception.sim' has no attribute {name!r}")
