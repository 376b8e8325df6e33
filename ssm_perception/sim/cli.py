"""`ssm-perception simulate`: write a named scenario preset to a rosbag2."""

from __future__ import annotations

import typer


def simulate(
    scenario: str = typer.Option("urban", "--scenario", "-s",
                                 help="preset: urban, highway, parking, adversity_mix, demo; randomised, "
                                      "randomised_urban|_highway|_parking (sensor and scene drawn from the seed)"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed -> byte-identical bag)"),
    duration: float = typer.Option(0.0, "--duration", "-d", help="seconds to simulate; 0 = the preset's length"),
    output: str = typer.Option(..., "--output", "-o", help="bag directory to create (must not exist)"),
    storage: str = typer.Option("mcap", "--storage", help="mcap or sqlite3"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Simulate LiDAR, radar and camera streams with ground truth and write them as a rosbag2."""
    import time
    from pathlib import Path

    from ssm_perception.io.bag import BagError, bag_topics
    from ssm_perception.sim.scenario import Scenario, ScenarioError
    from ssm_perception.sim.writer import write_bag

    if storage not in ("mcap", "sqlite3"):
        typer.secho(f"error: --storage must be mcap or sqlite3, got {storage!r}", fg="red", err=True)
        raise typer.Exit(2)
    try:
        sc = Scenario.from_preset(scenario, seed=seed, duration_s=duration if duration > 0 else None)
    except ScenarioError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if duration < 0:
        typer.secho(f"error: --duration must be >= 0, got {duration}", fg="red", err=True)
        raise typer.Exit(2)
    t0 = time.perf_counter()
    try:
        path = write_bag(sc, Path(output), storage=storage, progress=progress)
    except BagError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.secho(f"error: cannot write {output}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    elapsed = time.perf_counter() - t0
    topics = bag_topics(path)
    n = sum(c for _, c in topics.values())
    typer.echo(f"wrote {path} ({storage}): {sc.config.name}, seed {seed}, {sc.config.duration_s:g} s, "
               f"{n} messages on {len(topics)} topics in {elapsed:.1f} s")
