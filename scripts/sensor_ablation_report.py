"""Combine `ssm-perception evaluate --ablate` runs into results/sensor_ablation.json and .md.

    PYTHONPATH=$PWD .venv/bin/python scripts/sensor_ablation_report.py \
        --run "schema_default_200x200=out/heldout/ablation" \
        --run "cpu_default_80x80=out/heldout_cpu80/ablation" -o results/sensor_ablation

Per run: the evaluation's ablation (ablation.json, with its command), the published ECE and the load
average per set (metrics.json), and the camera's contribution where the configurations use it (added
to LiDAR + radar): gains, whether each lies outside its 95 % bootstrap interval, per-bag signs, and its
encode part. The verdict per run follows RULE (stated in the output); the latency cost is reported
beside it (it depends on the machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

NOTE = ("The shipped checkpoint was trained with LiDAR, radar and camera: a set without a sensor measures what "
        "that sensor contributes to this model (what it loses when the input is absent), not what a model trained "
        "without the sensor would reach.")
RULE = ("per configuration: the camera earns its cost when, added to LiDAR + radar, it improves a published output "
        "beyond noise: the published-grid IoU gain's 95 % bootstrap interval lies above 0 and the gain is positive on "
        "every bag, or the car MOTA gain is at least +0.01 and positive on every bag; otherwise it is switched off there "
        "(the moving IoU scores the network's moving output, which is not published, and is reported beside it)")
BAGS = {  # how the held-out bags of a run are made, by label prefix (the truth grid must match the config's grid)
    "schema_default": ["ssm-perception simulate --scenario urban --seed {seed} --duration 20 -o {path}"],
    "cpu_default": [("PYTHONPATH=$PWD .venv/bin/python scripts/simulate_for_config.py "
                     "config/ssm_perception_cpu.yaml --seed {seed} --duration 20 -o {path}")],
}


def camera_given(ab: dict, base: str = "lidar+radar") -> dict | None:
    for c in ab["models"]["model"]["contributions"]:
        if c["sensor"] == "camera" and c["added_to"] == base:
            g = c["gain"]
            bags = {b: {"iou": x["iou"], "car_mota": x["car_mota"]} for b, x in g["per_bag"].items()}
            car = (g["tracking"].get("car") or {})
            iou_ok = bool(g.get("iou_ci95") and g["iou_ci95"][0] > 0
                          and all((x["iou"] or 0) > 0 for x in bags.values()))
            mota_ok = bool((car.get("mota") or 0) >= 0.01 and all((x["car_mota"] or 0) > 0 for x in bags.values()))
            return {"added_to": base, "iou": g["iou"], "iou_ci95": g.get("iou_ci95"), "moving_iou": g["moving_iou"],
                    "moving_iou_ci95": g.get("moving_iou_ci95"), "car_mota": car.get("mota"),
                    "car_idf1": car.get("idf1"), "per_bag": bags,
                    "earns": {"published_iou": iou_ok, "car_mota": mota_ok},
                    "verdict": "kept on" if iou_ok or mota_ok else "switched off",
                    "encode_part_p50_ms": (c["encode_part_ms"] or {}).get("p50")}
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=DIR of an evaluate --ablate output")
    ap.add_argument("-o", "--output", default="results/sensor_ablation", help="path without extension")
    a = ap.parse_args(argv)
    out = Path(a.output)
    runs, md_runs = {}, []
    for item in a.run:
        label, _, d = item.partition("=")
        d = Path(d)
        ab_file = json.loads((d / "ablation.json").read_text())
        metrics = json.loads((d / "metrics.json").read_text())
        ab = ab_file["ablation"]
        per_set = {n: {"ece_published": m["occupancy"]["ece"] if m.get("occupancy") else None,
                       "load_avg_1min": m.get("load_avg"),
                       "stages_p50_ms": {k: round(v["p50"], 2) for k, v in m["latency_ms"].items()}}
                   for n, m in metrics["models"].items()}
        bags = [{k: b[k] for k in ("name", "path", "frames", "duration_s", "missing_topics", "dropped_frames")}
                for b in ab_file["bags"]]
        templates = next((v for k, v in BAGS.items() if label.startswith(k)), [])
        make = [t.format(seed=b["name"].rsplit("_", 1)[-1], path=b["path"]) for t in templates for b in bags]
        weights = sorted({m.get("sha256") or str(m.get("source")) for m in metrics["models"].values()})
        runs[label] = {"grid": ab_file["grid"], "commands": [*make, ab["command"]], "bags": bags, "ablation": ab,
                       "weights_sha256": weights,
                       "per_set": per_set, "camera_given_lidar_radar": camera_given(ab)}
        plot = d / "ablation.png"
        if plot.is_file():
            (out.parent / "plots").mkdir(parents=True, exist_ok=True)
            shutil.copy(plot, out.parent / "plots" / f"{out.name}_{label}.png")
        md_runs.append((label, runs[label], (d / "ablation.md").read_text().split("\n", 3)[3]))
    used = {w for r in runs.values() for w in r["weights_sha256"]}
    if len(used) > 1:  # e.g. a checkpoint shipped between two runs: the runs would not describe one model
        raise SystemExit(f"the runs used different weights {sorted(used)}; re-run them with the same checkpoint")
    cams = {k: r["camera_given_lidar_radar"] for k, r in runs.items()}
    verdict = "; ".join(f"{k}: camera {c['verdict'] if c else 'not measured with LiDAR + radar'}"
                        for k, c in cams.items())
    result = {"note": NOTE, "weights_sha256": sorted(used), "rule": RULE, "verdict": verdict, "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))

    def f(x, d=3):
        return "–" if x is None else f"{x:+.{d}f}"

    lines = ["# Sensor ablation: what each sensor contributes to the shipped model (issue 16)", "",
             (f"Written by `scripts/sensor_ablation_report.py` from {len(runs)} `ssm-perception evaluate --ablate` "
             "runs on the held-out urban seeds 200000 and 200002 (20 s each, the README's held-out length)."), "",
             f"**{NOTE}**", "", f"Weights: sha256 {', '.join(w[:16] for w in sorted(used))}.", "", f"**Verdict: {verdict}** (rule, {RULE}).", "",
             ("| run | camera added to LiDAR + radar: IoU [95 %] | moving IoU [95 %] | car MOTA / IDF1 | per bag IoU "
             "| camera encode part p50 | verdict |"), "|---|---|---|---|---|---|---|"]
    for label, c in cams.items():
        if c:
            ci = c["iou_ci95"] or [None, None]
            mi = c["moving_iou_ci95"] or [None, None]
            lines.append(f"| {label} | {f(c['iou'])} [{f(ci[0])}, {f(ci[1])}] | {f(c['moving_iou'])} [{f(mi[0])}, "
                         f"{f(mi[1])}] | {f(c['car_mota'])} / {f(c['car_idf1'])} | "
                         + ", ".join(f"{b} {f(v['iou'])}" for b, v in c["per_bag"].items())
                         + f" | {c['encode_part_p50_ms'] or 0:.1f} ms | {c['verdict']} |")
    for label, r, md in md_runs:
        g = r["grid"]
        lines += ["", f"## {label} ({g['nx']} x {g['ny']} cells at {g['resolution']} m)", "", "```bash",
                  *r["commands"], "```", "", md.strip(), "", f"![{label}](plots/{out.name}_{label}.png)"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}: {verdict}")


if __name__ == "__main__":
    main()
