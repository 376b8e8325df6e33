"""report.md + PNG plots from the evaluator's metrics (all models side by side).

Plots (matplotlib, Agg backend, no display needed):
    reliability.png             reliability diagram per model (predicted P vs observed frequency)
    iou_<bag>.png               per-frame occupancy IoU per model, adversity windows shaded, resets marked
    latency.png                 per-frame total latency histogram per model
    ablation.png                with --ablate: quality and latency per sensor set (eval/ablation.py)
    bev_<bag>_<frame>.png       truth and each model's published grid at a chosen frame (TP green, FP red, FN blue)
    scan_<model>_<bag>_<frame>.png  label-free: the scan's points over the published grid, evidence the network
                                called free, see-through cells published occupied, tracks; and the observation grid
    tracks_<model>_<bag>.png    published tracks in odom over the bag (labelled boxes in grey where there are labels)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

OCC_COLUMNS = [("all", "IoU all"), ("static", "static"), ("dynamic", "dynamic"), ("visible", "visible"),
               ("occluded", "occluded"), ("static_occluded", "static occl."), ("dynamic_occluded", "dyn. occl.")]


def _f(x, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def occupancy_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        occ = m.get("occupancy")
        if occ is None:
            continue
        s = occ["splits"]
        raw = m.get("occupancy_raw") or {}
        moving = raw.get("moving") or {}
        rows.append([name, *[_f(s[k]["iou"]) for k, _ in OCC_COLUMNS], _f(s["all"]["f1"]), _f(occ["ece"]),
                     _f(m.get("known_share")), _f((raw.get("splits") or {}).get("all", {}).get("iou")),
                     _f(raw.get("ece")), _f(moving.get("iou"))])
    header = ["model", *[h for _, h in OCC_COLUMNS], "F1 all", "ECE", "known share", "raw IoU", "raw ECE",
              "moving IoU (raw)"]
    return _table(header, rows) if rows else ""


def label_free_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        lf = m.get("label_free")
        if not lf:
            continue
        t = lf["tracks"]
        rows.append([name, _f(lf["evidence_coverage"]), _f(lf["evidence_coverage_network"]),
                     _f(lf["nonground_coverage"]), _f(lf["free_space_contradiction_rate"]),
                     _f(lf["disagreement_mean"]), f"{t['unsupported_instances']} / {t['instances_in_grid']}",
                     f"{t['static_on_evidence_ids']} / {t['ids']}"])
    return _table(["model", "evidence coverage (published)", "network alone", "any non-ground return",
                   "see-through published occupied", "disagreement (mean)", "track instances without returns",
                   "static tracks on evidence"], rows) if rows else ""


def labels_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        lab = (m.get("label_free") or {}).get("labels")
        if not lab:
            continue
        for cls, t in lab["tracking"].items():
            rec = "; ".join(f"{r['range_m']} m: {_f(r['recall'], 2)}" for r in lab["recall_by_range"].get(cls, [])
                            if r["num_gt"])
            rows.append([name, cls, _f(t.get("mota")), _f(t.get("idf1")), _f(t.get("hota")),
                         str(int(t.get("num_gt", 0))), rec or "–"])
        far = _f(lab["tracks_far_from_labels_share"])
        rows.append([name, "all", "", "", "", "", f"tracks > 2 m from every label: {far}"])
    return _table(["model", "class", "MOTA", "IDF1", "HOTA", "labelled", "recall by range"], rows) if rows else ""


def range_table(models: dict) -> str:
    rows, bands = [], None
    for name, m in models.items():
        occ = m.get("occupancy")
        if occ is None:
            continue
        bands = bands or [k for k in occ["splits"] if k.startswith("range_")]
        rows.append([name, *[_f(occ["splits"][b]["iou"]) for b in bands]])
    if not rows:
        return ""
    return _table(["model", *[b.replace("range_", "").replace("_", "–") + " m" for b in bands]], rows)


def per_bag_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        for bag, b in m.get("per_bag", {}).items():
            if b.get("ground_truth"):
                rows.append([name, bag, str(b["frames"]), _f(b["iou_all"]), _f(b["iou_static"]),
                             _f(b["iou_dynamic"]), _f(b["iou_occluded"]), _f(b["ece"])])
    return _table(["model", "bag", "frames", "IoU all", "static", "dynamic", "occluded", "ECE"], rows) if rows else ""


def tracking_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        for cls, t in (m.get("tracking") or {}).items():
            rows.append([name, cls, _f(t.get("mota")), _f(t.get("idf1")), _f(t.get("hota")), _f(t.get("motp"), 2),
                         str(int(t.get("id_switches", 0))), str(int(t.get("fragmentations", 0))),
                         str(int(t.get("num_gt", 0)))])
    return _table(["model", "class", "MOTA", "IDF1", "HOTA", "MOTP [m]", "IDS", "Frag", "GT"], rows) if rows else ""


def latency_table(models: dict) -> str:
    stages = []
    for m in models.values():
        for k in m["latency_ms"]:
            if k not in stages:
                stages.append(k)
    rows = [[name, *[(f"{m['latency_ms'][k]['p50']:.1f} / {m['latency_ms'][k]['p99']:.1f}"
                      if k in m["latency_ms"] else "–") for k in stages]] for name, m in models.items()]
    return _table(["model (p50 / p99 ms)", *stages], rows)


def reset_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        r = m["resets"]
        reasons = ", ".join(f"{k} x{v}" for k, v in sorted(r["by_reason"].items())) or "none"
        health = ", ".join(f"{k} {v}" for k, v in sorted(m["health"].items()))
        rows.append([name, str(r["count"]), reasons, health])
    return _table(["model", "full resets", "reasons", "health (frames per level)"], rows)


def recovery_table(models: dict) -> str:
    rows = []
    for name, m in models.items():
        for r in m.get("recovery") or []:
            rows.append([name, r["bag"], r["type"], f"{r['start_s']:.1f}–{r['end_s']:.1f}", _f(r["iou_before"]),
                         _f(r["iou_during"]), _f(r["iou_after"]), _f(r["recovery_s"], 1)])
    if not rows:
        return ""
    return _table(["model", "bag", "event", "window [s]", "IoU before", "IoU during", "IoU after (3 s)",
                   "recovery [s]"], rows)


# ---------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(models: dict, path: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    drawn = False
    for name, m in models.items():
        occ = m.get("occupancy")
        if occ is None:
            continue
        bins = [b for b in occ["reliability"] if b["count"]]
        ax.plot([b["confidence"] for b in bins], [b["frequency"] for b in bins], "o-", ms=3,
                label=f"{name} (ECE {_f(occ['ece'])})")
        drawn = True
    ax.set_xlabel("predicted P(occupied)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability diagram (all cells)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def plot_iou_over_time(bag, runs: dict, path: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    drawn = False
    for name, run in runs.items():
        t = [r["t_s"] for r in run.per_frame]
        v = [np.nan if r.get("all") is None else r["all"] for r in run.per_frame]
        if np.all(np.isnan(v)):
            continue
        line = ax.plot(t, v, lw=1.2, label=name)[0]
        for r in run.per_frame:
            if r["reset"]:
                ax.axvline(r["t_s"], color=line.get_color(), ls=":", lw=1)
        drawn = True
    for ev in bag.gt.events:
        if "start_ns" not in ev:
            continue
        s0, s1 = bag.t_s(int(ev["start_ns"])), bag.t_s(int(ev.get("end_ns", ev["start_ns"])))
        ax.axvspan(s0, max(s1, s0 + 0.1), color="orange", alpha=0.2)
        ax.text(s0, 1.0, ev.get("type", "?"), fontsize=7, va="top", rotation=90)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time [s]")
    ax.set_ylabel("occupancy IoU")
    ax.set_title(f"{bag.name}: IoU per frame (shaded: adversities, dotted: full resets)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def plot_latency(all_runs: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, runs in all_runs.items():
        v = [x for r in runs for x in r.latency.get("total", [])]
        if v:
            ax.hist(v, bins=40, alpha=0.5, label=f"{name} (p50 {np.percentile(v, 50):.1f} ms)")
    ax.set_xlabel("pipeline latency per frame [ms] (total)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bev_image(arr: np.ndarray) -> np.ndarray:
    # grid [H along +x, W along +y] -> image with +x up and +y to the left
    return arr[::-1, ::-1]


def plot_bev(bag, frame: int, runs: dict, path: Path) -> bool:
    truth = bag.gt.grids.get(bag.frames[frame].stamp_ns)
    if truth is None:
        return False
    plt = _plt()
    occ, dyn, vis = truth
    n = 1 + len(runs)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4))
    axes = np.atleast_1d(axes)
    rgb = np.ones(occ.shape + (3,))
    rgb[~vis] = 0.85
    rgb[occ] = (0.2, 0.2, 0.2)
    rgb[occ & dyn] = (0.85, 0.1, 0.1)
    axes[0].imshow(_bev_image(rgb), interpolation="nearest")
    axes[0].set_title("truth (grey: occluded, red: moving)", fontsize=8)
    for ax, (name, run) in zip(axes[1:], runs.items(), strict=True):
        p = run.snapshots[frame]["p"]
        pred = p > 0.5
        img = np.stack([1 - 0.6 * p] * 3, -1)
        img[pred & occ] = (0.1, 0.7, 0.1)
        img[pred & ~occ] = (0.9, 0.15, 0.15)
        img[~pred & occ] = (0.15, 0.3, 0.95)
        axes_iou = (pred & occ).sum() / max((pred | occ).sum(), 1)
        ax.imshow(_bev_image(img), interpolation="nearest")
        ax.set_title(f"{name} (IoU {axes_iou:.2f})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{bag.name} frame {frame} (t = {bag.t_s(bag.frames[frame].stamp_ns):.1f} s), published grids; "
                 "ego at centre, x up; green TP, red FP, blue FN", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_scan_over_grid(bag, frame: int, name: str, snap: dict, grid, path: Path) -> bool:
    """Label-free picture of one frame: the scan's points over the published grid, the evidence the
    network called free (before the rule) in red, see-through cells published occupied in orange,
    tracks as boxes; on the right the observation grid (observed now / age / inferred)."""
    if snap.get("points") is None:
        return False
    plt = _plt()
    from matplotlib.patches import Polygon

    g = grid
    extent = (g.y_min + g.length_y, g.y_min, g.x_min, g.x_min + g.length_x)  # left = +y, up = +x
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    p = snap["p"]
    img = np.stack([1 - 0.75 * p] * 3, -1)
    img[snap["observation"] < 0] = (0.8, 0.85, 1.0)
    if snap["net_free_on_evidence"] is not None:
        img[snap["net_free_on_evidence"]] = (0.95, 0.1, 0.1)
        img[snap["see_through_occupied"]] = (1.0, 0.6, 0.0)
    axes[0].imshow(img[::-1, ::-1], extent=extent, interpolation="nearest")
    pts = snap["points"]
    inside = (pts[:, 0] > g.x_min) & (pts[:, 0] < g.x_min + g.length_x) & (pts[:, 1] > g.y_min) & \
        (pts[:, 1] < g.y_min + g.length_y)
    pts = pts[inside]
    axes[0].scatter(pts[:, 1], pts[:, 0], s=0.3, c=pts[:, 2], cmap="viridis", alpha=0.6, linewidths=0)
    for tid, x, y, yaw, length, width in snap["tracks"]:
        c, s_ = np.cos(yaw), np.sin(yaw)
        corners = [(x + c * u - s_ * v, y + s_ * u + c * v) for u, v in
                   ((length / 2, width / 2), (length / 2, -width / 2), (-length / 2, -width / 2), (-length / 2, width / 2))]
        axes[0].add_patch(Polygon([(cy, cx) for cx, cy in corners], fill=False, ec="tab:blue", lw=1.2))
        axes[0].text(y, x, str(tid), fontsize=6, color="tab:blue")
    axes[0].set_xlim(extent[0], extent[1])
    axes[0].set_ylim(extent[2], extent[3])
    axes[0].set_title("published occupancy (dark = occupied), scan points (colour = height)\nred: evidence the "
                      "network called free; orange: seen-through cells published occupied; blue: tracks", fontsize=7)
    obs = snap["observation"].astype(np.float32)
    axes[1].imshow(np.where(obs < 0, np.nan, obs)[::-1, ::-1], extent=extent, cmap="magma", vmin=0, vmax=100,
                   interpolation="nearest")
    axes[1].set_title("observation grid: 100 observed now, 1..99 age\n(brighter = more recent), 0 inferred only "
                      "(black)", fontsize=7)
    for ax in axes:
        ax.set_xlabel("y [m] (left)")
        ax.set_ylabel("x [m] (forward)")
    fig.suptitle(f"{name} on {bag.name}, frame {frame} (t = {bag.t_s(bag.frames[frame].stamp_ns):.1f} s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_tracks_odom(bag, name: str, paths: dict, path: Path) -> bool:
    """Published tracks over the bag in odom, the ego path, and labelled boxes' centres if any."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 7))
    ego = np.array([[f.T_odom_base[0, 3], f.T_odom_base[1, 3]] for f in bag.frames
                    if f.T_odom_base is not None and np.all(np.isfinite(f.T_odom_base))])
    if len(ego):
        ax.plot(ego[:, 0], ego[:, 1], "k-", lw=2, label="ego (odom)")
    if bag.labels:
        by_id: dict[str, list] = {}
        for boxes in bag.labels.values():
            for b in boxes:
                by_id.setdefault(b.id, []).append((b.x, b.y))
        for k, xy in enumerate(by_id.values()):
            xy = np.array(xy)
            ax.plot(xy[:, 0], xy[:, 1], ".", color="0.75", ms=2, label="labelled boxes" if k == 0 else None)
    for tid, xy in paths.items():
        xy = np.array(xy)
        ax.plot(xy[:, 0], xy[:, 1], ".-", ms=2, lw=1)
        ax.annotate(str(tid), xy[-1], fontsize=6)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x [m] (odom)")
    ax.set_ylabel("y [m] (odom)")
    ax.set_title(f"{name} on {bag.name}: published tracks ({len(paths)} ids)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------- report
def _grid_of(metrics: dict):
    from types import SimpleNamespace

    g = metrics["grid"]
    length_x, length_y = g["nx"] * g["resolution"], g["ny"] * g["resolution"]
    return SimpleNamespace(x_min=-length_x / 2, y_min=-length_y / 2, length_x=length_x, length_y=length_y)


def write_report(metrics: dict, decoded: list, runs: dict, snaps: dict, out: Path, plots: bool = True) -> Path:
    models = metrics["models"]
    lines = ["# Offline evaluation report", "",
             (f"Generated {metrics['created_utc']} by `{metrics['tool']}` (metrics.json schema "
             f"v{metrics['schema_version']}). A cell counts as occupied when P > {metrics['threshold']} (unknown = 0.5 does not); "
             f"grid {metrics['grid']['nx']} x {metrics['grid']['ny']} at {metrics['grid']['resolution']} m."), ""]
    lines += ["## Bags", ""]
    lines.append(_table(["bag", "frames", "duration [s]", "ground truth", "missing topics", "dropped frames"], [
        [b["name"], str(b["frames"]), f"{b['duration_s']:.1f}", "yes" if b["ground_truth"] else "no",
         ", ".join(b["missing_topics"]) or "none",
         ", ".join(f"{k}: {v}" for k, v in b["dropped_frames"].items()) or "none"] for b in metrics["bags"]]))
    lines.append("")
    lines += ["## Models", ""]
    lines.append(_table(["name", "kind", "weights", "sha256"], [
        [n, m["kind"], str(m["source"]), (m["sha256"] or "–")[:16]] for n, m in models.items()]))
    for n, why in metrics.get("skipped_models", {}).items():
        lines.append(f"\n- skipped `{n}`: {why}")
    lines.append("")
    no_gt = [b["name"] for b in metrics["bags"] if not b["ground_truth"]]
    if no_gt:
        lines += [(f"**No ground truth in {', '.join(no_gt)}** (no /ground_truth/occupancy, dynamic and visibility "
                  "grids): occupancy, calibration and tracking metrics are not computed for "
                  f"{'these bags' if len(no_gt) > 1 else 'this bag'}; latency, health and resets are."), ""]
    if metrics.get("ablation"):
        from ssm_perception.eval import ablation

        lines += ["## Sensor ablation", ""]
        if metrics["ablation"].get("command"):
            lines += [f"`{metrics['ablation']['command']}`", ""]
        lines += [ablation.markdown(metrics["ablation"])]
        if plots and ablation.plot(metrics["ablation"], out / "ablation.png"):
            lines += ["![sensor ablation](ablation.png)", ""]
    occ = occupancy_table(models)
    if occ:
        lines += ["## Occupancy (held-out data)", "",
                  ("IoU = TP / (TP + FP + FN) summed over all frames. *static* ignores truth-moving cells, "
                  "*dynamic* ignores truth-static occupied cells; *visible/occluded* from the truth's visibility. "
                  "*moving IoU*: P(occupied and dynamic) > 0.5 vs truth moving cells. ECE over all cells, 15 bins."),
                  "", occ, "", "By range from the vehicle:", "", range_table(models), ""]
        if len(metrics["bags"]) > 1:
            lines += ["Per bag:", "", per_bag_table(models), ""]
    lf = label_free_table(models)
    if lf:
        lines += ["## Label-free checks (any recording)", "",
                  ("From the published grid and the scan's own returns, no ground truth needed. *Evidence coverage*: "
                   "share of cells with direct evidence (at least `evidence.min_returns` returns in the height band "
                   "above ground) published occupied; *network alone*: the same before the rule check; *any "
                   "non-ground return*: cells with at least one return above the ground threshold, any height; "
                   "*see-through published occupied*: share of the cells the scan sees through that are published "
                   "occupied; *disagreement*: the rule check's per-frame share of evidence cells the network calls "
                   "free. Tracks: published (confirmed, coasting) instances without a non-ground return in their "
                   "footprint, and ids that never moved 1 m over at least 3 s while sitting on returns (parked cars, "
                   "or false tracks on structure)."), "", lf, ""]
        shifts = [(n, x) for n, m in models.items() for x in m.get("distribution_shifts") or []]
        if shifts:
            lines += ["Distribution shifts detected: " + "; ".join(
                f"{n} {x['bag']} t={x['t_s']:.1f} s ({x['message']})" for n, x in shifts), ""]
    li = [(n, bag, k, c) for n, m in models.items() for bag, checks in (m.get("lidar_input") or {}).items()
          for k, c in checks.items()]
    if li:
        lines += ["## LiDAR input checks", "", ("Per bag after its last frame (bev/lidar_input.py: intensity scale, "
                  "fields, ego footprint, mounting against TF); the node reports the same in /diagnostics."), "",
                  "| model | bag | check | level | message |", "|---|---|---|---|---|",
                  *[f"| {n} | {bag} | {k} | {c['level']} | {c['message']} |" for n, bag, k, c in li], ""]
    lab = labels_table(models)
    if lab:
        lines += ["## Tracking against the label file", "",
                  ("Same rules as the simulator evaluation: per class, 2 m centre distance, inside the grid; "
                   "labelled boxes without a LiDAR return are ignored."), "", lab, ""]
    trk = tracking_table(models)
    if trk:
        lines += ["## Tracking", "", ("nuScenes-style: per class, 2 m centre-distance matching, confirmed and "
                  "coasting tracks; objects whose centre cell is not visible are ignored."), "", trk, ""]
    lines += ["## Latency per stage", "", ("Measured on the machine that ran the evaluation (wall clock per "
              "stage of PerceptionPipeline.process)."), "", latency_table(models), ""]
    lines += ["## Resets and health", "", reset_table(models), ""]
    rec = recovery_table(models)
    if rec:
        lines += ["## Recovery after adversities and resets", "",
                  ("Mean IoU in the 2 s before, during, and the 3 s after each event; recovery = time until "
                  "the per-frame IoU is back to 90% of its level before."), "", rec, ""]
    if plots:
        lines += ["## Plots", ""]
        if plot_reliability(models, out / "reliability.png"):
            lines += ["![reliability](reliability.png)", ""]
        plot_latency(runs, out / "latency.png")
        lines += ["![latency](latency.png)", ""]
        for bag in decoded:
            bag_runs = {name: rs[[r.bag for r in rs].index(bag.name)] for name, rs in runs.items()}
            f = f"iou_{_slug(bag.name)}.png"
            if plot_iou_over_time(bag, bag_runs, out / f):
                lines += [f"![IoU over time]({f})", ""]
            for k in snaps.get(bag.name, []):
                f = f"bev_{_slug(bag.name)}_{k:05d}.png"
                if plot_bev(bag, k, bag_runs, out / f):
                    lines += [f"![BEV frame {k}]({f})", ""]
            grid = _grid_of(metrics)
            for name, run in bag_runs.items():
                for k, snap in sorted(run.snapshots.items())[:2]:
                    f = f"scan_{_slug(name)}_{_slug(bag.name)}_{k:05d}.png"
                    if plot_scan_over_grid(bag, k, name, snap, grid, out / f):
                        lines += [f"![scan over the published grid, {name}, frame {k}]({f})", ""]
                paths = (models.get(name, {}).get("track_paths") or {}).get(bag.name) or {}
                f = f"tracks_{_slug(name)}_{_slug(bag.name)}.png"
                if plot_tracks_odom(bag, name, paths, out / f):
                    lines += [f"![tracks of {name} on {bag.name}]({f})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
