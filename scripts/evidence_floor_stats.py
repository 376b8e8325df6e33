"""Validation statistics behind the evidence rule's settings (config evidence.floor, evidence.free_space).

On validation seeds (never the held-out evaluation seeds), through the node's pipeline with the shipped
model, per cell class:
- evidence cells (>= evidence.min_returns returns in the height band): how often truly occupied
  (the calibrated value to publish there), and how often the network alone calls them free;
- see-through cells (a ray of the current scan passed, no obstacle return) that the network calls
  occupied: how often truly occupied, split static / moving (the keep-or-clear decision).

    python scripts/evidence_floor_stats.py --seeds 100000 100001 --duration 10 -o results/evidence_rule_validation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[100000, 100001])
    ap.add_argument("--preset", default="urban")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--config", default="", help="PerceptionConfig YAML (default: the defaults)")
    ap.add_argument("-o", "--out", default="results/evidence_rule_validation.json")
    args = ap.parse_args(argv)

    from ssm_perception.config import PerceptionConfig
    from ssm_perception.pipeline import FrameInputs, PerceptionPipeline
    from ssm_perception.sim.scenario import Scenario

    if any(100000 > s or s >= 200000 for s in args.seeds):
        raise SystemExit("evidence_floor_stats: use validation seeds 100000-199999 (evaluation seeds start at 200000)")
    cfg = PerceptionConfig.load(args.config)
    n = {k: 0 for k in ("evidence", "evidence_truth_occ", "evidence_net_free", "evidence_net_free_truth_occ",
                        "see_through", "see_through_net_occ", "see_through_net_occ_truth_occ",
                        "see_through_net_occ_truth_dyn", "see_through_net_occ_truth_free", "frames")}
    t0 = time.time()
    for seed in args.seeds:
        sc = Scenario.from_preset(args.preset, seed=seed, duration_s=args.duration, grid=cfg.grid)
        pipe = PerceptionPipeline(cfg)
        for f in sc.frames():
            out = pipe.process(FrameInputs.from_sim(sc.config, f))
            ev = out.evidence
            if ev is None:
                continue
            occ, dyn = f.occupied, f.dynamic & f.occupied
            evidence = ev.evidence(cfg.evidence)
            net_occ = out.occupancy > 0.5
            n["frames"] += 1
            n["evidence"] += int(evidence.sum())
            n["evidence_truth_occ"] += int((evidence & occ).sum())
            n["evidence_net_free"] += int((evidence & ~net_occ).sum())
            n["evidence_net_free_truth_occ"] += int((evidence & ~net_occ & occ).sum())
            st = ev.free_now & ~evidence
            n["see_through"] += int(st.sum())
            n["see_through_net_occ"] += int((st & net_occ).sum())
            n["see_through_net_occ_truth_occ"] += int((st & net_occ & occ).sum())
            n["see_through_net_occ_truth_dyn"] += int((st & net_occ & dyn).sum())
            n["see_through_net_occ_truth_free"] += int((st & net_occ & ~occ).sum())

    def ratio(a, b):
        return n[a] / n[b] if n[b] else None

    result = {
        "what": "evidence rule settings: truth on evidence cells and on see-through cells the network calls occupied",
        "command": "python scripts/evidence_floor_stats.py " + " ".join(argv or []),
        "preset": args.preset, "seeds": args.seeds, "duration_s": args.duration, "model": pipe.model_info.get("source"),
        "evidence": {"min_returns": cfg.evidence.min_returns, "band_m": [cfg.evidence.min_height_m,
                                                                          cfg.evidence.max_height_m]},
        "counts": n,
        "p_truth_occupied_given_evidence": ratio("evidence_truth_occ", "evidence"),
        "network_calls_evidence_free": ratio("evidence_net_free", "evidence"),
        "p_truth_occupied_given_evidence_network_free": ratio("evidence_net_free_truth_occ", "evidence_net_free"),
        "see_through_network_occupied_share": ratio("see_through_net_occ", "see_through"),
        "p_truth_occupied_given_see_through_network_occupied": ratio("see_through_net_occ_truth_occ",
                                                                      "see_through_net_occ"),
        "p_truth_moving_given_see_through_network_occupied": ratio("see_through_net_occ_truth_dyn",
                                                                     "see_through_net_occ"),
        "wall_s": round(time.time() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "counts"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
