"""`ssm-perception simulate`: write a named scenario preset to a rosbag2."""

from __future__ import annotations

import typer

from ssm_perception.cli_errors import finite
from ssm_perception.config import MAX_DURATION_S


def simulate(
    scenario: str = typer.Option("urban", "--scenario", "-s",
                                 help="preset: urban, highway, parking, adversity_mix, demo; randomised, "
                                      "randomised_urban|_highway|_parking (sensor and scene drawn from the seed)"),
    seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1, help="random seed (same seed -> byte-identical bag)"),
    duration: float = typer.Option(0.0, "--duration", "-d", callback=finite(ge=0, le=MAX_DURATION_S),
                                   help="seconds to simulate; 0 = the preset's length"),
    output: str = typer.Option(..., "--output", "-o", help="bag directory to create (must not exist)"),
    storage: str = typer.Option("mcap", "--storage", help="mcap or sqlite3"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    lidar_model: str = typer.Option("", "--lidar-model", help="LiDAR with a datasheet layout: vlp16, hdl32e, "
                                    "hdl64e, os1_64, os1_128, pandar64, generic32; '' = the preset's"),
    weather: str = typer.Option("", "--weather", help="KIND[:ONSET_S[:VISIBILITY_M]], KIND fog|rain|snow: "
                                "weather from the onset to the end (listed in /ground_truth/events)"),
) -> None:
    """Simulate LiDAR, radar and camera streams with ground truth and write them as a rosbag2."""
    import time
    from pathlib import Path

    from ssm_perception.cli_errors import UsageProblem
    from ssm_perception.io.bag import bag_topics
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    # ScenarioError, BagError and OSError become one line and exit code 2 in cli_errors.CliGroup.
    if storage not in ("mcap", "sqlite3"):
        raise UsageProblem(f"--storage must be mcap or sqlite3, got {storage!r}")
    from ssm_perception.sim.presets import preset, with_overrides

    cfg = preset(scenario, seed=seed, duration_s=duration if duration > 0 else None)
    sc = Scenario(with_overrides(cfg, lidar_model, weather) if (lidar_model or weather) else cfg)
    t0 = time.perf_counter()
    path = write_bag(sc, Path(output), storage=storage, progress=progress)
    elapsed = time.perf_counter() - t0
    topics = bag_topics(path)
    n = sum(c for _, c in topics.values())
    typer.echo(f"wrote {path} ({storage}): {sc.config.name}, seed {seed}, {sc.config.duration_s:g} s, "
               f"{n} messages on {len(topics)} topics in {elapsed:.1f} s")
