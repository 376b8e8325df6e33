#!/usr/bin/env python3
"""Tracking metrics (MOTA, MOTP, IDF1, IDS, Frag, MT/ML, HOTA) per class on ground-truth sequences.

Ground truth: the simulator run in-process (--preset, seeds = simulator seeds), simulated bags
(--bag: /ground_truth/objects + /tf; sensor topics too for learned detections), or the hand-made
crossing scenario (--scenario crossing).
Detections (--detections, repeatable; every source feeds the same tracker):

    synthetic     SYNTHETIC detections perturbed from the ground truth (measures the tracker only)
    model         PerceptionPipeline with the configured temporal model (--checkpoint)
    single-frame  PerceptionPipeline with model.kind 'single': the AB3DMOT-style baseline
                  (--baseline-checkpoint)

Scored (ssm_perception/eval/tracking.py has the reasons): confirmed and coasting tracks in
odom at the LiDAR stamp, inside the BEV grid; ground truth inside the grid with at least one LiDAR
return (without returns: ignored, a track on it is neither a hit nor a false positive); per class,
2D centre distance <= 2 m. With --preset, learned detections are cached per seed (--cache-dir), so
a second run or another tracking setting does not re-run the network. --tuning gives each learned
source the settings scripts/tune_tracking.py chose for it on the validation seeds (fair to both).
Report held-out seeds only (200000+; training uses 0-47, tuning 100000+): the results file says.

Examples:
    .venv/bin/python scripts/eval_tracking.py --scenario crossing --seed 0 --seed 1 --seed 2
    .venv/bin/python scripts/eval_tracking.py --preset urban --seed 200000 --seed 200001 --duration 20 \\
        --detections model --detections single-frame --tuning results/tracking_tuning.json \\
        --out results/tracking_urban_heldout.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ssm_perception.config import ConfigError, PerceptionConfig, TrackingConfig
from ssm_perception.eval.synthetic import crossing_scenario
from ssm_perception.eval.tracking import (
    SupportStats,
    bag_sequence,
    cache_sim_detections,
    cache_sim_many,
    evaluate_tracking,
    load_gt_frames,
    pipeline_source,
    sim_sequence,
    synthetic_source,
)

SOURCES = ("synthetic", "model", "single-frame")
# metric key -> column header
TABLE_COLUMNS = {"mota": "MOTA", "motp": "MOTP[m]", "idf1": "IDF1", "hota": "HOTA", "id_switches": "IDS",
                 "fragmentations": "Frag", "mostly_tracked": "MT", "mostly_lost": "ML", "false_positives": "FP",
                 "misses": "FN", "num_gt": "GT"}

HELD_OUT_SEEDS = 200_000  # simulator seeds >= this are never used for training (0-47) or tuning (100000+)
EVALUATED = ("confirmed + coasting tracks inside the BEV grid, odom, at the LiDAR stamp; ground truth inside the "
             "grid with >= 1 LiDAR return counted, without returns ignored (tracks on it neither TP nor FP); "
             "per class, centre distance <= 2 m")

app = typer.Typer(add_completion=False)


def print_table(metrics: dict[str, dict[str, float]], title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    table.add_column("class")
    for header in TABLE_COLUMNS.values():
        table.add_column(header, justify="right")
    for name, row in metrics.items():
        table.add_row(name, *(f"{row[c]:.3f}" if c in ("mota", "motp", "idf1", "hota") else f"{row[c]:.0f}"
                              for c in TABLE_COLUMNS))
    (console or Console(width=120)).print(table)


def print_ranges(breakdown: dict[str, list[dict]], title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    for col in ("class", "range [m]", "GT", "recall", "tracks", "FP"):
        table.add_column(col, justify="right")
    for name, rows in breakdown.items():
        for r in rows:
            if r["num_gt"] or r["num_hyp"]:
                table.add_row(name, r["range_m"], f"{r['num_gt']}", f"{r['recall']:.3f}", f"{r['num_hyp']}",
                              f"{r['false_positives']}")
    (console or Console(width=120)).print(table)


def _decoded_lazily(path: Path, cfg: PerceptionConfig):
    """A bag decodes when its turn comes: decoded sensor data of several bags need not fit in memory."""
    yield from bag_sequence(path, cfg)


def _json_safe(v):
    """NaN (e.g. MOTP without a single match) becomes null: strict JSON has no NaN."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@app.command()
