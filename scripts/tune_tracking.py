#!/usr/bin/env python3
"""Tune detection selection and tracker settings per detection source on VALIDATION seeds only.

Seeds: the training data uses simulator seeds 0-143 (see the model card), the held-out evaluation
200000+; tuning is restricted to 100000-199999 (refused otherwise) so no reported number is tuned on
its own data.

Each learned source ('model' = the temporal model, 'single-frame' = the AB3DMOT-style baseline) is
run once per seed through PerceptionPipeline and its detections above a low score floor are cached
(out/tracking_cache; a new checkpoint gets a new cache). Then coordinate ascent over the cached
detections, the same procedure and grids for every source:

    score_threshold per class   all four classes swept together, each class keeps its own best
    nms_radius_m per class      (per-class MOTA; classes are scored separately)
    min_evidence                pooled MOTA over all classes
    confirm_hits, max_coast_s, detection_probability    pooled MOTA

Per-class choices maximise that class's MOTA (ties: IDF1, then the larger threshold / radius); a
class without validation ground truth keeps the value with the fewest false positives. Pooled
MOTA = 1 - sum(FN + FP + IDS) / sum(GT) over classes. Writes results/tracking_tuning.json (every
sweep point, the chosen settings per source, their validation metrics) and prints the choices and
a YAML block for config/ssm_perception.yaml.

    .venv/bin/python scripts/tune_tracking.py --seed 100000 --seed 100001 --seed 100002 --duration 20
"""

from __future__ import annotations

import json
import math
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
import yaml
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from ssm_perception.config import ConfigError, PerceptionConfig, TrackingConfig
from ssm_perception.eval.tracking import (
    cache_sim_many,
    evaluate_cached,
)

VALIDATION_SEEDS = range(100_000, 200_000)
LEARNED_SOURCES = ("model", "single-frame")
CLASSES = ("car", "truck", "cyclist", "pedestrian")
# Search grids (shared by all sources).
THRESHOLDS = tuple(float(round(t, 2)) for t in np.arange(0.15, 0.951, 0.05))
NMS_RADII = {  # index k of every list is tried together
    "car": (0.0, 1.0, 2.0, 3.0, 4.0),
    "truck": (0.0, 2.0, 3.0, 4.5, 6.0),
    "cyclist": (0.0, 0.5, 1.0, 1.5, 2.0),
    "pedestrian": (0.0, 0.3, 0.5, 0.75, 1.0),
}
MIN_EVIDENCE = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
GATE_MAHALANOBIS = (11.83, 25.0, 50.0, 100.0, 200.0)  # chi2 3 dof 99.2 %, then wider: R may be optimistic
CONFIRM_HITS = (1, 2, 3, 4, 5)
MAX_COAST_S = (0.5, 1.0, 1.5, 2.5)
DETECTION_PROBABILITY = (0.3, 0.5, 0.7)
REPORT_COAST_S = (0.3, 0.5, 1.0, 1.5, 2.5)  # a track coasting longer is withheld (kept alive to max_coast_s)
LOW_SCORE_THRESHOLD = (0.0, 0.15, 0.2)  # second stage off, or from the cache's score floor up
OBJECTIVES = ("mota", "mota+idf1")  # what coordinate ascent maximizes (the targets name both)
KEPT_METRICS = ("mota", "idf1", "hota", "id_switches", "false_positives", "misses", "num_gt", "num_matches")

app = typer.Typer(add_completion=False)


def _score(metrics: dict[str, dict[str, float]], tracking: TrackingConfig) -> dict:
    """Compact per-class metrics plus the pooled numbers used as objectives."""
    per_class = {c: {k: float(metrics[c][k]) for k in KEPT_METRICS} for c in metrics}
    gt = sum(m["num_gt"] for m in per_class.values())
    errors = sum(m["false_positives"] + m["misses"] + m["id_switches"] for m in per_class.values())
    pooled_mota = 1.0 - errors / gt if gt else -math.inf
    # IDF1 pooled over classes, weighted by their ground truth (as MOTA pools errors over GT)
    pooled_idf1 = (sum(m["idf1"] * m["num_gt"] for m in per_class.values() if math.isfinite(m["idf1"])) / gt
                   if gt else 0.0)
    return {"per_class": per_class, "pooled_mota": pooled_mota, "pooled_idf1": pooled_idf1,
            "pooled_objective": pooled_mota if _OBJECTIVE[0] == "mota" else 0.5 * (pooled_mota + pooled_idf1),
            "pooled_errors": errors, "num_gt": gt}


