"""Offline evaluation: replay rosbag2 files through PerceptionPipeline (the node's code path) and score.

A bag is decoded once (deterministic, no DDS): TF from /tf and /tf_static into a TfBuffer, each LiDAR
frame assembled by the node's frame assembler (frame_assembler.py: pairing with the latest
radar/camera within the configured tolerances, TF, ego twist, motion compensation). LiDAR frames wait until the bag has advanced ``TF_WAIT_NS`` past their stamp before the TF
lookup, so a transform recorded just after the cloud is still found. Every model then replays the
same decoded frames through its own fresh PerceptionPipeline.

Ground truth (simulated bags): /ground_truth/{occupancy,dynamic,visibility} (OccupancyGrid in
base_link at the LiDAR stamp, 100 = yes), /ground_truth/objects (TrackArray in odom),
/ground_truth/events (JSON per adversity). A bag without them is still evaluated for latency,
health and resets ("no ground truth" path).

What is scored is what the node publishes: evidence.published_grids builds the int8 grid (the
node's encoder calls the same function) and the metrics decode it as a planner would (value / 100,
-1 as 0.5: not occupied). The network's raw probability is scored too, as a secondary column.
Every bag, labelled or not, also gets the label-free metrics of eval/labelfree.py; a label file
(io/labels.py; the bag's labels.jsonl or --labels) adds MOTA, IDF1 and recall by range.

metrics.json (``SCHEMA_VERSION``; keys are only ever added, never renamed; version 2: ``occupancy``
scores the published grid, version 1 scored the raw probability, now ``occupancy_raw``):
    schema_version, created_utc, tool, threshold, grid {nx, ny, resolution}
    bags: [{path, name, frames, duration_s, ground_truth (bool), topics {role: topic}, missing_topics [..],
            dropped_frames {reason: n}, events [..], labels (file or null), labelled_frames}]
    models: {name: {
        kind, source, sha256,
        occupancy: null | {frames, threshold, splits {all, static, dynamic, visible, occluded,
                   static_visible, static_occluded, dynamic_visible, dynamic_occluded, range_<a>_<b>:
                   {iou, f1, precision, recall, tp, fp, fn, tn}}, moving null, ece, reliability [bins]}
        occupancy_raw: the same for the network's probability (moving {..}: P(occupied and dynamic))
        known_share: mean share of published cells that are not -1
        tracking: null | {class: {mota, motp, idf1, id_switches, fragmentations, hota, deta, assa, ...}}
        label_free: {frames, evidence_cells, evidence_coverage, evidence_coverage_network, nonground_cells,
                     nonground_coverage, see_through_cells, free_space_contradiction_rate, disagreement_mean,
                     tracks {instances_in_grid, unsupported_instances, unsupported_share, ids,
                     static_on_evidence_ids, static_on_evidence_share},
                     labels: null | {frames, tracking {class: {...}}, recall_by_range {class: [rows]},
                     tracks_far_from_labels_share}}
        track_paths: {bag: {track id: [[x, y] odom, ...]}}
        latency_ms: {stage: {p50, p99, mean, max, n}}  (stages of process; encode.<sensor>: the encode stage's
                    part per sensor the run uses, from bev.features timings)
        sensor_frames: {lidar, radar, camera: frames the sensor was encoded in (FrameOutputs.sensors)}
        resets: {count, by_reason {reason: n}, events [{bag, t_s, reasons}]}
        recovery: [{bag, type, start_s, end_s, iou_before, iou_during, iou_after, recovery_s}]
        health: {OK: n, WARN: n, ERROR: n}; evidence_health: the rule check's levels, same form
        distribution_shifts: [{bag, t_s, message}]
        lidar_input: {bag: {check: {level, message}}}  (intensity, time, ego_footprint, mounting, heading)
        per_bag: {bag name: {frames, iou_all, iou_static, iou_dynamic, iou_occluded, ece, raw_iou_all, raw_ece}}}}
    with --ablate (eval/ablation.py): models are named <model>@<sensor set> (each also has sensors, load_avg), and
    ablation: {sets, baseline_set, command, failed {run: error}, bootstrap {block_frames, samples, level},
               models {model: {rows [{set, sensors, iou, iou_occluded, ece, moving_iou, raw_iou, tracking {class:
               {mota, idf1, id_switches}}, per_bag, latency_ms {process, encode, encode_parts {sensor}}, sensor_frames,
               frames, gain_over_lidar null | {iou, iou_ci95, moving_iou, moving_iou_ci95, tracking, per_bag,
               process_p50_ms, process_p99_ms, encode_p50_ms}}], contributions [{sensor, added_to, giving, gain,
               encode_part_ms}]}}}
See eval/occupancy.py for the metric definitions (splits, threshold: occupied when P > 0.5, ECE).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ssm_perception.config import (
    PerceptionConfig,
    TopicsConfig,
    UserError,
    topic_name_problem,
)
from ssm_perception.eval.occupancy import OccupancyMetrics, range_map

if TYPE_CHECKING:
    from ssm_perception.eval.labelfree import LabelFreeMetrics

SCHEMA_VERSION = 2
NS = 1_000_000_000
TF_WAIT_NS = 200_000_000  # bag time a LiDAR frame waits for its TF (the node waits on arrival instead)
RECOVERY_WINDOW_S = 3.0  # IoU after an adversity/reset is averaged over this many seconds
BEFORE_WINDOW_S = 2.0

GT_TOPICS = {
    "gt_occupancy": "/ground_truth/occupancy",
    "gt_dynamic": "/ground_truth/dynamic",
    "gt_visibility": "/ground_truth/visibility",
    "gt_objects": "/ground_truth/objects",
    "gt_events": "/ground_truth/events",
    "gt_scenario": "/ground_truth/scenario",
}
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


class EvaluationError(UserError, RuntimeError):
    """A bag or option that cannot be evaluated; the message says what to change."""


# ---------------------------------------------------------------------------------- topics
def topic_roles(topics: TopicsConfig, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """{role: topic} for every input the evaluator reads; ``overrides`` from --topic-map role=/topic."""
    roles = {
        "lidar": topics.lidar, "radar": topics.radar, "camera_image": topics.camera_image,
        "camera_info": topics.camera_info, "tf": "/tf", "tf_static": "/tf_static", "zone": "/vehicle/zone",
        **GT_TOPICS,
    }
    aliases = {"camera": "camera_image", "image": "camera_image", "occupancy": "gt_occupancy",
               "objects": "gt_objects", "events": "gt_events"}
    for key, topic in (overrides or {}).items():
        role = aliases.get(key, key)
        if role not in roles:
            raise EvaluationError(f"--topic-map: unknown role {key!r}; roles: {sorted(roles)}")
        if not topic.startswith("/"):
            raise EvaluationError(f"--topic-map {key}={topic}: a topic name starts with '/'")
        roles[role] = topic
    return roles


def parse_topic_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise EvaluationError(f"--topic-map expects role=/topic, got {item!r}")
        k, v = item.split("=", 1)
        if problem := topic_name_problem(v.strip()):
            raise EvaluationError(f"--topic-map {item!r}: not a ROS 2 topic name: {problem}")
        out[k.strip()] = v.strip()
    return out


def describe_bag(contents: dict[str, tuple[str, int]]) -> str:
    if not contents:
        return "  (no topics)"
    return "\n".join(f"  {t}  [{ty}, {n} msgs]" for t, (ty, n) in sorted(contents.items()))


# ---------------------------------------------------------------------------------- decoding
@dataclass
class GroundTruth:
    grids: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)  # stamp -> occ, dyn, vis
    objects: dict[int, list] = field(default_factory=dict)  # stamp -> [GroundTruthObject] (odom)
    events: list[dict] = field(default_factory=list)
    scenario: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.grids)


@dataclass
class DecodedBag:
    path: Path
    frames: list  # [FrameInputs] in stamp order
    gt: GroundTruth
    roles: dict[str, str]
    contents: dict[str, tuple[str, int]]
    missing: list[str]
    dropped: Counter
    start_ns: int
    labels: dict[int, list] | None = None  # io.labels: {stamp_ns: [LabelBox]} when the bag has a label file
    label_file: str | None = None

    @property
    def label_stamps(self) -> np.ndarray | None:
        return None if not self.labels else np.array(sorted(self.labels), dtype=np.int64)

    @property
    def name(self) -> str:
        return self.path.name

    def t_s(self, stamp_ns: int) -> float:
        return (stamp_ns - self.start_ns) / NS


def _grid_bool(msg, cfg: PerceptionConfig, topic: str) -> np.ndarray:
    from ssm_perception.io.bag import occupancy_grid_to_array

    arr = occupancy_grid_to_array(msg)
    if arr.shape != (cfg.grid.nx, cfg.grid.ny) or abs(msg.info.resolution - cfg.grid.resolution) > 1e-6:
        raise EvaluationError(
            f"{topic}: ground-truth grid {arr.shape[0]}x{arr.shape[1]} at {msg.info.resolution:g} m does not match "
            f"the configured grid {cfg.grid.nx}x{cfg.grid.ny} at {cfg.grid.resolution:g} m; pass --config with the "
            "bag's grid"
        )
    return arr >= 50


def decode_bag(path: str | Path, cfg: PerceptionConfig, roles: dict[str, str], progress: bool = True) -> DecodedBag:
    """Read a bag once into FrameInputs (TF resolved) + ground truth. Raises EvaluationError with the
    bag's topic list when the LiDAR topic is missing or of the wrong type."""
    from ssm_perception.eval.tracking import ground_truth_objects
    from ssm_perception.frame_assembler import FrameAssembler, Stamped
    from ssm_perception.io.bag import BagError, bag_topics, read_messages
    from ssm_perception.io.pointcloud2 import PointCloudDecodeError, cloud_to_array
    from ssm_perception.io.ros_convert import (
        CameraInfoError,
        camera_info_to_model,
        image_to_array,
        stamp_to_ns,
    )
    from ssm_perception.tf_buffer import TfBuffer, TfError

    path = Path(path)
    try:
        contents = bag_topics(path)
    except BagError as exc:
        raise EvaluationError(str(exc)) from None
    lidar_topic = roles["lidar"]
    if lidar_topic not in contents:
        clouds = [t for t, (ty, _) in contents.items() if ty == POINTCLOUD2]
        hint = f" PointCloud2 topics in it: {clouds}; map one with --topic-map lidar=<topic>." if clouds else ""
        raise EvaluationError(f"{path}: LiDAR topic {lidar_topic} is not in the bag.{hint}\n"
                              f"The bag contains:\n{describe_bag(contents)}")
    if contents[lidar_topic][0] != POINTCLOUD2:
        raise EvaluationError(f"{path}: {lidar_topic} is {contents[lidar_topic][0]}, not {POINTCLOUD2}.\n"
                              f"The bag contains:\n{describe_bag(contents)}")
    if roles["tf"] not in contents and roles["tf_static"] not in contents:
        raise EvaluationError(f"{path}: no TF ({roles['tf']} / {roles['tf_static']}): the odom -> base_link pose "
                              f"and the sensor mounts come from TF.\nThe bag contains:\n{describe_bag(contents)}")
    disabled = {"radar"} if not cfg.sensors.use_radar else set()
    disabled |= {"camera_image", "camera_info"} if not cfg.sensors.use_camera else set()
    wanted = {r: t for r, t in roles.items() if t in contents and r not in disabled}
    missing = sorted(f"{r} ({t})" for r, t in roles.items()
                     if t not in contents and not r.startswith("gt_") and r not in disabled)
    by_topic: dict[str, list[str]] = {}
    for r, t in wanted.items():
        by_topic.setdefault(t, []).append(r)

    s = cfg.sensors
    tf = TfBuffer(cache_s=max(s.tf_cache_s, 30.0), extrapolation_limit_s=s.tf_extrapolation_limit_s)
    # Pairing, TF lookups, ego twist and motion compensation: the node's assembler.
    assembler = FrameAssembler(cfg, tf)
    gt = GroundTruth()
    frames: list = []
    dropped: Counter = Counter()
    pending: list[tuple] = []  # (stamp, points, frame_id, assembler snapshot at the LiDAR's arrival)
    start_ns: int | None = None
    first_tf_errors: list[str] = []
    dropped_as = {"tf_radar": "radar: no TF (frame kept without radar)",
                  "tf_camera": "camera: no TF (frame kept without camera)"}

    def resolve(item) -> None:
        stamp, pts, frame_id, snapshot = item
        out = assembler.assemble(stamp, pts, frame_id, snapshot)
        for flag, text in out.problems:
            if flag in dropped_as:
                dropped[dropped_as[flag]] += 1
            else:
                dropped[f"tf: {flag}"] += 1
                if not first_tf_errors:
                    first_tf_errors.append(text)
        if out.inputs is not None:
            frames.append(out.inputs)

    total = sum(contents[t][1] for t in by_topic)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"read {path.name}", unit="msg", leave=False)
    for topic, _msgtype, bag_ns, msg in read_messages(path, list(by_topic)):
        if bar is not None:
            bar.update(1)
        start_ns = bag_ns if start_ns is None else start_ns
        while pending and pending[0][0] + TF_WAIT_NS <= bag_ns:
            resolve(pending.pop(0))
        for role in by_topic[topic]:
            if role in ("tf", "tf_static"):
                for t in msg.transforms:
                    try:
                        tf.set_from_message(t, static=role == "tf_static")
                    except TfError:
                        dropped["tf: invalid transform message"] += 1
            elif role == "lidar":
                try:
                    stamp = stamp_to_ns(msg.header.stamp)
                    pts = cloud_to_array(msg)
                except (PointCloudDecodeError, ValueError) as exc:
                    dropped[f"lidar: {type(exc).__name__}"] += 1
                    continue
                if frames and stamp <= frames[-1].stamp_ns or pending and stamp <= pending[-1][0]:
                    dropped["lidar: stamp not increasing"] += 1
                    continue
                pending.append((stamp, pts, msg.header.frame_id, assembler.snapshot()))
            elif role == "radar":
                try:
                    assembler.radar = Stamped(cloud_to_array(msg), msg.header.frame_id, stamp_to_ns(msg.header.stamp))
                except (PointCloudDecodeError, ValueError):
                    dropped["radar: undecodable cloud"] += 1
            elif role == "camera_image":
                try:
                    assembler.image = Stamped(image_to_array(msg), msg.header.frame_id, stamp_to_ns(msg.header.stamp))
                except ValueError:
                    dropped["camera: undecodable image"] += 1
            elif role == "camera_info":
                try:
                    assembler.camera_info = camera_info_to_model(msg)
                except CameraInfoError:
                    dropped["camera: invalid camera_info"] += 1
            elif role == "zone":
                assembler.zone = str(msg.data)
            elif role == "gt_scenario":
                gt.scenario = str(msg.data)
            elif role == "gt_events":
                gt.events.append(json.loads(msg.data))
            elif role == "gt_objects":
                gt.objects[stamp_to_ns(msg.header.stamp)] = ground_truth_objects(msg)
            elif role in ("gt_occupancy", "gt_dynamic", "gt_visibility"):
                st = stamp_to_ns(msg.header.stamp)
                k = ("gt_occupancy", "gt_dynamic", "gt_visibility").index(role)
                entry = list(gt.grids.get(st, (None, None, None)))
                entry[k] = _grid_bool(msg, cfg, topic)
                gt.grids[st] = tuple(entry)
    for item in pending:
        resolve(item)
    if bar is not None:
        bar.close()
    # Ground truth is usable only where all three grids arrived for a stamp.
    gt.grids = {k: v for k, v in gt.grids.items() if all(a is not None for a in v)}
    if not frames:
        why = f" First TF error: {first_tf_errors[0]}" if first_tf_errors else ""
        raise EvaluationError(f"{path}: no LiDAR frame could be used ({dict(dropped)}).{why}\n"
                              f"The bag contains:\n{describe_bag(contents)}")
    return DecodedBag(path, frames, gt, {r: roles[r] for r in wanted}, contents, missing, dropped,
                      start_ns or frames[0].stamp_ns)


