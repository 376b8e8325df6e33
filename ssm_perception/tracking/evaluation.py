"""Run the tracker over ground-truth sequences and score it (the library side of scripts/eval_tracking.py).

A sequence is an iterable of ``GtFrame`` (one per LiDAR stamp), from the simulator in-process
(``sim_sequence``), from a simulated bag (``load_gt_frames``) or hand-made (tracking/synthetic.py).
A detection source turns a frame into detections in base_link, what the perception pipeline hands
the tracker on the vehicle:

    'synthetic'     SYNTHETIC detections perturbed from the ground truth (tracking/synthetic.py)
    'model'         PerceptionPipeline with the configured temporal model (model.kind, e.g. mamba)
    'single-frame'  PerceptionPipeline with model.kind = 'single' (no memory): the AB3DMOT-style
                    baseline, single-frame detections + the same Kalman tracker

The tracker, its configuration and the metrics are identical for every source, so differences
between sources are differences of the detections. The learned sources need sensor data
(``GtFrame.sensors``): ``sim_sequence`` (simulator in-process) and ``bag_sequence`` (a simulated bag
decoded like ``ssm-perception evaluate`` does) carry it; ``load_gt_frames`` reads ground truth only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssm_perception.config import GridConfig, TrackingConfig
from ssm_perception.eval.mot import GroundTruthObject, GtFrame, MotEvaluator
from ssm_perception.geometry import (
    interpolate_transform,
    invert_transform,
    make_transform,
    yaw_of,
)
from ssm_perception.tracking.detections import Detection, detections_to_odom
from ssm_perception.tracking.synthetic import (
    SyntheticDetectionConfig,
    synthetic_detections,
)
from ssm_perception.tracking.tracker import MultiObjectTracker

DetectionSource = Callable[[GtFrame], list[Detection]]  # frame -> detections in base_link
GT_OBJECTS_TOPIC = "/ground_truth/objects"
TF_TOPIC = "/tf"


def in_grid(x: float, y: float, T_odom_base: np.ndarray, grid: GridConfig) -> bool:
    """Is the odom point inside the ego-centred BEV grid of this frame?"""
    T_base_odom = invert_transform(T_odom_base)
    p = T_base_odom[:2, :2] @ [x, y] + T_base_odom[:2, 3]
    return grid.x_min <= p[0] < grid.x_min + grid.length_x and grid.y_min <= p[1] < grid.y_min + grid.length_y


def synthetic_source(grid: GridConfig, seed: int, cfg: SyntheticDetectionConfig | None = None) -> DetectionSource:
    rng = np.random.default_rng(seed)
    return lambda frame: synthetic_detections(frame.objects or [], frame.T_odom_base, grid, rng, cfg)


def evaluate_tracking(
    sequences: Iterable[tuple[Iterable[GtFrame], DetectionSource]],
    tracking: TrackingConfig,
    grid: GridConfig,
    evaluator: MotEvaluator | None = None,
    progress: bool = False,
) -> MotEvaluator:
    """Track every sequence from scratch and accumulate metrics over the grid region.

    Evaluated hypotheses are confirmed and coasting tracks (tentative ones are not reported to the
    planner as objects); ground truth and hypotheses are both restricted to the grid of the frame.
    Ground truth known to have no LiDAR return this frame (num_points == 0) is 'ignored': tracks on
    it are neither rewarded nor punished (MOTChallenge's distractors; nuScenes drops such boxes from
    the truth but then counts a track coasting on them as a false positive).
    """
    evaluator = evaluator or MotEvaluator()
    tracker = MultiObjectTracker(tracking)
    for k, (frames, source) in enumerate(sequences):
        tracker.reset()
        evaluator.start_sequence()
        for frame in tqdm(frames, desc=f"sequence {k}", unit="frame", disable=not progress, leave=False):
            dets = detections_to_odom(source(frame), frame.T_odom_base)
            tracks = tracker.update(dets, frame.stamp_s)
            hyp = [t for t in tracks if t.status != "tentative" and in_grid(t.x, t.y, frame.T_odom_base, grid)]
            if frame.objects is None:  # no truth at this stamp: tracked (state continuity), not scored
                continue
            gt, ignored = [], []
            for o in frame.objects:
                if in_grid(o.x, o.y, frame.T_odom_base, grid):
                    (ignored if o.num_points == 0 else gt).append(o)
            evaluator.update(gt, hyp, ignored)
    return evaluator


# ------------------------------------------------------------------------------ simulator
def sim_sequence(preset: str, seed: int, duration_s: float | None, config) -> Iterator[GtFrame]:
    """Ground truth (and, in ``sensors``, the full SimFrame) of one simulated run, frame by frame."""
    from ssm_perception.sim.scenario import (
        Scenario,  # the simulator is only needed here
    )

    scenario = Scenario.from_preset(preset, seed=seed, duration_s=duration_s, grid=config.grid)
    for fr in scenario.frames(with_others=True):
        objects = [
            GroundTruthObject(
                id=int(o["id"]), cls=int(o["cls"]), x=float(o["x"]), y=float(o["y"]), yaw=float(o["yaw"]),
                vx=float(o["vx"]), vy=float(o["vy"]), length=float(o["l"]), width=float(o["w"]),
                height=float(o["h"]), num_points=int(o["num_points"]),
            )
            for o in fr.objects_odom
        ]
        yield GtFrame(stamp_s=fr.stamp_ns * 1e-9, T_odom_base=np.asarray(fr.T_odom_base, np.float64),
                      objects=objects, sensors=(scenario.config, fr))


def bag_sequence(bag: str | Path, config) -> list[GtFrame]:
    """Every LiDAR frame of a simulated bag, decoded for the pipeline (``GtFrame.sensors`` holds the
    FrameInputs), with its ground truth. Decoding is the offline evaluator's (eval/evaluate.py), so
    frames are paired with radar/camera/TF exactly as in ``ssm-perception evaluate`` and the node.
    Objects whose centre cell is not visible in /ground_truth/visibility get ``num_points = 0``
    (ignored by the metrics); frames without /ground_truth/objects have ``objects = None``."""
    from ssm_perception.eval.evaluate import decode_bag, topic_roles

    decoded = decode_bag(bag, config, topic_roles(config.topics), progress=False)
    g = config.grid
    frames = []
    for inp in decoded.frames:
        objects = decoded.gt.objects.get(inp.stamp_ns)
        truth = decoded.gt.grids.get(inp.stamp_ns)
        if objects is not None and truth is not None:
            vis = truth[2]  # [H, W] bool
            T_base_odom = invert_transform(np.asarray(inp.T_odom_base, np.float64))
            marked = []
            for o in objects:
                p = T_base_odom[:2, :2] @ [o.x, o.y] + T_base_odom[:2, 3]
                i, j = int((p[0] - g.x_min) // g.resolution), int((p[1] - g.y_min) // g.resolution)
                hidden = 0 <= i < g.nx and 0 <= j < g.ny and not vis[i, j]
                marked.append(replace(o, num_points=0) if hidden else o)
            objects = marked
        frames.append(GtFrame(stamp_s=inp.stamp_ns * 1e-9, T_odom_base=np.asarray(inp.T_odom_base, np.float64),
                              objects=objects, sensors=inp))
    return frames


def pipeline_source(config, kind: str) -> DetectionSource:
    """Detections of the learned heads through PerceptionPipeline ('model' or 'single-frame').

    Frames come from ``sim_sequence`` or ``bag_sequence`` (sensor data in ``GtFrame.sensors``). A
    pipeline that would fall back to the training-free filter (no checkpoint of the requested
    kind) is refused: its numbers would be labelled with the wrong model.
    """
    from ssm_perception.pipeline import FrameInputs, PerceptionPipeline

    cfg = config.model_copy(deep=True)
    if kind == "single-frame":
        cfg.model.kind = "single"
    elif kind != "model":
        raise ValueError(f"pipeline_source kind must be 'model' or 'single-frame', got {kind!r}")
    pipeline = PerceptionPipeline(cfg)
    if "fallback" in pipeline.model_info:
        raise RuntimeError(f"--detections {kind}: {pipeline.model_info['fallback']}; pass --checkpoint")

    def source(frame: GtFrame) -> list[Detection]:
        if frame.sensors is None:
            raise ValueError(f"--detections {kind} needs sensor data: frames from sim_sequence or bag_sequence")
        if isinstance(frame.sensors, FrameInputs):  # decoded from a bag
            return pipeline.process(frame.sensors).detections_base
        sc, fr = frame.sensors
        T = fr.T_base_sensor
        inp = FrameInputs(
            stamp_ns=int(fr.stamp_ns), T_odom_base=fr.T_odom_base, lidar=fr.lidar, T_base_lidar=T[sc.lidar.frame_id],
            radar=fr.radar.points if fr.radar is not None else None, T_base_radar=T[sc.radar.frame_id],
            image=fr.camera.image if fr.camera is not None else None,
            K=fr.camera.K if fr.camera is not None else None, T_base_camera=T[sc.camera.frame_id],
            T_map_odom=fr.T_map_odom,
        )
        return pipeline.process(inp).detections_base

    source.model_info = pipeline.model_info  # type: ignore[attr-defined]  # for the results file
    return source


# ------------------------------------------------------------------------------ bags
def _stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _pose_matrix(pose) -> np.ndarray:
    q = pose.orientation
    return make_transform((pose.position.x, pose.position.y, pose.position.z), (q.x, q.y, q.z, q.w))


class _OdomTrajectory:
    """odom -> base_link from /tf, interpolated at any stamp inside the recorded span."""

    def __init__(self, samples: list[tuple[float, np.ndarray]]):
        if not samples:
            raise ValueError("no odom -> base_link transforms on /tf")
        samples.sort(key=lambda s: s[0])
        self.t = np.array([s[0] for s in samples])
        self.T = [s[1] for s in samples]

    def at(self, stamp: float, tolerance_s: float = 0.1) -> np.ndarray:
        if stamp < self.t[0] - tolerance_s or stamp > self.t[-1] + tolerance_s:
            raise ValueError(f"no odom -> base_link pose near t = {stamp:.3f} s")
        i = int(np.searchsorted(self.t, stamp))
        if i <= 0:
            return self.T[0]
        if i >= len(self.t):
            return self.T[-1]
        t0, t1 = self.t[i - 1], self.t[i]
        return interpolate_transform(self.T[i - 1], self.T[i], (stamp - t0) / (t1 - t0) if t1 > t0 else 0.0)


def load_gt_frames(bag: str | Path, odom_frame: str = "odom", base_frame: str = "base_link") -> list[GtFrame]:
    """Ground-truth frames of a simulated bag: /ground_truth/objects (TrackArray in odom) + ego pose from /tf."""
    from ssm_perception.io.bag import read_messages  # rosbags only needed for bags

    poses: list[tuple[float, np.ndarray]] = []
    arrays = []
    for topic, _, _, msg in read_messages(bag, [GT_OBJECTS_TOPIC, TF_TOPIC]):
        if topic == TF_TOPIC:
            for tf in msg.transforms:
                if tf.header.frame_id.lstrip("/") == odom_frame and tf.child_frame_id.lstrip("/") == base_frame:
                    tr, q = tf.transform.translation, tf.transform.rotation
                    poses.append((_stamp_s(tf.header), make_transform((tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w))))
        else:
            if msg.header.frame_id.lstrip("/") != odom_frame:
                raise ValueError(f"{bag}: {GT_OBJECTS_TOPIC} is in {msg.header.frame_id!r}, expected {odom_frame!r}")
            arrays.append(msg)
    if not arrays:
        raise ValueError(f"{bag}: no messages on {GT_OBJECTS_TOPIC}")
    trajectory = _OdomTrajectory(poses)
    frames = []
    for msg in arrays:
        stamp = _stamp_s(msg.header)
        objects = []
        for t in msg.tracks:
            T = _pose_matrix(t.pose)
            objects.append(GroundTruthObject(
                id=int(t.id), cls=int(t.classification), x=float(T[0, 3]), y=float(T[1, 3]), yaw=yaw_of(T),
                vx=float(t.twist.linear.x), vy=float(t.twist.linear.y),
                length=float(t.size.x), width=float(t.size.y), height=float(t.size.z),
            ))
        frames.append(GtFrame(stamp_s=stamp, T_odom_base=trajectory.at(stamp), objects=objects))
    frames.sort(key=lambda f: f.stamp_s)
    return frames