_OBJECTIVE = ["mota"]  # set once by main (and by each worker): "mota" or "mota+idf1"


def _class_key(row: dict, cls: str, value: float) -> tuple:
    """Sort key (higher is better) of one sweep point for one class."""
    m = row["per_class"].get(cls)
    if m is None:  # neither truth nor tracks of this class: nothing to lose
        return (1, 0.0, 0.0, value)
    if m["num_gt"] == 0:  # no truth: fewest false positives
        return (0, -m["false_positives"], 0.0, value)
    mota = m["mota"] if math.isfinite(m["mota"]) else -math.inf
    idf1 = m["idf1"] if math.isfinite(m["idf1"]) else 0.0
    if _OBJECTIVE[0] == "mota+idf1":
        return (1, 0.5 * (mota + idf1), mota, value)
    return (1, mota, idf1, value)


# Sweep points are independent: with --jobs N each worker process loads the cached detections once
# and scores the settings it is handed.
_WORKER: dict = {}


def _init_worker(preset, seeds, duration, cfg_data, sources, floor, cache_dir, ckpts, objective="mota") -> None:
    _OBJECTIVE[0] = objective
    cfg = PerceptionConfig.model_validate(cfg_data)
    _WORKER["caches"] = cache_sim_many(preset, seeds, duration, cfg, sources, floor, cache_dir, ckpts)
    _WORKER["grid"] = cfg.grid


def _evaluate(job: tuple[str, dict]) -> dict:
    source, tracking_data = job
    tracking = TrackingConfig.model_validate(tracking_data)
    return _score(evaluate_cached(_WORKER["caches"], source, tracking, _WORKER["grid"]).compute(), tracking)


class Tuner:
    def __init__(self, source: str, start: TrackingConfig, pool, progress: bool):
        self.source, self.pool, self.progress = source, pool, progress
        self.best = start.model_copy(deep=True)
        self.sweeps: list[dict] = []
        self.best_score: dict | None = None  # pooled score of self.best (set by start())

    def start(self) -> dict:
        row = {"param": "start", "value": None, **self.evaluate(self.best)}
        self.sweeps.append(row)
        self.best_score = row
        return row

    def _accept(self, candidate: TrackingConfig, score: dict) -> None:
        """Coordinate ascent never goes down: a step is kept only if the pooled objective does not drop."""
        if score["pooled_objective"] >= self.best_score["pooled_objective"]:
            self.best, self.best_score = candidate, score

    def evaluate(self, tracking: TrackingConfig) -> dict:
        return _evaluate((self.source, tracking.model_dump()))

    def _sweep(self, name: str, candidates: list[tuple[object, TrackingConfig]]) -> list[dict]:
        jobs = [(self.source, t.model_dump()) for _, t in candidates]
        scores = self.pool.imap(_evaluate, jobs) if self.pool is not None else map(_evaluate, jobs)
        rows = []
        for (value, _), score in tqdm(zip(candidates, scores, strict=True), total=len(jobs),
                                      desc=f"{self.source}: {name}", unit="setting", disable=not self.progress,
                                      leave=False):
            row = {"param": name, "value": value, **score}
            rows.append(row)
            self.sweeps.append(row)
        return rows

    def per_class(self, name: str, values_per_class: dict[str, tuple]) -> None:
        """Sweep a PerClass field: point k sets every class to its k-th value; each class keeps its best."""
        n = len(next(iter(values_per_class.values())))
        candidates = []
        for k in range(n):
            t = self.best.model_copy(deep=True)
            setattr(t, name, getattr(t, name).model_copy(update={c: values_per_class[c][k] for c in CLASSES}))
            candidates.append(({c: values_per_class[c][k] for c in CLASSES}, t))
        rows = self._sweep(name, candidates)
        chosen = {}
        for c in CLASSES:
            k = max(range(n), key=lambda k: _class_key(rows[k], c, values_per_class[c][k]))
            chosen[c] = values_per_class[c][k]
        # classes interact a little (car/truck NMS and association), so the combination is scored itself
        candidate = self.best.model_copy(deep=True)
        setattr(candidate, name, getattr(candidate, name).model_copy(update=chosen))
        score = {"param": f"{name} (combined)", "value": chosen, **self.evaluate(candidate)}
        self.sweeps.append(score)
        self._accept(candidate, score)

    def pooled(self, name: str, values: tuple) -> None:
        """Sweep one scalar field; keep the value with the best pooled objective (ties: the current value)."""
        current = getattr(self.best, name)
        candidates = [(v, self.best.model_copy(deep=True, update={name: v})) for v in values]
        rows = self._sweep(name, candidates)
        best = max(rows, key=lambda r: (r["pooled_objective"], r["value"] == current))
        self._accept(self.best.model_copy(deep=True, update={name: best["value"]}), best)


