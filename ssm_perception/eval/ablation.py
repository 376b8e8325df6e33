"""Sensor ablation for `ssm-perception evaluate --ablate lidar,lidar+radar,lidar+camera,all`.

Each sensor set is one run of the ordinary evaluation: the same decoded frames, the same
PerceptionPipeline.process, the same scoring of the published values; only the configuration
differs (``sensors.use_radar`` / ``sensors.use_camera``, the schema's switches, which the node obeys
by not subscribing and the pipeline by not encoding). The frames of a set carry only its sensors,
as `decode_bag` would assemble them with that configuration (``frames_for``).

What it adds on top of the per-run metrics (metrics.json ``ablation``):
- one row per (model, sensor set): published-grid IoU, moving-object IoU (the network's
  P(occupied and moving), its only moving-object grid), tracking MOTA/IDF1 per class, process
  latency p50/p99 with the encode stage and its per-sensor parts, and the frames each sensor was
  actually encoded in (so a switched-off sensor is visibly absent);
- the gain of each row over the LiDAR-only row, with a 95 % interval for the IoU gains from a paired
  moving-block bootstrap over frames (the sets see the same frames, so the difference is paired);
- per sensor: its gain when added to a set without it, and its latency cost (its encode part and
  the change in the process p50).
The interval covers the sampling of frames within these drives, not other drives or trainings.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ssm_perception.config import PerceptionConfig, UserError

SENSORS = ("lidar", "radar", "camera")
STANDARD = "lidar,lidar+radar,lidar+camera,all"
BOOT_BLOCK_FRAMES = 20  # 2 s at 10 Hz: frames of a drive are correlated; blocks keep that in the resampling
BOOT_SAMPLES = 1000


class AblationError(UserError, ValueError):
    """A --ablate value that names no usable sensor set."""


def parse_sensor_sets(text: str) -> list[tuple[str, ...]]:
    """'lidar,lidar+radar,all' -> [('lidar',), ('lidar', 'radar'), ('lidar', 'radar', 'camera')].

    Sets are comma-separated, sensors in a set joined by '+'; 'all' is every sensor and 'standard'
    the four sets of the issue (LiDAR only, +radar, +camera, all)."""
    text = (text or "").strip()
    if text == "standard":
        text = STANDARD
    sets: list[tuple[str, ...]] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            raise AblationError(f"--ablate {text!r}: empty sensor set; use e.g. --ablate {STANDARD}")
        names = SENSORS if item == "all" else tuple(x.strip() for x in item.split("+"))
        bad = [n for n in names if n not in SENSORS]
        if bad:
            raise AblationError(f"--ablate: unknown sensor {bad[0]!r} in {item!r}; sensors: {', '.join(SENSORS)} "
                                f"(joined by '+'), or 'all'; e.g. --ablate {STANDARD}")
        if len(set(names)) != len(names):
            raise AblationError(f"--ablate: {item!r} names a sensor twice")
        canon = tuple(s for s in SENSORS if s in names)
        if canon in sets:
            raise AblationError(f"--ablate: the set {set_name(canon)!r} is given twice")
        sets.append(canon)
    return sets


def set_name(sensors: tuple[str, ...]) -> str:
    return "+".join(sensors)


def sensor_config(cfg: PerceptionConfig, sensors: tuple[str, ...]) -> PerceptionConfig:
    """``cfg`` with exactly these sensors switched on (the schema's use_* fields, validated)."""
    data = cfg.model_dump()
    data["sensors"].update({f"use_{s}": s in sensors for s in SENSORS})
    return PerceptionConfig.model_validate(data)


def union_config(cfg: PerceptionConfig, sets: list[tuple[str, ...]]) -> PerceptionConfig:
    """The configuration the bags are decoded with: every sensor some set uses."""
    return sensor_config(cfg, tuple(s for s in SENSORS if any(s in x for x in sets)))


def frames_for(frames: list, cfg: PerceptionConfig) -> list:
    """The frames as the assembler builds them under ``cfg``: a switched-off sensor is not attached
    (frame_assembler attaches radar/camera only when used; the LiDAR likewise)."""
    s = cfg.sensors
    changes: dict = {}
    if not s.use_lidar:
        changes.update(lidar=None, T_base_lidar=None)
    if not s.use_radar:
        changes.update(radar=None, T_base_radar=None, radar_over_ground=False)
    if not s.use_camera:
        changes.update(image=None, K=None, T_base_camera=None)
    return [dataclasses.replace(f, **changes) for f in frames] if changes else list(frames)


class TeeMot:
    """Feeds the MOT updates of a run to the model's evaluator and to one per bag (per-bag tracking)."""

    def __init__(self, *evaluators):
        self.evaluators = evaluators

    def start_sequence(self) -> None:
        for e in self.evaluators:
            e.start_sequence()

    def update(self, *args, **kwargs) -> None:
        for e in self.evaluators:
            e.update(*args, **kwargs)

    @property
    def num_frames(self) -> int:
        return self.evaluators[0].num_frames


# ------------------------------------------------------------------------------------------- summary
def _iou(c: np.ndarray) -> np.ndarray:
    d = c[..., 0] + c[..., 1] + c[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, c[..., 0] / np.maximum(d, 1), np.nan)


def frame_counts(bag_run, key: str) -> np.ndarray:
    """[frames, 3] per-frame (tp, fp, fn) of ``key`` ('all': published grid, 'moving': moving output)."""
    return np.array([f.get("counts", {}).get(key, (0, 0, 0)) for f in bag_run.per_frame], np.float64).reshape(-1, 3)


def paired_bootstrap(base: list[np.ndarray], other: list[np.ndarray], block: int = BOOT_BLOCK_FRAMES,
                     samples: int = BOOT_SAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """95 % interval of IoU(other) - IoU(base), both summed over frames, by a paired moving-block
    bootstrap: per bag the same resampled blocks of frames for both (frames correlate over seconds).
    ``base``/``other``: per bag [frames, 3] (tp, fp, fn). Hand-written: scipy.stats.bootstrap has no
    block resampling and no ratio-of-sums statistic over paired multi-column data."""
    rng = np.random.default_rng(seed)
    sa = np.zeros((samples, 3))
    sb = np.zeros((samples, 3))
    for a, b in zip(base, other, strict=True):
        n = len(a)
        if n == 0 or len(b) != n:
            return None
        w = max(1, min(block, n // 4))  # short bags: still several blocks to resample
        k = math.ceil(n / w)
        starts = rng.integers(0, n - w + 1, size=(samples, k))
        idx = (starts[:, :, None] + np.arange(w)).reshape(samples, -1)[:, :n]
        sa += a[idx].sum(1)
        sb += b[idx].sum(1)
    d = _iou(sb) - _iou(sa)
    d = d[np.isfinite(d)]
    if d.size < samples // 2:
        return None
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)


def _lat(m: dict, stage: str) -> dict | None:
    v = m["latency_ms"].get(stage)
    return None if v is None else {"p50": v["p50"], "p99": v["p99"]}


def _sub(a, b):
    return None if a is None or b is None else a - b


def row_of(name: str, sensors: tuple[str, ...], m: dict, per_bag_tracking: dict) -> dict:
    occ, raw = m.get("occupancy"), m.get("occupancy_raw") or {}
    moving = raw.get("moving") or {}
    return {
        "set": set_name(sensors), "sensors": list(sensors), "model": name,
        "iou": None if occ is None else occ["splits"]["all"]["iou"],
        "iou_occluded": None if occ is None else occ["splits"]["occluded"]["iou"],
        "ece": None if occ is None else occ["ece"],
        "moving_iou": moving.get("iou"),
        "raw_iou": (raw.get("splits") or {}).get("all", {}).get("iou"),
        "tracking": {c: {"mota": t.get("mota"), "idf1": t.get("idf1"), "id_switches": t.get("id_switches")}
                     for c, t in (m.get("tracking") or {}).items()},
        "per_bag": {bag: {"iou": b.get("iou_all"),
                          "tracking": {c: {"mota": t.get("mota"), "idf1": t.get("idf1")}
                                       for c, t in (per_bag_tracking.get(bag) or {}).items()}}
                    for bag, b in m.get("per_bag", {}).items()},
        "latency_ms": {"process": _lat(m, "total"), "encode": _lat(m, "encode"),
                       "encode_parts": {s: _lat(m, f"encode.{s}") for s in SENSORS if f"encode.{s}" in m["latency_ms"]}},
        "sensor_frames": m.get("sensor_frames", {}),
        "frames": m["latency_ms"].get("total", {}).get("n", 0),
        "load_avg": m.get("load_avg"),
    }


def _car(row: dict, metric: str):
    return (row["tracking"].get("car") or {}).get(metric)


def _delta(row: dict, base: dict, counts: dict, ci: bool = True) -> dict:
    out = {
        "iou": _sub(row["iou"], base["iou"]),
        "moving_iou": _sub(row["moving_iou"], base["moving_iou"]),
        "tracking": {c: {k: _sub(t.get(k), (base["tracking"].get(c) or {}).get(k)) for k in ("mota", "idf1")}
                     for c, t in row["tracking"].items()},
        "per_bag": {bag: {"iou": _sub(b["iou"], (base["per_bag"].get(bag) or {}).get("iou")),
                          "car_mota": _sub((b["tracking"].get("car") or {}).get("mota"),
                                           ((base["per_bag"].get(bag) or {}).get("tracking", {}).get("car") or {})
                                           .get("mota"))}
                    for bag, b in row["per_bag"].items()},
        "process_p50_ms": _sub((row["latency_ms"]["process"] or {}).get("p50"),
                               (base["latency_ms"]["process"] or {}).get("p50")),
        "process_p99_ms": _sub((row["latency_ms"]["process"] or {}).get("p99"),
                               (base["latency_ms"]["process"] or {}).get("p99")),
        "encode_p50_ms": _sub((row["latency_ms"]["encode"] or {}).get("p50"),
                              (base["latency_ms"]["encode"] or {}).get("p50")),
    }
    if ci:
        a, b = counts.get(base["model"]), counts.get(row["model"])
        for key in ("all", "moving"):
            out[f"{'iou' if key == 'all' else 'moving_iou'}_ci95"] = \
                paired_bootstrap(a[key], b[key]) if a and b else None
    return out


def summarise(sets: list[tuple[str, ...]], entries: list[dict], counts: dict, failed: dict) -> dict:
    """metrics.json ``ablation``. ``entries``: [{spec, sensors, name, metrics, per_bag_tracking}] of the
    runs that finished; ``counts``: {run name: {'all' | 'moving': [per bag [frames, 3]]}}."""
    by_spec: dict[str, dict[tuple[str, ...], dict]] = {}
    for e in entries:
        by_spec.setdefault(e["spec"], {})[e["sensors"]] = row_of(e["name"], e["sensors"], e["metrics"],
                                                                 e["per_bag_tracking"])
    out: dict = {"sets": [set_name(s) for s in sets], "baseline_set": "lidar", "models": {}, "failed": failed,
                 "bootstrap": {"block_frames": BOOT_BLOCK_FRAMES, "samples": BOOT_SAMPLES, "level": 0.95}}
    for spec, rows in by_spec.items():
        base = rows.get(("lidar",))
        table = []
        for s in sets:
            if s not in rows:
                continue
            r = dict(rows[s])
            r["gain_over_lidar"] = None if base is None or s == ("lidar",) else _delta(r, base, counts)
            table.append(r)
        contributions = []
        for sensor in SENSORS:
            for s in sets:
                with_s = tuple(x for x in SENSORS if x in s or x == sensor)
                if sensor in s or not s or with_s not in rows or s not in rows:
                    continue
                r, b = rows[with_s], rows[s]
                contributions.append({
                    "sensor": sensor, "added_to": set_name(s), "giving": set_name(with_s),
                    "gain": _delta(r, b, counts),
                    "encode_part_ms": (r["latency_ms"]["encode_parts"].get(sensor)),
                })
        out["models"][spec] = {"rows": table, "contributions": contributions}
    return out


# ------------------------------------------------------------------------------------------- report
def _f(x, digits: int = 3, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _ms(v: dict | None) -> str:
    return "–" if not v else f"{v['p50']:.1f} / {v['p99']:.1f}"


NOTE = ("The shipped checkpoint was trained with all three sensors: a set without a sensor measures what "
        "that sensor contributes to this model (what the model loses when the input is absent), not what "
        "a model trained without it would reach.")


def markdown(ab: dict) -> str:
    """The ablation section of report.md (also written alone as ablation.md)."""
    lines = [(f"Sensor sets: {', '.join(ab['sets'])}. Same decoded frames and the same "
             "`PerceptionPipeline.process` for each set; a sensor is switched off through the configuration "
             "(`sensors.use_radar` / `sensors.use_camera`). IoU: the published grid (as a planner decodes it); "
             "moving IoU: the network's P(occupied and moving) against moving cells; tracking: MOTA / IDF1 of "
             "confirmed and coasting tracks. Gains are over LiDAR only; [95 % interval] of the IoU gains from a "
             f"paired moving-block bootstrap over frames ({ab['bootstrap']['block_frames']}-frame blocks, "
             f"{ab['bootstrap']['samples']} samples): it covers frame sampling within these drives only."),
             "", NOTE, ""]
    for spec, m in ab["models"].items():
        rows = []
        for r in m["rows"]:
            g = r["gain_over_lidar"] or {}
            ped = r["tracking"].get("pedestrian") or {}
            parts = r["latency_ms"]["encode_parts"]
            rows.append([
                f"`{r['set']}`", _f(r["iou"]) + (f" ({_f(g.get('iou'), sign=True)}{_ci(g.get('iou_ci95'))})" if g else ""),
                _f(r["moving_iou"]) + (f" ({_f(g.get('moving_iou'), sign=True)}{_ci(g.get('moving_iou_ci95'))})"
                                       if g else ""),
                _f(_car(r, "mota")) + (f" ({_f(g['tracking'].get('car', {}).get('mota'), sign=True)})" if g else ""),
                _f(_car(r, "idf1")) + (f" ({_f(g['tracking'].get('car', {}).get('idf1'), sign=True)})" if g else ""),
                f"{_f(ped.get('mota'))} / {_f(ped.get('idf1'))}",
                _ms(r["latency_ms"]["process"]), _ms(r["latency_ms"]["encode"]),
                " · ".join(f"{s} {parts[s]['p50']:.1f}" for s in SENSORS if parts.get(s)) or "–",
                " · ".join(f"{s} {n}" for s, n in r["sensor_frames"].items()) + f" of {r['frames']}",
            ])
        lines += [f"**{spec}**", "", _table(
            ["sensors", "IoU (gain)", "moving IoU (gain)", "car MOTA (gain)", "car IDF1 (gain)",
             "pedestrian MOTA / IDF1", "process p50 / p99 ms", "encode p50 / p99 ms", "encode parts p50 ms",
             "frames each sensor was encoded in"], rows), ""]
        crow = []
        for c in m["contributions"]:
            g = c["gain"]
            bags = "; ".join(f"{b}: {_f(x['iou'], sign=True)} / {_f(x['car_mota'], sign=True)}"
                             for b, x in g["per_bag"].items())
            crow.append([c["sensor"], f"`{c['added_to']}`", _f(g["iou"], sign=True) + _ci(g.get("iou_ci95")),
                         _f(g["moving_iou"], sign=True) + _ci(g.get("moving_iou_ci95")),
                         _f(g["tracking"].get("car", {}).get("mota"), sign=True),
                         _f(g["tracking"].get("car", {}).get("idf1"), sign=True), bags,
                         "–" if not c["encode_part_ms"] else f"{c['encode_part_ms']['p50']:.1f}",
                         _f(g["process_p50_ms"], 1, sign=True)])
        if crow:
            lines += ["Each sensor's contribution (the set with it minus the set without it):", "", _table(
                ["sensor", "added to", "IoU gain [95 %]", "moving IoU gain [95 %]", "car MOTA gain",
                 "car IDF1 gain", "per bag: IoU / car MOTA gain", "its encode part p50 ms", "process p50 change ms"],
                crow), ""]
    if ab["failed"]:
        lines += ["Failed sets (the others are complete):", ""]
        lines += [f"- `{n}`: {why}" for n, why in ab["failed"].items()] + [""]
    lines.append("Latency: wall clock per stage of `process` on the machine that ran the evaluation, run one set "
                 "after another; the per-sensor encode parts are timed inside the same frames, the change in the "
                 "process p50 also carries the machine's load drift between sets (`load_avg` in metrics.json).")
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def plot(ab: dict, path) -> bool:
    """Left: each set's gain over LiDAR only (IoU and moving IoU with their 95 % intervals, car MOTA
    and IDF1); right: the encode stage's parts per sensor (p50), the process p50 written above.
    One figure per evaluation (the first model with rows)."""
    spec = next((s for s, m in ab["models"].items() if m["rows"]), None)
    if spec is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ab["models"][spec]["rows"]
    gains = [r for r in rows if r["gain_over_lidar"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    metrics = [("IoU", "iou", "iou_ci95"), ("moving IoU", "moving_iou", "moving_iou_ci95"),
               ("car MOTA", ("car", "mota"), None), ("car IDF1", ("car", "idf1"), None)]
    x = np.arange(len(gains))
    w = 0.8 / len(metrics)
    for k, (label, key, ci_key) in enumerate(metrics):
        vals, err = [], [[], []]
        for r in gains:
            g = r["gain_over_lidar"]
            v = (g["tracking"].get(key[0]) or {}).get(key[1]) if isinstance(key, tuple) else g.get(key)
            v = np.nan if v is None else v
            ci = g.get(ci_key) if ci_key else None
            vals.append(v)
            err[0].append(v - ci[0] if ci else 0.0)
            err[1].append(ci[1] - v if ci else 0.0)
        ax.bar(x + (k - (len(metrics) - 1) / 2) * w, vals, w, label=label, yerr=err if ci_key else None, capsize=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [r["set"] for r in gains], fontsize=8)
    ax.set_ylabel("gain over LiDAR only")
    ax.set_title(f"{spec}: gain over LiDAR only (bars: 95 % bootstrap interval)", fontsize=9)
    ax.legend(fontsize=7)
    xs = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for s in SENSORS:
        v = np.array([(r["latency_ms"]["encode_parts"].get(s) or {}).get("p50", 0.0) for r in rows])
        bx.bar(xs, v, 0.5, bottom=bottom, label=f"encode: {s}")
        bottom += v
    for i, r in enumerate(rows):
        p50 = (r["latency_ms"]["process"] or {}).get("p50")
        if p50 is not None:
            bx.text(i, bottom[i], f"process\n{p50:.0f} ms", ha="center", va="bottom", fontsize=7)
    bx.set_ylim(0, max(bottom.max(), 1.0) * 1.35)
    bx.set_xticks(xs, [r["set"] for r in rows], fontsize=8)
    bx.set_ylabel("encode parts, p50 [ms per frame]")
    bx.set_title("latency: encode stage per sensor (process p50 above)", fontsize=9)
    bx.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