def attach_labels(bag: DecodedBag, label_file: str | Path | None) -> None:
    """Read the bag's label file (``label_file``, else labels.jsonl inside the bag directory, if any)."""
    from ssm_perception.io.labels import LABEL_FILE, LabelFileError, read_labels

    path = Path(label_file) if label_file else bag.path / LABEL_FILE
    if not label_file and not path.is_file():
        return
    try:
        bag.labels = read_labels(path)
    except LabelFileError as exc:
        raise EvaluationError(str(exc)) from None
    bag.label_file = str(path)


# ---------------------------------------------------------------------------------- replay + scoring
@dataclass
class BagRun:
    """One model on one bag."""

    bag: str
    occupancy: OccupancyMetrics | None  # the published grid, decoded as a planner reads it
    per_frame: list[dict]  # t_s, iou_all/static/dynamic/occluded (None without truth), reset reasons, health
    snapshots: dict[int, dict]  # frame index -> published P, raw P, P dyn, observation, evidence, points, tracks
    latency: dict[str, list[float]]
    resets: list[dict]
    health: Counter
    occupancy_raw: OccupancyMetrics | None = None  # the network's raw probability (secondary)
    evidence_levels: Counter = field(default_factory=Counter)  # rule-check level per frame
    shifts: list[dict] = field(default_factory=list)  # distribution shifts detected: t_s, message
    lidar_input: dict = field(default_factory=dict)  # bev.lidar_input checks after the last frame: {name: (level, msg)}
    sensor_frames: Counter = field(default_factory=Counter)  # frames each sensor was encoded in (FrameOutputs.sensors)