def main(
    bag: Annotated[list[Path] | None, typer.Option(help="simulated bag(s) with /ground_truth/objects and /tf")] = None,
    preset: Annotated[str, typer.Option(help="run the simulator in-process with this preset (e.g. urban)")] = "",
    scenario: Annotated[str, typer.Option(help="hand-made ground truth: 'crossing'")] = "",
    seeds: Annotated[list[int] | None, typer.Option(
        "--seed", help="repeatable; simulator seeds with --preset, detection-noise seeds otherwise")] = None,
    duration: Annotated[float | None, typer.Option(help="--preset: seconds per run (default: the preset's)")] = None,
    detections: Annotated[list[str] | None, typer.Option(
        help="repeatable detection source: " + " | ".join(SOURCES))] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="weights for --detections model")] = None,
    baseline_checkpoint: Annotated[Path | None, typer.Option(help="weights for --detections single-frame")] = None,
    config: Annotated[Path | None, typer.Option(help="ssm_perception YAML (tracking, grid, model, frames)")] = None,
    tuning: Annotated[Path | None, typer.Option(
        help="results of scripts/tune_tracking.py: each learned source runs with the tracking settings tuned "
             "for it (default: the config's tracking section for every source)")] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        help="--preset with learned sources: cache of their detections (network runs once per seed)")] = Path(
        "out/tracking_cache"),
    floor: Annotated[float, typer.Option(help="decoder score floor of cached detections")] = 0.15,
    workers: Annotated[int, typer.Option(help="seeds simulated + detected in parallel processes")] = 1,
    device: Annotated[str, typer.Option(help="where the network runs: cpu | cuda (default: the config's)")] = "",
    cache_only: Annotated[bool, typer.Option(help="only fill the detection cache")] = False,
    track_rule: Annotated[str, typer.Option(
        help="the track rule (section track_support, tracking/support.py) after the tracker: on | off | both "
             "(both: every source twice, the second as '<source> (no track rule)')")] = "on",
    out: Annotated[Path, typer.Option(help="metrics JSON")] = Path("results/tracking_metrics.json"),
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    sources = detections or ["synthetic"]
    seeds = seeds or [0]
    if track_rule not in ("on", "off", "both"):
        raise typer.BadParameter(f"--track-rule must be on, off or both, got {track_rule!r}")
    variants = {"on": [True], "off": [False], "both": [True, False]}[track_rule]
    for s in sources:
        if s not in SOURCES:
            raise typer.BadParameter(f"--detections must be one of {SOURCES}, got {s!r}")
    if sum(map(bool, (bag, preset, scenario))) != 1:
        raise typer.BadParameter("give exactly one of --bag (repeatable), --preset or --scenario")
    if scenario and scenario != "crossing":
        raise typer.BadParameter(f"unknown scenario {scenario!r} (available: crossing)")
    if scenario and set(sources) - {"synthetic"}:
        raise typer.BadParameter("learned detections need sensor data: use --preset or --bag (the crossing "
                                 "scenario is ground truth only)")
    try:
        cfg = PerceptionConfig.load(config, device)
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    tracking_of = {s: cfg.tracking for s in sources}
    if tuning is not None:
        tuned = json.loads(tuning.read_text())["sources"]
        for s in sources:
            if s in tuned:
                tracking_of[s] = TrackingConfig.model_validate(tuned[s]["chosen"])
            elif s != "synthetic":
                raise typer.BadParameter(f"{tuning} has no tuned settings for {s!r} (has {sorted(tuned)})")
    learned = [s for s in sources if s != "synthetic"]
    ckpts = {"model": str(checkpoint or ""), "single-frame": str(baseline_checkpoint or "")}

    console = Console(width=120)
    caches = []
    if preset and learned:
        try:
            caches = cache_sim_many(preset, seeds, duration, cfg, learned, floor, cache_dir, ckpts, workers, progress) \
                if cache_dir is not None else [cache_sim_detections(preset, seed, duration, cfg, learned, floor, None,
                                                                    progress, ckpts) for seed in seeds]
        except RuntimeError as exc:
            raise typer.BadParameter(str(exc)) from exc
        if cache_only:
            return
    results, match_m = {}, None
    for source_name, rule_on in [(s, v) for s in sources for v in variants]:
        src_cfg = cfg.model_copy(deep=True)
        ckpt = checkpoint if source_name == "model" else baseline_checkpoint
        if ckpt is not None:
            src_cfg.model.checkpoint = str(ckpt)
            src_cfg.model.allow_untrusted_weights = True  # named on the command line (a warning is logged)
        sequences, names, model_info, saturated = [], [], None, None
        if preset and source_name != "synthetic":
            sequences = [c.sequence(source_name) for c in caches]
            names = [c.name for c in caches]
            model_info = caches[0].model_info[source_name]
            saturated = sum(c.saturated_frames(source_name) for c in caches)
        elif preset:
            for seed in seeds:
                sequences.append((sim_sequence(preset, seed, duration, src_cfg), synthetic_source(cfg.grid, seed)))
                names.append(f"sim:{preset}:seed{seed}")
        elif scenario:
            for seed in seeds:
                sequences.append((crossing_scenario(), synthetic_source(cfg.grid, seed)))
                names.append(f"scenario:{scenario}:noise_seed{seed}")
        else:
            for k, path in enumerate(bag):
                if source_name == "synthetic":
                    sequences.append((load_gt_frames(path, cfg.frames.odom, cfg.frames.base_link),
                                      synthetic_source(cfg.grid, seeds[k % len(seeds)])))
                else:
                    try:
                        source = pipeline_source(src_cfg, source_name)  # fresh state and tracker per bag
                    except RuntimeError as exc:
                        raise typer.BadParameter(str(exc)) from exc
                    model_info = source.model_info
                    sequences.append((_decoded_lazily(path, src_cfg), source))
                names.append(str(path))
        stats = SupportStats()
        evaluator = evaluate_tracking(sequences, tracking_of[source_name], cfg.grid, progress=progress,
                                      support=cfg.track_support if rule_on else None, stats=stats)
        metrics = evaluator.compute()
        match_m = evaluator.max_distance_m
        key = source_name if rule_on or track_rule == "off" else f"{source_name} (no track rule)"
        results[key] = {
            "synthetic_detections": source_name == "synthetic",
            "note": ("SYNTHETIC detections perturbed from ground truth: these numbers measure the tracker, "
                     "not the perception model") if source_name == "synthetic" else "",
            "model": model_info,
            "sequences": names,
            "num_frames": evaluator.num_frames,
            "tracking_config": tracking_of[source_name].model_dump(),
            "frames_at_decoder_cap": saturated,
            "track_rule": cfg.track_support.model_dump() if rule_on else None,
            "track_support": stats.summary() if stats.instances else None,
            "metrics": metrics,
            "range_breakdown": evaluator.range_breakdown(),
        }
        if stats.instances:
            sm = stats.summary()
            console.print(f"{key}: tracks without returns {sm['unsupported_share']:.3f} of {stats.instances}, "
                          f"withheld {stats.withheld_unsupported} unsupported + {stats.withheld_static} static + "
                          f"{stats.withheld_shape} on structure, "
                          f"standing-car recall {sm['standing_car_recall']}")
        print_table(metrics, f"tracking, detections = {key}"
                    f"{' (SYNTHETIC)' if source_name == 'synthetic' else ''}", console)
        print_ranges(evaluator.range_breakdown(), f"by distance from the ego, detections = {source_name}", console)

    held_out = bool(preset) and all(s >= HELD_OUT_SEEDS for s in seeds)
    result = {
        "command": " ".join(["scripts/eval_tracking.py", *sys.argv[1:]]),
        "match_threshold_m": match_m,
        "evaluated": EVALUATED,
        "held_out_seeds": held_out if preset else None,
        "tuning": str(tuning) if tuning else None,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(result), indent=2, default=str))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