@app.command()
def main(
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="validation simulator seeds (100000-199999)")] = None,
    preset: Annotated[str, typer.Option(help="simulator preset")] = "urban",
    duration: Annotated[float, typer.Option(help="seconds per run")] = 20.0,
    detections: Annotated[list[str] | None, typer.Option(help="repeatable: model | single-frame")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="weights for 'model' (default: shipped)")] = None,
    baseline_checkpoint: Annotated[Path | None, typer.Option(help="weights for 'single-frame'")] = None,
    floor: Annotated[float, typer.Option(help="decoder score floor of the cached detections")] = 0.15,
    rounds: Annotated[int, typer.Option(help="coordinate-ascent rounds")] = 1,
    start: Annotated[Path | None, typer.Option(
        help="an earlier results file: each source starts from the settings chosen there (one more round "
             "without redoing the first)")] = None,
    config: Annotated[Path | None, typer.Option(help="PerceptionConfig YAML (default: built-in defaults)")] = None,
    cache_dir: Annotated[Path, typer.Option(help="detection cache")] = Path("out/tracking_cache"),
    device: Annotated[str, typer.Option(help="where the network runs while caching: cpu | cuda")] = "",
    workers: Annotated[int, typer.Option(help="seeds cached in parallel processes")] = 1,
    cache_only: Annotated[bool, typer.Option(help="only fill the detection cache (e.g. on the GPU machine)")] = False,
    jobs: Annotated[int, typer.Option(help="processes scoring sweep points in parallel")] = 1,
    objective: Annotated[str, typer.Option(help="what to maximize: 'mota', or 'mota+idf1' (their mean)")] = "mota",
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/tracking_tuning.json"),
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    if objective not in OBJECTIVES:
        raise typer.BadParameter(f"--objective must be one of {OBJECTIVES}, got {objective!r}")
    _OBJECTIVE[0] = objective
    seeds = seeds or [100_000, 100_001, 100_002]
    bad = [s for s in seeds if s not in VALIDATION_SEEDS]
    if bad:
        raise typer.BadParameter(f"seeds {bad} are not validation seeds: tune on 100000-199999 only (0-143 train the "
                                 "model, 200000+ are the held-out evaluation)")
    sources = detections or list(LEARNED_SOURCES)
    if set(sources) - set(LEARNED_SOURCES):
        raise typer.BadParameter(f"--detections must be among {LEARNED_SOURCES}, got {sources}")
    if not 0.0 < floor <= min(THRESHOLDS):
        raise typer.BadParameter(f"--floor must be in (0, {min(THRESHOLDS)}]")
    try:
        cfg = PerceptionConfig.load(config, device)
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console(width=120)
    t0 = time.time()
    ckpts = {"model": str(checkpoint) if checkpoint else "", "single-frame": str(baseline_checkpoint or "")}
    try:
        caches = cache_sim_many(preset, seeds, duration, cfg, sources, floor, cache_dir, ckpts, workers, progress)
    except RuntimeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"detections ready after {time.time() - t0:.0f} s")
    if cache_only:
        return
    init_args = (preset, seeds, duration, cfg.model_dump(mode="json"), sources, floor, str(cache_dir), ckpts,
                 objective)
    _init_worker(*init_args)
    pool = get_context("spawn").Pool(jobs, _init_worker, init_args) if jobs > 1 else None

    result = {
        "command": " ".join(["scripts/tune_tracking.py", *sys.argv[1:]]),
        "validation": {"preset": preset, "seeds": seeds, "duration_s": duration, "frames": sum(len(c.frames)
                                                                                                 for c in caches)},
        "floor": floor,
        "objective": ("per-class MOTA (ties: IDF1) for per-class settings; pooled MOTA over classes for the rest"
                      if objective == "mota" else
                      "per-class mean of MOTA and IDF1 for per-class settings; mean of pooled MOTA and GT-weighted "
                      "IDF1 over classes for the rest"),
        "grids": {"score_threshold": THRESHOLDS, "nms_radius_m": NMS_RADII, "min_evidence": MIN_EVIDENCE,
                  "gate_mahalanobis": GATE_MAHALANOBIS, "confirm_hits": CONFIRM_HITS, "max_coast_s": MAX_COAST_S,
                  "detection_probability": DETECTION_PROBABILITY, "report_coast_s": REPORT_COAST_S, "low_score_threshold": LOW_SCORE_THRESHOLD},
        "sources": {},
    }
    earlier = json.loads(start.read_text()) if start is not None else None
    if earlier is not None:
        result["started_from"] = {"file": str(start), "command": earlier.get("command"),
                                  "chosen": {s: v["chosen"] for s, v in earlier["sources"].items()}}
    for source in sources:
        begin = cfg.tracking.model_copy(deep=True)
        if earlier is not None and source in earlier["sources"]:
            begin = TrackingConfig.model_validate(earlier["sources"][source]["chosen"])
        tuner = Tuner(source, begin, pool, progress)
        baseline_row = tuner.start()
        for _ in range(rounds):
            tuner.per_class("score_threshold", {c: THRESHOLDS for c in CLASSES})
            tuner.per_class("nms_radius_m", NMS_RADII)
            tuner.pooled("min_evidence", MIN_EVIDENCE)
            tuner.pooled("gate_mahalanobis", GATE_MAHALANOBIS)
            tuner.pooled("confirm_hits", CONFIRM_HITS)
            tuner.pooled("max_coast_s", MAX_COAST_S)
            # only values up to max_coast_s mean anything (a deleted track cannot be reported)
            tuner.pooled("report_coast_s", tuple(v for v in REPORT_COAST_S if v <= tuner.best.max_coast_s))
            tuner.pooled("low_score_threshold", tuple(v for v in LOW_SCORE_THRESHOLD if v == 0.0 or v >= floor))
            tuner.pooled("detection_probability", DETECTION_PROBABILITY)
        chosen = tuner.best
        # the decoder floor follows the lowest class threshold, so the node decodes what the classes accept
        chosen.detection_threshold = min(getattr(chosen.score_threshold, c) for c in CLASSES)
        ev = evaluate_cached(caches, source, chosen, cfg.grid)
        final = _score(ev.compute(), chosen)
        result["sources"][source] = {
            "model": caches[0].model_info.get(source),
            "saturated_frames": sum(c.saturated_frames(source) for c in caches),
            "chosen": chosen.model_dump(),
            "validation_at_start": {k: baseline_row[k] for k in ("per_class", "pooled_mota", "pooled_idf1")},
            "validation_at_chosen": final,
            "validation_range_breakdown": ev.range_breakdown(),
            "sweeps": tuner.sweeps,
        }
        table = Table(title=f"tuned on validation seeds {seeds}: {source}")
        for col in ("class", "threshold", "NMS [m]", "MOTA start", "MOTA tuned", "IDF1 tuned", "FP", "FN", "IDS", "GT"):
            table.add_column(col, justify="right")
        for c in CLASSES:
            m0 = baseline_row["per_class"].get(c, {})
            m = final["per_class"].get(c, {})
            table.add_row(c, f"{getattr(chosen.score_threshold, c):.2f}", f"{getattr(chosen.nms_radius_m, c):g}",
                          *(f"{x.get('mota', math.nan):.3f}" for x in (m0, m)), f"{m.get('idf1', math.nan):.3f}",
                          *(f"{m.get(k, 0):.0f}" for k in ("false_positives", "misses", "id_switches", "num_gt")))
        console.print(table)
        console.print(f"{source}: min_evidence {chosen.min_evidence}, confirm_hits {chosen.confirm_hits}, max_coast_s "
                      f"{chosen.max_coast_s}, report_coast_s {chosen.report_coast_s}, low_score_threshold "
                      f"{chosen.low_score_threshold}, detection_probability "
                      f"{chosen.detection_probability}; pooled MOTA {baseline_row['pooled_mota']:.3f} -> "
                      f"{final['pooled_mota']:.3f}, pooled IDF1 {baseline_row['pooled_idf1']:.3f} -> "
                      f"{final['pooled_idf1']:.3f}")
        console.print(yaml.safe_dump({"tracking": chosen.model_dump()}, sort_keys=False))
    if pool is not None:
        pool.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(result), indent=1))
    console.print(f"wrote {out} ({time.time() - t0:.0f} s)")


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.floating | np.integer):
        return _json_safe(v.item())
    return v


if __name__ == "__main__":
    app()