def _in_grid(objs, T_odom_base: np.ndarray, cfg: PerceptionConfig):
    """Objects (odom) whose centre lies in the BEV grid; with their cell index (i, j)."""
    from ssm_perception.geometry import invert_transform

    T = invert_transform(np.asarray(T_odom_base, np.float64))
    g = cfg.grid
    out = []
    for o in objs:
        x = T[0, 0] * o.x + T[0, 1] * o.y + T[0, 3]
        y = T[1, 0] * o.x + T[1, 1] * o.y + T[1, 3]
        i, j = math.floor((x - g.x_min) / g.resolution), math.floor((y - g.y_min) / g.resolution)
        if 0 <= i < g.nx and 0 <= j < g.ny:
            out.append((o, i, j))
    return out


def run_bag(bag: DecodedBag, pipeline, cfg: PerceptionConfig, mot, snapshot_frames: set[int], label: str,
            progress: bool = True, labelfree: LabelFreeMetrics | None = None) -> BagRun:
    """Replay the decoded frames through ``pipeline`` (fresh state) and accumulate the metrics.

    The occupancy metrics score the published grid (evidence.published_grids, the values the node
    publishes, decoded as a planner reads them: value / 100, -1 as 0.5); ``occupancy_raw`` scores
    the network's probability before the rule and the int8 encoding."""
    from ssm_perception.eval.tracking import split_ground_truth
    from ssm_perception.evidence import decode_occupancy, published_grids

    g = cfg.grid
    ranges = range_map(g.nx, g.ny, g.resolution, g.x_min, g.y_min)
    occ_metrics = OccupancyMetrics(ranges) if bag.gt.available else None
    run = BagRun(bag.name, occ_metrics, [], {}, {}, [], Counter(),
                 occupancy_raw=OccupancyMetrics(ranges) if bag.gt.available else None)
    frames = bag.frames
    if mot is not None:
        mot.start_sequence()  # a fresh pipeline restarts track ids: never match them across bags
    if labelfree is not None:
        labelfree.start_sequence()
    label_stamps = bag.label_stamps
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc=f"{label} on {bag.name}", unit="frame", leave=False)
    used = {"lidar": cfg.sensors.use_lidar, "radar": cfg.sensors.use_radar, "camera": cfg.sensors.use_camera}
    for k, inp in enumerate(frames):
        out = pipeline.process(inp)
        for stage, ms in out.latency_ms.items():
            run.latency.setdefault(stage, []).append(float(ms))
        # The encode stage's part per sensor (bev.features timings), for the sensors this run uses.
        for sensor, ms in (out.feature_stats.get("timings_ms") or {}).items():
            if used.get(sensor):
                run.latency.setdefault(f"encode.{sensor}", []).append(float(ms))
        run.sensor_frames.update(s for s, present in out.sensors.items() if present)
        run.health[out.health.level.name] += 1
        rec = {"t_s": bag.t_s(inp.stamp_ns), "reset": list(out.reset.reasons) if out.reset.full else [],
               "partial_reset": bool(out.reset.cell_mask is not None)}
        if out.reset.full:
            run.resets.append({"bag": bag.name, "t_s": rec["t_s"], "reasons": list(out.reset.reasons)})
        if out.shift is not None and out.shift.detected:
            run.shifts.append({"bag": bag.name, "t_s": rec["t_s"], "message": out.shift.message})
        run.lidar_input = out.sensor_checks
        if out.evidence_report is not None:
            run.evidence_levels[("OK", "WARN", "ERROR")[int(out.evidence_report.level)]] += 1
        pub = published_grids(out, cfg.evidence)  # exactly what the node publishes
        p_pub = decode_occupancy(pub.occupancy)
        rec["known_share"] = float((pub.occupancy >= 0).mean())
        if labelfree is not None:
            from ssm_perception.eval.labelfree import labels_for_stamp

            rec.update(labelfree.add(rec["t_s"], out, pub, labels_for_stamp(bag.labels, label_stamps, inp.stamp_ns)))
        truth = bag.gt.grids.get(inp.stamp_ns)
        if occ_metrics is not None and truth is not None:
            occ, dyn, vis = truth
            before = _tp_fp_fn(occ_metrics.counts["all"]), _tp_fp_fn(run.occupancy_raw.moving)
            rec.update(occ_metrics.add(p_pub, occ, dyn, vis))
            raw = run.occupancy_raw.add(out.occupancy, occ, dyn, vis, dyn_joint=out.dynamic)
            rec["raw_all"] = raw["all"]
            # This frame's counts (the sensor ablation's paired bootstrap resamples frames).
            rec["counts"] = {"all": tuple(np.subtract(_tp_fp_fn(occ_metrics.counts["all"]), before[0]).tolist()),
                             "moving": tuple(np.subtract(_tp_fp_fn(run.occupancy_raw.moving), before[1]).tolist())}
            if mot is not None and inp.stamp_ns in bag.gt.objects:
                # The tracking evaluation's rule (eval/tracking.py): an object counts when the
                # LiDAR saw it (Track.status in the bag), else when a cell of its footprint is visible.
                seen, hidden = split_ground_truth(bag.gt.objects[inp.stamp_ns], inp.T_odom_base, cfg.grid,
                                                  visible=vis)
                hyp = [t for t, _, _ in _in_grid([t for t in out.tracks if t.status != "tentative"],
                                                 inp.T_odom_base, cfg)]
                mot.update(seen, hyp, ignored_gt=hidden)
        run.per_frame.append(rec)
        if k in snapshot_frames:
            run.snapshots[k] = _snapshot(inp, out, pub, p_pub, cfg)
    return run


