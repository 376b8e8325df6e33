#!/usr/bin/env python3
"""Why do tracks switch ids? Every ID switch of one class, sorted into causes, on cached detections.

For each switch (motmetrics' SWITCH event: a ground-truth object matched to another track than at
its previous match) this looks at the previous match and at the old track in the switch frame:

- after_gap:  the object had been unmatched for some frames (a detection gap) and came back under a
              track other than the old one. Split by whether the old track was still reported then
              (old_reported: it drifted off or sits on something else) or not (old_gone: deleted or
              withheld while coasting, a new track took the object);
- handover:   matched in the previous frame too, so the id changed without a gap, split the same
              way: the old track still reported but now over the match distance away or on another
              object (old_reported), or gone in that very frame while another track already sat on
              the object (old_gone: two tracks on one object).

Seeds must be validation (100000-199999) or held-out (200000+); the detections come from the same
cache as scripts/tune_tracking.py and scripts/eval_tracking.py (run one of them first).

    python scripts/diagnose_id_switches.py --seed 100000 --seed 100001 --duration 20 --out results/x.json
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated

import typer

from ssm_perception.config import PerceptionConfig
from ssm_perception.eval.tracking import cache_sim_many, evaluate_cached
from ssm_perception.tracking.detections import CLASS_NAMES

app = typer.Typer(add_completion=False)


def classify(events) -> dict:
    """motmetrics mot_events of one class -> counts of switch causes and the gap lengths."""
    ev = events.reset_index()
    matched = ev[ev["Type"].isin(["MATCH", "SWITCH"])]
    reported = defaultdict(set)  # frame -> hypothesis ids present in it
    for f, h in zip(ev["FrameId"], ev["HId"], strict=True):
        if not math.isnan(h):
            reported[int(f)].add(int(h))
    last: dict[int, tuple[int, int]] = {}  # object -> (frame, hypothesis) of its latest match
    causes: Counter = Counter()
    gaps: list[int] = []
    for f, o, h, kind in zip(matched["FrameId"], matched["OId"], matched["HId"], matched["Type"], strict=True):
        f, o, h = int(f), int(o), int(h)
        if kind == "SWITCH" and o in last:
            f_prev, h_prev = last[o]
            gap = f - f_prev - 1
            where = "old_reported" if h_prev in reported[f] else "old_gone"
            if gap <= 0:
                causes[f"handover_{where}"] += 1
            else:
                gaps.append(gap)
                causes[f"after_gap_{where}"] += 1
        last[o] = (f, h)
    return {"switches": int(sum(causes.values())), "causes": dict(causes),
            "gap_frames_median": float(sorted(gaps)[len(gaps) // 2]) if gaps else None,
            "gap_frames_over_15": int(sum(g > 15 for g in gaps))}


@app.command()
def main(
    seeds: Annotated[list[int], typer.Option("--seed", help="simulator seeds (100000+)")],
    duration: Annotated[float, typer.Option(help="seconds per run")] = 20.0,
    preset: Annotated[str, typer.Option(help="simulator preset")] = "urban",
    source: Annotated[str, typer.Option(help="model | single-frame")] = "model",
    tracking: Annotated[Path | None, typer.Option(help="a tuning results file: its chosen settings for the "
                                                        "source (default: the shipped tracking defaults)")] = None,
    floor: Annotated[float, typer.Option(help="score floor of the cached detections")] = 0.15,
    cache_dir: Annotated[Path, typer.Option(help="detection cache")] = Path("out/tracking_cache"),
    out: Annotated[Path | None, typer.Option(help="results JSON")] = None,
) -> None:
    if any(s < 100_000 for s in seeds):
        raise typer.BadParameter("use validation (100000+) or held-out (200000+) seeds, not training seeds")
    cfg = PerceptionConfig()
    if tracking is not None:
        from ssm_perception.config import TrackingConfig

        cfg.tracking = TrackingConfig.model_validate(json.loads(tracking.read_text())["sources"][source]["chosen"])
    caches = cache_sim_many(preset, seeds, duration, cfg, ["model", "single-frame"], floor, cache_dir)
    ev = evaluate_cached(caches, source, cfg.tracking, cfg.grid)
    result = {"source": source, "seeds": seeds, "duration_s": duration,
              "classes": {CLASS_NAMES[c]: classify(ev.events(c)) for c in ev.classes if len(ev.events(c))}}
    print(json.dumps(result, indent=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    app()
