"""`make demo`: the product end to end on this machine, over real DDS.

1. simulate the embedded `demo` scenario (urban, a localization jump and a LiDAR dropout) to a bag;
2. start the perception node (the CPU or GPU default parameter file, sim time), a recorder and the replay as
   separate processes on a random ROS_DOMAIN_ID;
3. compare what the node published with the bag's ground truth and write out/demo/: report.md,
   metrics.json, PNG pictures (occupancy strip vs ground truth, tracks in odom, IoU over time with
   the resets, latency histogram) and the logs.

    python -m ssm_perception.demo [--out out/demo] [--seed 0] [--rate 1.0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

NS = 1_000_000_000
RECORDED = {
    "/perception/occupancy_grid": "nav_msgs/msg/OccupancyGrid",
    "/perception/tracks": "ssm_perception/msg/TrackArray",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}
RESET_LINE = re.compile(r"\]: state reset at (?P<t>[\d.]+) s: (?P<what>.*)$")  # the node's ROS log line


def say(msg: str) -> None:
    print(f"\033[1m[demo]\033[0m {msg}", flush=True)


# ------------------------------------------------------------------------------------ 1. scenario
def generate(bag: Path, seed: int, duration_s: float | None) -> None:
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    sc = Scenario.from_preset("demo", seed=seed, duration_s=duration_s)
    say(f"simulating the 'demo' scenario ({sc.config.duration_s:g} s, seed {seed}) -> {bag}")
    write_bag(sc, bag, progress=True)


# ------------------------------------------------------------------------------------ 2. node graph
def run_graph(out: Path, bag: Path, config: Path, rate: float, lockstep: bool = False) -> dict:
    from ssm_perception.nodes.launcher import (
        Graph,
        dds_env,
        dds_summary,
        node_command,
        replay_command,
    )

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dds_env()
    env["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
    # Isolation comes from the random domain id: LOCALHOST discovery would lose large clouds (dds_env).
    env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    env["PYTHONUNBUFFERED"] = "1"
    graph = Graph(env=env)
    recorded = out / "outputs_bag"
    say(f"starting the node graph on ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, {dds_summary(env)} (logs in {logs}/)")
    t0 = time.monotonic()
    files = {n: (logs / f"{n}.log").open("w") for n in ("node", "recorder", "replay")}
    try:
        graph.start("node", node_command(config, use_sim_time=True), stdout=files["node"], stderr=files["node"])
        rec_cmd = [sys.executable, "-m", "ssm_perception.nodes.recorder", str(recorded), "--use-sim-time",
                   *[f"{t}:{ty}" for t, ty in RECORDED.items()]]
        graph.start("recorder", rec_cmd, stdout=files["recorder"], stderr=files["recorder"])
        say(f"replaying {bag.name} at x{rate:g} once the node subscribes (progress below)")
        # The replay's progress bar goes to this terminal; its messages to the log.
        replay = graph.start("replay", replay_command(bag, rate=rate, wait_subscribers_s=60.0,
                                                      lockstep="/perception/occupancy_grid" if lockstep else ""),
                             stdout=files["replay"])
        while replay.poll() is None:
            done = graph.poll()
            if done is not None and done[0] != "replay":
                raise RuntimeError(f"{done[0]} exited early with code {done[1]}; see {logs}/{done[0]}.log")
            time.sleep(0.2)
        if replay.returncode != 0:
            raise RuntimeError(f"replay failed with code {replay.returncode}; see {logs}/replay.log")
        time.sleep(2.0)  # the last frames and a final diagnostics message
    finally:
        codes = graph.stop()
        for f in files.values():
            f.close()
    say(f"graph stopped after {time.monotonic() - t0:.0f} s (exit codes: {codes})")
    return {"recorded": recorded, "node_log": logs / "node.log", "domain_id": env["ROS_DOMAIN_ID"]}


# ------------------------------------------------------------------------------------ 3. analysis
def _stamp(h) -> int:
    return int(h.stamp.sec) * NS + int(h.stamp.nanosec)


def load(bag: Path, recorded: Path) -> dict:
    """Node outputs and ground truth, keyed by LiDAR stamp [ns]."""
    from ssm_perception.io.bag import read_messages
    from ssm_perception.io.ros_convert import occupancy_grid_to_array

    d = {"grid": {}, "recv_ns": {}, "tracks": {}, "diag": [], "gt_occ": {}, "gt_dyn": {}, "gt_vis": {},
         "gt_obj": {}, "odom": {}, "events": [], "grid_info": None}
    for topic, _, t, m in read_messages(recorded):
        if topic == "/perception/occupancy_grid":
            s = _stamp(m.header)
            d["grid"][s] = occupancy_grid_to_array(m)
            d["recv_ns"][s] = t  # node clock (sim time) at the recorder
            d["grid_info"] = m.info
        elif topic == "/perception/tracks":
            d["tracks"][_stamp(m.header)] = m.tracks
        elif topic == "/diagnostics":
            d["diag"].append(m)
    gt_topics = {"/ground_truth/occupancy": "gt_occ", "/ground_truth/dynamic": "gt_dyn",
                 "/ground_truth/visibility": "gt_vis"}
    for topic, _, _, m in read_messages(bag, [*gt_topics, "/ground_truth/objects", "/ground_truth/events", "/odom"]):
        if topic in gt_topics:
            d[gt_topics[topic]][_stamp(m.header)] = occupancy_grid_to_array(m) == 100
        elif topic == "/ground_truth/objects":
            d["gt_obj"][_stamp(m.header)] = m.tracks
        elif topic == "/ground_truth/events":
            d["events"].append(json.loads(m.data))
        elif topic == "/odom":
            p = m.pose.pose.position
            d["odom"][_stamp(m.header)] = (p.x, p.y)
    return d


def _level(st) -> int:
    """DiagnosticStatus.level: bytes in rclpy, an int in rosbags."""
    return st.level[0] if isinstance(st.level, (bytes, bytearray)) else int(st.level)


def _diag_values(arr, suffix: str) -> tuple[int, str, dict[str, str]] | None:
    for st in arr.status:
        if st.name.endswith(suffix):
            return _level(st), st.message, {kv.key: kv.value for kv in st.values}
    return None


def analyse(d: dict, node_log: Path, grid_cfg) -> dict:
    from ssm_perception.eval.mot import GroundTruthObject, MotEvaluator
    from ssm_perception.eval.occupancy import OccupancyMetrics, range_map
    from ssm_perception.evidence import decode_occupancy
    from ssm_perception.io.track_fields import class_of

    g = grid_cfg
    occ_metrics = OccupancyMetrics(range_map(g.nx, g.ny, g.resolution, g.x_min, g.y_min))
    per_frame = []
    matched = sorted(s for s in d["grid"] if s in d["gt_occ"])
    for s in matched:
        v = d["grid"][s]
        prob = decode_occupancy(v)  # as evaluate decodes it: value / 100, unknown (-1) as 0.5 (not occupied)
        f = occ_metrics.add(prob, d["gt_occ"][s], d["gt_dyn"].get(s, np.zeros_like(v, bool)),
                            d["gt_vis"].get(s, np.ones_like(v, bool)))
        known = float((v >= 0).mean())
        per_frame.append({"stamp_ns": s, "iou": f["all"], "known_fraction": known,
                          "visible_fraction": float(d["gt_vis"].get(s, np.ones_like(v, bool)).mean())})
    occ = occ_metrics.summary()

    # Tracks vs ground-truth objects inside the grid around the ego (odom).
    mot = MotEvaluator(max_distance_m=2.0)
    odom_stamps = np.array(sorted(d["odom"]))
    track_counts, gt_counts = [], []
    half = min(g.length_x, g.length_y) / 2.0
    for s in sorted(d["tracks"]):
        if s not in d["gt_obj"] or len(odom_stamps) == 0:
            continue
        ex, ey = d["odom"][int(odom_stamps[np.argmin(np.abs(odom_stamps - s))])]
        gt = [GroundTruthObject(id=int(o.track_number), cls=class_of(o.classification), x=o.pose.pose.position.x,
                                y=o.pose.pose.position.y)
              for o in d["gt_obj"][s]
              if max(abs(o.pose.pose.position.x - ex), abs(o.pose.pose.position.y - ey)) < half]
        hyp = [GroundTruthObject(id=int(t.track_number), cls=class_of(t.classification),
                                 x=t.pose.pose.position.x, y=t.pose.pose.position.y)
               for t in d["tracks"][s] if t.status != 0]  # confirmed and coasting
        mot.update(gt, hyp)
        track_counts.append(len(hyp))
        gt_counts.append(len(gt))
    mot_summary = mot.compute() if mot.num_frames else {}

    # Resets: the node's log lines (stamp and reasons) and the final counts in /diagnostics.
    resets = []
    for line in node_log.read_text().splitlines():
        m = RESET_LINE.search(line)
        if m:
            resets.append({"stamp_ns": round(float(m["t"]) * NS), "what": m["what"]})
    final = {}
    levels: dict[str, dict[int, int]] = {}
    for arr in d["diag"]:
        for st in arr.status:
            levels.setdefault(st.name, {}).setdefault(_level(st), 0)
            levels[st.name][_level(st)] += 1
    if d["diag"]:
        last = d["diag"][-1]
        final = {st.name: {"level": _level(st), "message": st.message,
                           "values": {kv.key: kv.value for kv in st.values}} for st in last.status}
    lat = _diag_values(d["diag"][-1], ": latency")[2] if d["diag"] else {}
    e2e_ms = [(d["recv_ns"][s] - s) / 1e6 for s in sorted(d["recv_ns"])]
    state = final.get("ssm_perception: state", {}).get("values", {})
    lidar = final.get("ssm_perception: sensor lidar", {}).get("values", {})
    return {
        "t0_ns": min(d["gt_occ"]) if d["gt_occ"] else 0,
        "frames": {"lidar_frames_with_ground_truth": len(d["gt_occ"]), "lidar_received_by_node": lidar.get("received"),
                   "dropped_while_busy": state.get("frames_dropped_busy"), "grids_received": len(d["grid"]),
                   "grids_matched": len(matched), "track_messages": len(d["tracks"])},
        "occupancy": {"iou_all": occ["splits"]["all"]["iou"], "iou_visible": occ["splits"]["visible"]["iou"],
                      "iou_occluded": occ["splits"]["occluded"]["iou"], "iou_static": occ["splits"]["static"]["iou"],
                      "iou_dynamic": occ["splits"]["dynamic"]["iou"], "ece": occ["ece"],
                      "known_fraction_mean": float(np.mean([f["known_fraction"] for f in per_frame])) if per_frame else None,
                      "visible_fraction_mean": float(np.mean([f["visible_fraction"] for f in per_frame])) if per_frame else None},
        "per_frame": per_frame,
        "tracks": {"mean_tracks": float(np.mean(track_counts)) if track_counts else 0.0,
                   "max_tracks": int(max(track_counts, default=0)),
                   "mean_gt_objects_in_grid": float(np.mean(gt_counts)) if gt_counts else 0.0,
                   "mot": mot_summary},
        "latency_ms": {k: float(v) for k, v in lat.items() if k.endswith((".p50", ".p99"))},
        "e2e_ms": e2e_ms,
        "resets": resets,
        "events": d["events"],
        "diagnostics": {"levels": levels, "final": final},
    }


# ------------------------------------------------------------------------------------ 4. pictures
def _paths(tracks_by_stamp: dict, keep=lambda t: True) -> dict[int, np.ndarray]:
    """[N, 2] odom positions per track number, in stamp order, of the Track messages ``keep`` accepts."""
    xy: dict[int, list] = {}
    for s in sorted(tracks_by_stamp):
        for t in tracks_by_stamp[s]:
            if keep(t):
                xy.setdefault(int(t.track_number), []).append((t.pose.pose.position.x, t.pose.pose.position.y))
    return {k: np.array(v) for k, v in xy.items()}


def pictures(out: Path, d: dict, m: dict, grid_cfg) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    g = grid_cfg
    names = []
    # Occupancy strip: prediction over ground truth, x forward = up, y left = left.
    stamps = [f["stamp_ns"] for f in m["per_frame"]]
    if stamps:
        t0 = m["t0_ns"]
        pick = [stamps[int(i)] for i in np.linspace(0, len(stamps) - 1, min(6, len(stamps)))]
        fig, axes = plt.subplots(2, len(pick), figsize=(3.0 * len(pick), 6.4), squeeze=False)
        extent = (-g.y_min, g.y_min, g.x_min, -g.x_min)  # left = +y
        cmap = ListedColormap(["#7f7f7f"] + [plt.cm.Greys(v) for v in np.linspace(0, 1, 101)])
        for k, s in enumerate(pick):
            v = d["grid"][s].astype(np.float32)
            axes[0, k].imshow(v[::-1, ::-1], cmap=cmap, vmin=-1, vmax=100, extent=extent, origin="upper")
            truth = np.where(d["gt_vis"].get(s, np.ones_like(v, bool)), d["gt_occ"][s] * 100.0, -1)
            axes[1, k].imshow(truth[::-1, ::-1], cmap=cmap, vmin=-1, vmax=100, extent=extent, origin="upper")
            iou = next(f["iou"] for f in m["per_frame"] if f["stamp_ns"] == s)
            axes[0, k].set_title(f"t={(s - t0) / NS:.1f} s  IoU {iou:.2f}" if iou is not None else f"t={(s - t0) / NS:.1f} s",
                                 fontsize=9)
            for a in axes[:, k]:
                a.set_xticks([])
                a.set_yticks([])
        axes[0, 0].set_ylabel("node output")
        axes[1, 0].set_ylabel("ground truth (grey: not visible)")
        fig.suptitle("Occupancy in base_link (x forward = up); grey = unknown")
        fig.tight_layout()
        fig.savefig(out / "occupancy_strip.png", dpi=90)
        plt.close(fig)
        names.append("occupancy_strip.png")

        # IoU over time with resets and ground-truth events.
        fig, ax = plt.subplots(figsize=(9, 3.2))
        ts = [(f["stamp_ns"] - t0) / NS for f in m["per_frame"]]
        ax.plot(ts, [f["iou"] if f["iou"] is not None else np.nan for f in m["per_frame"]], label="IoU (all cells)")
        ax.plot(ts, [f["known_fraction"] for f in m["per_frame"]], label="known fraction", alpha=0.7)
        for r in m["resets"]:
            ax.axvline((r["stamp_ns"] - t0) / NS, color="r", ls="--", lw=1)
            ax.text((r["stamp_ns"] - t0) / NS, 1.02, r["what"].split(" (")[0], color="r", fontsize=7, rotation=30)
        for e in m["events"]:
            ax.axvspan((e["start_ns"] - t0) / NS, (e["end_ns"] - t0) / NS + 0.05, color="orange", alpha=0.25)
        ax.set_xlabel("time since the first LiDAR frame [s] (orange: injected events, red: resets)")
        ax.set_ylim(0, 1.1)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "iou_over_time.png", dpi=90)
        plt.close(fig)
        names.append("iou_over_time.png")

    # Tracks over time in odom.
    fig, ax = plt.subplots(figsize=(7, 7))
    path = np.array([d["odom"][s] for s in sorted(d["odom"])]) if d["odom"] else np.zeros((0, 2))
    if len(path):
        ax.plot(path[:, 0], path[:, 1], "k-", lw=2, label="ego (odom)")
    for xy in _paths(d["gt_obj"]).values():
        ax.plot(xy[:, 0], xy[:, 1], color="0.8", lw=1)
    tr_xy = _paths(d["tracks"], lambda t: t.status != 0)  # not tentative
    for tid, xy in tr_xy.items():
        ax.plot(xy[:, 0], xy[:, 1], ".-", ms=3, lw=1, label=None)
        ax.annotate(str(tid), xy[-1], fontsize=6)
    if len(path):
        pad = max(g.length_x, g.length_y) / 2
        ax.set_xlim(path[:, 0].min() - pad, path[:, 0].max() + pad)
        ax.set_ylim(path[:, 1].min() - pad, path[:, 1].max() + pad)
    ax.set_aspect("equal")
    ax.set_title(f"Tracks in odom ({len(tr_xy)} confirmed ids; grey: ground truth)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tracks_odom.png", dpi=90)
    plt.close(fig)
    names.append("tracks_odom.png")

    # Latency histogram (sensor stamp -> reception by the recorder, node clock = sim time).
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if m["e2e_ms"]:
        ax.hist(m["e2e_ms"], bins=30, color="tab:blue")
        ax.axvline(np.percentile(m["e2e_ms"], 50), color="k", ls="--", label="p50")
        ax.axvline(np.percentile(m["e2e_ms"], 99), color="r", ls="--", label="p99")
        ax.legend()
    ax.set_xlabel("sensor stamp -> grid received [ms] (node clock)")
    ax.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(out / "latency_hist.png", dpi=90)
    plt.close(fig)
    names.append("latency_hist.png")
    return names


# ------------------------------------------------------------------------------------ 5. report
def _f(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def report(out: Path, m: dict, pics: list[str], info: dict) -> Path:
    fr, oc, tr = m["frames"], m["occupancy"], m["tracks"]
    lines = [
        "# ssm_perception demo report", "",
        (f"Scenario `demo` (seed {info['seed']}, {info['duration_s']:g} s), replayed at x{info['rate']:g}"
        f"{' in lockstep with the node' if info['lockstep'] else ' in real time'} over DDS "
        f"(ROS_DOMAIN_ID {info['domain_id']}) into the perception node with `{info['config']}`; "
        f"model: {info['model']}. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in "
        f"{info['wall_s']:.0f} s."), "",
        "## Frames", "",
        (f"- LiDAR frames in the bag (with ground truth): {fr['lidar_frames_with_ground_truth']}; received by the "
         f"node: {fr['lidar_received_by_node']}; skipped because the node was still busy with the previous frame: "
         f"{fr['dropped_while_busy']}"),
        (f"- grids received: {fr['grids_received']}; matched to ground truth by stamp: {fr['grids_matched']}; "
         f"track messages: {fr['track_messages']}"),
        "",
        ("## Occupancy of the published grid (occupied: value > 50; -1 read as 0.5, not occupied; "
         "the same decoding as `ssm-perception evaluate`)"), "",
        "| split | IoU |", "|---|---|",
        *[f"| {k.removeprefix('iou_')} | {_f(oc[k])} |" for k in
          ("iou_all", "iou_visible", "iou_occluded", "iou_static", "iou_dynamic")],
        "",
        f"- expected calibration error: {_f(oc['ece'])}",
        (f"- known cells (not -1) per frame, mean: {_f(oc['known_fraction_mean'], '{:.1%}')}; "
        f"ground-truth visible cells, mean: {_f(oc['visible_fraction_mean'], '{:.1%}')}"),
        "",
        "## Tracks", "",
        (f"- confirmed/coasting tracks per frame: mean {tr['mean_tracks']:.1f}, max {tr['max_tracks']}; "
        f"ground-truth objects inside the grid per frame: mean {tr['mean_gt_objects_in_grid']:.1f}"),
    ]
    if tr["mot"]:
        lines += ["", "| class | MOTA | IDF1 | ID switches | HOTA |", "|---|---|---|---|---|"]
        for cls, row in tr["mot"].items():
            lines.append(f"| {cls} | {_f(row.get('mota'))} | {_f(row.get('idf1'))} | "
                         f"{_f(row.get('id_switches'), '{:.0f}')} | {_f(row.get('hota'))} |")
    lines += ["", "## Latency (node's /diagnostics at the end of the run; window of the last 200 frames)", "",
              "| stage | p50 [ms] | p99 [ms] |", "|---|---|---|"]
    stages = sorted({k.rsplit("_ms.", 1)[0] for k in m["latency_ms"]})
    for st in stages:
        lines.append(f"| {st} | {_f(m['latency_ms'].get(f'{st}_ms.p50'), '{:.1f}')} | "
                     f"{_f(m['latency_ms'].get(f'{st}_ms.p99'), '{:.1f}')} |")
    if m["e2e_ms"]:
        lines += ["", (f"Sensor stamp -> grid received by the recorder (node clock): p50 "
                      f"{np.percentile(m['e2e_ms'], 50):.0f} ms, p99 {np.percentile(m['e2e_ms'], 99):.0f} ms "
                      "(sim time: quantized by the /clock rate of the replay; includes the simulated sensor latency).")]
    t0 = m["t0_ns"]
    lines += ["", "## Resets (t: seconds since the first LiDAR frame)", "", "| t [s] | reasons |", "|---|---|"]
    for r in m["resets"]:
        lines.append(f"| {(r['stamp_ns'] - t0) / NS:.2f} | {r['what']} |")
    lines += ["", "Injected events (ground truth):", ""]
    for e in m["events"]:
        lines.append(f"- {e['type']} at t = {(e['start_ns'] - t0) / NS:.2f}-{(e['end_ns'] - t0) / NS:.2f} s")
    lines += ["", "## Diagnostics summary", "", "| status | OK | WARN | ERROR | final message |", "|---|---|---|---|---|"]
    for name, lv in sorted(m["diagnostics"]["levels"].items()):
        final = m["diagnostics"]["final"].get(name, {}).get("message", "")
        lines.append(f"| {name} | {lv.get(0, 0)} | {lv.get(1, 0)} | {lv.get(2, 0)} | {final} |")
    lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pics]
    lines += ["", ("Files: `metrics.json` (all numbers above), `scenario_bag/` (input), `outputs_bag/` (what the node "
              "published), `logs/` (node, recorder, replay).")]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ssm_perception demo: simulate, replay over DDS, report")
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    # Lockstep by default: on a 2-core desk machine the CPU model cannot keep up with 10 Hz, and a
    # temporal model fed every sixth frame says little about the model; --realtime shows the drops.
    ap.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=True,
                    help="replay waits for the node's grid after each scan: every frame is processed, however "
                         "slow the machine (latency then no longer reflects real time); --no-lockstep replays "
                         "in real time and counts the frames the node had to skip")
    ap.add_argument("--duration", type=float, default=None, help="scenario seconds (default: the preset's)")
    ap.add_argument("--config", default="", help="node parameter file (default: the CPU or GPU default file, ssm_perception/defaults.py)")
    args = ap.parse_args(argv)

    from ssm_perception.config import PerceptionConfig
    from ssm_perception.nodes.perception_node import default_config_path

    t_start = time.monotonic()
    out = Path(args.out)
    config = Path(args.config) if args.config else default_config_path()
    cfg = PerceptionConfig.from_yaml(config)
    for old in ("scenario_bag", "outputs_bag", "logs"):
        shutil.rmtree(out / old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "scenario_bag"
    generate(bag, args.seed, args.duration)
    ran = run_graph(out, bag, config, args.rate, args.lockstep)
    say("comparing the node's output with the ground truth")
    data = load(bag, ran["recorded"])
    if not data["grid"]:
        say(f"the node published no occupancy grid; see {ran['node_log']}")
        return 1
    metrics = analyse(data, ran["node_log"], cfg.grid)
    pics = pictures(out, data, metrics, cfg.grid)
    from ssm_perception.sim.presets import PRESETS

    model = next((ln.split("model ", 1)[1].split(";")[0] for ln in ran["node_log"].read_text().splitlines()
                  if "ready: grid" in ln), "?")
    info = {"seed": args.seed, "duration_s": args.duration or PRESETS["demo"][1], "rate": args.rate,
            "lockstep": args.lockstep,
            "domain_id": ran["domain_id"], "config": str(config), "model": model,
            "wall_s": time.monotonic() - t_start}
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "e2e_ms"} | {"run": info},
                                                 indent=1, default=str))
    path = report(out, metrics, pics, info)
    oc = metrics["occupancy"]
    say(f"done in {time.monotonic() - t_start:.0f} s: IoU {_f(oc['iou_all'])} (visible {_f(oc['iou_visible'])}), "
        f"{metrics['frames']['grids_received']} grids, {len(metrics['resets'])} resets")
    say(f"report: {path.resolve()}")
    say(f"pictures: {', '.join(str((out / p).resolve()) for p in pics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