def _tp_fp_fn(c) -> tuple[int, int, int]:
    return c.tp, c.fp, c.fn


def _snapshot(inp, out, pub, p_pub, cfg: PerceptionConfig) -> dict:
    """What the pictures of one frame need: grids, the scan's points in base_link, tracks in base_link."""
    from ssm_perception.eval.labelfree import _to_base
    from ssm_perception.geometry import invert_transform, transform_points

    snap = {"p": p_pub, "raw": out.occupancy.copy(), "dyn": out.dynamic.copy(), "observation": pub.observation,
            "evidence": None, "net_free_on_evidence": None, "see_through_occupied": None, "points": None,
            "tracks": []}
    ev = out.evidence
    if ev is not None:
        evidence = ev.evidence(cfg.evidence)
        snap["evidence"] = evidence
        snap["net_free_on_evidence"] = evidence & ~(out.occupancy > 0.5)
        snap["see_through_occupied"] = ev.free_now & (pub.occupancy > 50)
    if inp.lidar is not None and inp.T_base_lidar is not None:
        xyz = np.stack([inp.lidar["x"], inp.lidar["y"], inp.lidar["z"]], 1).astype(np.float64)
        xyz = xyz[np.isfinite(xyz).all(1)]
        if len(xyz) > 20000:
            xyz = xyz[:: len(xyz) // 20000 + 1]
        snap["points"] = transform_points(np.asarray(inp.T_base_lidar, np.float64), xyz).astype(np.float32)
    if out.T_odom_base is not None and np.all(np.isfinite(out.T_odom_base)):
        T = invert_transform(np.asarray(out.T_odom_base, np.float64))
        for tr in out.tracks:
            if tr.status != "tentative":
                bx, by, byaw = _to_base(T, tr.x, tr.y, tr.yaw)
                snap["tracks"].append((int(tr.id), bx, by, byaw, float(tr.length), float(tr.width)))
    return snap


def choose_snapshots(bag: DecodedBag, max_frames: int = 3) -> list[int]:
    """Frames to draw: one a second after the first adversity ends (if any), then evenly spread."""
    n = len(bag.frames)
    stamps = np.array([f.stamp_ns for f in bag.frames])
    picks: list[int] = []
    for ev in bag.gt.events:
        end = int(ev.get("end_ns", ev.get("start_ns", 0)))
        k = int(np.searchsorted(stamps, end + NS))
        if k < n and ev.get("type") != "zone_change":
            picks.append(k)
            break
    for frac in (0.5, 0.85, 0.25):
        if len(picks) >= max_frames:
            break
        k = min(int(frac * n), n - 1)
        if all(abs(k - p) > 5 for p in picks):
            picks.append(k)
    return sorted(picks)


def recovery(bag: DecodedBag, run: BagRun) -> list[dict]:
    """IoU before, during and after each adversity event and each full reset (from the model's own
    reset decisions), and the time until the IoU is back to 90% of its pre-event level."""
    if run.occupancy is None:
        return []
    t = np.array([r["t_s"] for r in run.per_frame])
    iou = np.array([np.nan if r.get("all") is None else r["all"] for r in run.per_frame], np.float64)
    items = [{"type": e.get("type", "?"), "start_s": bag.t_s(int(e["start_ns"])), "end_s": bag.t_s(int(e["end_ns"]))}
             for e in bag.gt.events if "start_ns" in e and "end_ns" in e]
    items += [{"type": "reset:" + "+".join(r["reasons"]), "start_s": r["t_s"], "end_s": r["t_s"]}
              for r in run.resets if r["t_s"] > t[0] + 1e-6]

    def mean(mask):
        v = iou[mask & np.isfinite(iou)]
        return float(v.mean()) if v.size else None

    out = []
    for it in items:
        s0, s1 = it["start_s"], max(it["end_s"], it["start_s"])
        before = mean((t >= s0 - BEFORE_WINDOW_S) & (t < s0))
        during = mean((t >= s0) & (t <= s1))
        after_mask = (t > s1) & (t <= s1 + RECOVERY_WINDOW_S)
        after = mean(after_mask)
        rec_s = None
        if before is not None:
            ok = np.nonzero((t > s1) & np.isfinite(iou) & (iou >= 0.9 * before))[0]
            rec_s = float(t[ok[0]] - s1) if ok.size else None
        out.append({"bag": bag.name, **it, "iou_before": before, "iou_during": during, "iou_after": after,
                    "recovery_s": rec_s})
    return out


def _percentiles(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "max": float(a.max()), "n": int(a.size)}


# ---------------------------------------------------------------------------------- models
@dataclass
class ModelSpec:
    name: str
    kind: str
    checkpoint: str = ""  # empty: shipped checkpoint / training-free


def model_specs(main_checkpoint: str, baselines: list[str], cfg: PerceptionConfig) -> list[ModelSpec]:
    """Our model first (``--model``, else the configuration's model.checkpoint, else the shipped one), then each baseline
    (``kind`` or ``kind=checkpoint``)."""
    specs = [ModelSpec("model", cfg.model.kind, main_checkpoint or cfg.model.checkpoint)]
    for b in baselines:
        kind, _, ckpt = b.partition("=")
        kind = kind.strip()
        if kind not in ("logodds", "single", "convgru", "attention", "mamba"):
            raise EvaluationError(f"--baselines: unknown kind {kind!r} (logodds, single, convgru, attention, mamba)")
        specs.append(ModelSpec(kind if not ckpt else f"{kind}", kind, ckpt.strip()))
    names = Counter(s.name for s in specs)
    for s in specs:  # two entries of one kind get their checkpoint's file name to tell them apart
        if names[s.name] > 1 and s.checkpoint:
            s.name = f"{s.kind}:{Path(s.checkpoint).stem}"
    return specs


def spec_config(spec: ModelSpec, cfg: PerceptionConfig) -> PerceptionConfig:
    """The configuration a spec runs with: ``cfg`` with its kind and checkpoint."""
    c = cfg.model_copy(deep=True)
    c.model.kind = spec.kind
    c.model.checkpoint = spec.checkpoint
    return c


def check_explicit_weights(main_checkpoint: str, baselines: list[str], cfg: PerceptionConfig) -> None:
    """Before any bag is decoded: weights named explicitly must load (present, intact, trusted or
    allowed, trained with the configured model fields); raises CheckpointError. Shipped weights
    that do not fit are skipped with a reason by ``evaluate`` instead."""
    from ssm_perception.weights import check_model_weights

    for spec in model_specs(main_checkpoint, baselines, cfg):
        if spec.checkpoint:
            check_model_weights(spec_config(spec, cfg))


def build_pipeline(spec: ModelSpec, cfg: PerceptionConfig):
    """(PerceptionPipeline, info) for a spec, or (None, reason) when it has no weights to run."""
    from ssm_perception.pipeline import PerceptionPipeline

    c = spec_config(spec, cfg)
    if spec.kind != "logodds" and not spec.checkpoint:
        from ssm_perception.model import CheckpointError
        from ssm_perception.pipeline import shipped_checkpoint

        if shipped_checkpoint(spec.kind) is None:
            return None, (f"no weights for kind {spec.kind!r}: none shipped in ssm_perception/checkpoints/ and none "
                          f"given (use --model PATH, or --baselines {spec.kind}=PATH)")
        try:
            pipe = PerceptionPipeline(c)
        except CheckpointError as exc:  # shipped weights trained for another grid resolution
            return None, (f"the shipped weights for kind {spec.kind!r} do not fit this configuration ({exc}); "
                          f"give compatible ones with --baselines {spec.kind}=PATH")
        return pipe, dict(pipe.model_info)
    pipe = PerceptionPipeline(c)
    return pipe, dict(pipe.model_info)


# ---------------------------------------------------------------------------------- main entry
def evaluate(bags: list[str | Path], cfg: PerceptionConfig, out_dir: str | Path, main_checkpoint: str = "",
             baselines: list[str] | None = None, topic_map: dict[str, str] | None = None,
             progress: bool = True, plots: bool = True, labels: list[str | Path] | None = None,
             ablate: list[tuple[str, ...]] | None = None, command: str | None = None) -> dict:
    """Evaluate every model on every bag; write metrics.json, report.md and PNGs into ``out_dir``.

    ``labels``: label files (io/labels.py), one per bag in order; without, a bag's own labels.jsonl
    (written by `ssm-perception import`) is used when present.
    ``ablate``: sensor sets (eval/ablation.py); every model then runs once per set, named
    ``model@lidar+radar`` etc., and metrics.json gains ``ablation`` (also ablation.json / ablation.md).
    A set that fails is recorded with its error and the others still complete; metrics.json is
    rewritten after each set, so an interrupted run keeps the finished ones. ``command``: recorded."""
    import os
    from datetime import UTC, datetime

    from ssm_perception.eval import ablation as abl
    from ssm_perception.eval.labelfree import LabelFreeMetrics
    from ssm_perception.eval.mot import MotEvaluator

    if not bags:
        raise EvaluationError("no bag given")
    labels = list(labels or [])
    if labels and len(labels) != len(bags):
        raise EvaluationError(f"--labels: {len(labels)} label files for {len(bags)} bags (one per bag, in order)")
    for f in labels:
        if not Path(f).exists():
            raise EvaluationError(f"--labels: no such file: {f}")
    out = Path(out_dir)
    roles = topic_roles(cfg.topics, topic_map)
    sets = list(ablate or [])
    # With an ablation the bags are decoded once with every sensor a set uses; each set's frames
    # then carry only its own sensors (ablation.frames_for).
    decoded = [decode_bag(b, abl.union_config(cfg, sets) if sets else cfg, roles, progress) for b in bags]
    for k, b in enumerate(decoded):
        attach_labels(b, labels[k] if labels else None)
    specs = model_specs(main_checkpoint, list(baselines or []), cfg)
    metrics: dict = {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "ssm-perception evaluate",
        "threshold": 0.5,
        "grid": {"nx": cfg.grid.nx, "ny": cfg.grid.ny, "resolution": cfg.grid.resolution},
        "bags": [{
            "path": str(b.path), "name": b.name, "frames": len(b.frames),
            "duration_s": b.t_s(b.frames[-1].stamp_ns), "ground_truth": b.gt.available, "topics": b.roles,
            "missing_topics": b.missing, "dropped_frames": dict(b.dropped), "events": b.gt.events,
            "labels": b.label_file, "labelled_frames": len(b.labels or {}),
        } for b in decoded],
        "models": {},
        "skipped_models": {},
    }
    snaps = {b.name: choose_snapshots(b) for b in decoded}
    runs: dict[str, list[BagRun]] = {}
    jobs = [(spec, s) for spec in specs for s in (sets or [None])]
    ab_entries: list[dict] = []
    ab_counts: dict[str, dict] = {}
    ab_failed: dict[str, str] = {}
    bar = None
    if sets and progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="sensor sets", unit="set")
    for spec, sensors in jobs:
        run_cfg = cfg if sensors is None else abl.sensor_config(cfg, sensors)
        name = spec.name if sensors is None else f"{spec.name}@{abl.set_name(sensors)}"
        if bar is not None:
            bar.set_postfix_str(name)
        try:
            pipe_info = build_pipeline(spec, run_cfg)
            if pipe_info[0] is None:
                metrics["skipped_models"][name] = pipe_info[1]
                continue
            load_before = os.getloadavg()[0]
            mot = MotEvaluator() if any(b.gt.objects for b in decoded) else None
            labelfree = LabelFreeMetrics(run_cfg, with_labels=any(b.labels for b in decoded))
            bag_runs, per_bag_mot = [], {}
            for b in decoded:
                pipe, info = build_pipeline(spec, run_cfg)  # a fresh pipeline (state, tracker) per bag
                bag_mot = mot
                if sensors is not None and mot is not None:
                    per_bag_mot[b.name] = MotEvaluator()
                    bag_mot = abl.TeeMot(mot, per_bag_mot[b.name])
                view = b if sensors is None else dataclasses.replace(b, frames=abl.frames_for(b.frames, run_cfg))
                bag_runs.append(run_bag(view, pipe, run_cfg, bag_mot, set(snaps[b.name]), name, progress, labelfree))
            summary = _model_summary(spec, info, decoded, bag_runs, mot, run_cfg)
            summary["label_free"] = labelfree.summary()
            summary["track_paths"] = {b.name: {str(k): v for k, v in paths.items()}
                                      for b, paths in zip(decoded, labelfree.track_paths(), strict=True)}
        except Exception as exc:  # one failing sensor set must not lose the others
            if sensors is None:
                raise
            ab_failed[name] = f"{type(exc).__name__}: {exc}"
            metrics["skipped_models"][name] = f"failed: {ab_failed[name]}"
            continue
        finally:
            if bar is not None:
                bar.update(1)
        runs[name] = bag_runs
        if sensors is not None:
            summary["sensors"] = list(sensors)
            summary["load_avg"] = {"before": load_before, "after": os.getloadavg()[0]}
            ab_entries.append({"spec": spec.name, "sensors": sensors, "name": name, "metrics": summary,
                               "per_bag_tracking": {k: (e.compute() if e.num_frames else None)
                                                    for k, e in per_bag_mot.items()}})
            ab_counts[name] = {k: [abl.frame_counts(r, k) for r in bag_runs] for k in ("all", "moving")}
        metrics["models"][name] = _finite(summary)
        if sets:  # an interrupted ablation keeps the sets that finished
            out.mkdir(parents=True, exist_ok=True)
            _write_json(out / "metrics.json", metrics)
    if bar is not None:
        bar.close()
    if not metrics["models"]:
        raise EvaluationError(f"no model could be run: {metrics['skipped_models']}")
    if sets:
        metrics["ablation"] = _finite(abl.summarise(sets, ab_entries, ab_counts, ab_failed))
        metrics["ablation"]["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "metrics.json", metrics)
    if sets:
        _write_json(out / "ablation.json", {k: metrics[k] for k in ("created_utc", "tool", "grid", "bags", "ablation")})
        (out / "ablation.md").write_text("# Sensor ablation\n\n" + (f"`{command}`\n\n" if command else "")
                                         + abl.markdown(metrics["ablation"]))
    from ssm_perception.eval.report import write_report

    write_report(metrics, decoded, runs, snaps, out, plots=plots)
    return metrics


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False))


