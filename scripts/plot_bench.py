"""Plots of an `ssm-perception bench` results file.

    .venv/bin/python scripts/plot_bench.py results/bench_cpu.json [--out-dir results/plots]
    .venv/bin/python scripts/plot_bench.py a.json b.json      # runs of other grids on the same device, merged

Writes three PNGs named after the JSON file:
  <name>_stages.png   p50 latency per stage (stacked) and p99 of the full step, per model, per grid
  <name>_memory.png   peak memory and warp+step p50 vs frames of history, per model (first grid)
  <name>_grid.png     full-step p50/p99 vs grid size, per model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first


def plot_stages(result: dict, png: Path) -> None:
    stages = result["stages"]
    grids = result["grids"]
    fig, axes = plt.subplots(1, len(grids), figsize=(6 * len(grids), 4.5), squeeze=False)
    for ax, (cells, g) in zip(axes[0], grids.items(), strict=True):
        models = list(g["full_step"])
        bottom = [0.0] * len(models)
        for k, s in enumerate(stages):
            vals = [g["full_step"][m]["stages"][s].get("p50", 0.0) for m in models]  # n/a (no ROS msgs): 0
            ax.bar(models, vals, bottom=bottom, label=s, color=plt.cm.tab10(k))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.plot(models, [g["full_step"][m]["full_step"]["p99"] for m in models], "k_", ms=18, mew=2,
                label="full step p99")
        ax.set_title(f"{cells}x{cells} ({g['extent_m']:.0f} m), {result['environment']['device']}")
        ax.set_ylabel("latency [ms] (stage p50, stacked)")
        ax.tick_params(axis="x", rotation=20)
    axes[0][-1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_memory(result: dict, png: Path) -> None:
    cells, g = next(iter(result["grids"].items()))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for lab, per in g["history"].items():
        hs = sorted(int(h) for h in per)
        mem = [per[str(h)].get("memory", {}).get("peak_bytes") for h in hs]
        if all(m is not None for m in mem):
            a1.plot(hs, [m / 2**20 for m in mem], "o-", label=lab)
        a2.plot(hs, [per[str(h)]["warp_step"]["p50"] for h in hs], "o-", label=lab)
    for ax, ylab in ((a1, "peak memory added [MiB]"), (a2, "warp + step p50 [ms]")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames of history")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
    a1.set_title(f"memory vs history, {cells}x{cells}")
    a2.set_title(f"temporal update vs history, {cells}x{cells}")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_grid(result: dict, png: Path) -> None:
    grids = result["grids"]
    models = sorted({m for g in grids.values() for m in g["full_step"]})
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, m in enumerate(models):
        pts = sorted((int(c), g["full_step"][m]["full_step"]) for c, g in grids.items() if m in g["full_step"])
        xs = [c * c for c, _ in pts]
        ax.plot(xs, [r["p50"] for _, r in pts], "o-", color=plt.cm.tab10(k), label=f"{m} p50")
        ax.plot(xs, [r["p99"] for _, r in pts], "x--", color=plt.cm.tab10(k), alpha=0.6)
    ax.set_xlabel("grid cells (x marks: p99)")
    ax.set_ylabel("full step [ms]")
    ax.set_title(f"full step vs grid size, {result['environment']['device']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def merge(results: list[dict]) -> dict | None:
    """One result with the grids of all (same device, e.g. one GPU run per grid size); None if mixed."""
    devices = {(r["environment"]["device"], r["environment"].get("gpu")) for r in results}
    if len(devices) != 1:
        return None
    out = dict(results[0])
    out["grids"] = {}
    for r in results:
        out["grids"].update(r["grids"])
    out["grids"] = dict(sorted(out["grids"].items(), key=lambda kv: int(kv[0])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="JSON written by `ssm-perception bench` (several: merged by grid)")
    ap.add_argument("--out-dir", default=None, help="default: next to the JSON")
    args = ap.parse_args(argv)
    results = []
    for name in args.results:
        path = Path(name)
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"plot_bench: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        if result.get("format") not in ("ssm_perception.bench/1", "ssm_perception.bench/2"):
            print(f"plot_bench: {path} is not an ssm_perception bench result", file=sys.stderr)
            return 2
        results.append(result)
    result = merge(results)
    if result is None:
        print("plot_bench: the files come from different devices; plot them separately", file=sys.stderr)
        return 2
    path = Path(args.results[0])
    out_dir = Path(args.out_dir) if args.out_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, fn in (("stages", plot_stages), ("memory", plot_memory), ("grid", plot_grid)):
        png = out_dir / f"{path.stem}_{suffix}.png"
        fn(result, png)
        written.append(str(png))
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
