"""Simulate a drive whose ground-truth grids match a configuration's grid.

`ssm-perception simulate` writes the truth on the schema's default grid (200 x 200 cells at 0.5 m);
`ssm-perception evaluate --config FILE` needs the bag's truth on FILE's grid. The scene, the sensors
and every message other than the truth grids are those of `ssm-perception simulate` with the same
scenario, seed and duration (the grid only sets where the truth is rasterised).

    PYTHONPATH=$PWD .venv/bin/python scripts/simulate_for_config.py config/ssm_perception_cpu.yaml \
        --seed 200000 --duration 20 -o out/heldout_cpu/urban_200000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssm_perception.config import PerceptionConfig
from ssm_perception.sim.scenario import Scenario
from ssm_perception.sim.writer import write_bag


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="PerceptionConfig YAML whose grid the truth is written on")
    ap.add_argument("--scenario", default="urban")
    ap.add_argument("--seed", type=int, default=200000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("-o", "--output", required=True, help="bag directory to create (its parent is created)")
    a = ap.parse_args(argv)
    grid = PerceptionConfig.load(a.config).grid
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bag(Scenario.from_preset(a.scenario, seed=a.seed, duration_s=a.duration, grid=grid), out, progress=False)
    print(f"wrote {out}: {a.scenario}, seed {a.seed}, {a.duration:g} s, truth on {grid.nx}x{grid.ny} at "
          f"{grid.resolution:g} m")


if __name__ == "__main__":
    main()