def _model_summary(spec: ModelSpec, info: dict, decoded: list[DecodedBag], bag_runs: list[BagRun], mot,
                   cfg: PerceptionConfig) -> dict:
    g = cfg.grid
    total = total_raw = None
    if any(r.occupancy is not None for r in bag_runs):
        total = OccupancyMetrics(range_map(g.nx, g.ny, g.resolution, g.x_min, g.y_min))
        total_raw = OccupancyMetrics(range_map(g.nx, g.ny, g.resolution, g.x_min, g.y_min))
        for r in bag_runs:
            if r.occupancy is not None:
                total.merge(r.occupancy)
                total_raw.merge(r.occupancy_raw)
    latency: dict[str, list[float]] = {}
    for r in bag_runs:
        for k, v in r.latency.items():
            latency.setdefault(k, []).extend(v)
    resets = [e for r in bag_runs for e in r.resets]
    by_reason = Counter(reason for e in resets for reason in e["reasons"])
    health: Counter = Counter()
    for r in bag_runs:
        health.update(r.health)
    per_bag = {}
    for r in bag_runs:
        if r.occupancy is None:
            per_bag[r.bag] = {"frames": len(r.per_frame), "ground_truth": False}
            continue
        s = r.occupancy.summary()["splits"]
        per_bag[r.bag] = {"frames": len(r.per_frame), "ground_truth": True, "iou_all": s["all"]["iou"],
                          "iou_static": s["static"]["iou"], "iou_dynamic": s["dynamic"]["iou"],
                          "iou_occluded": s["occluded"]["iou"], "ece": r.occupancy.calibration.ece(),
                          "raw_iou_all": r.occupancy_raw.summary()["splits"]["all"]["iou"],
                          "raw_ece": r.occupancy_raw.calibration.ece()}
    meta = info.get("metadata") or {}
    return {
        "kind": spec.kind,
        "source": info.get("source"),
        "sha256": _sha256_of(info.get("source")),
        "trained": {k: meta.get(k) for k in ("steps", "train_hours", "train_time_s", "presets") if k in meta},
        "occupancy": total.summary() if total is not None else None,  # the published grid
        "occupancy_raw": total_raw.summary() if total_raw is not None else None,  # the network's P
        "tracking": mot.compute() if mot is not None and mot.num_frames else None,
        "latency_ms": {k: _percentiles(v) for k, v in latency.items()},
        "resets": {"count": len(resets), "by_reason": dict(by_reason), "events": resets},
        "recovery": [x for b, r in zip(decoded, bag_runs, strict=True) for x in recovery(b, r)],
        "health": dict(health),
        "evidence_health": dict(sum((r.evidence_levels for r in bag_runs), Counter())),
        "distribution_shifts": [x for r in bag_runs for x in r.shifts],
        "lidar_input": {r.bag: {k: {"level": ("OK", "WARN", "ERROR")[min(2, int(lv))], "message": msg}
                                for k, (lv, msg) in sorted(r.lidar_input.items())} for r in bag_runs},
        "known_share": float(np.mean([f["known_share"] for r in bag_runs for f in r.per_frame])),
        "sensor_frames": {s: int(sum(r.sensor_frames[s] for r in bag_runs)) for s in ("lidar", "radar", "camera")},
        "per_bag": per_bag,
    }


def _sha256_of(source) -> str | None:
    if not source:
        return None
    side = Path(str(source) + ".json")
    if side.is_file():
        try:
            return json.loads(side.read_text()).get("sha256")
        except ValueError:
            return None
    return None


def _finite(o):
    """NaN/inf -> None everywhere (metrics.json must be strict JSON; e.g. MOTP without matches is NaN)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    if isinstance(o, float | np.floating) and not math.isfinite(float(o)):
        return None
    return o


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")
