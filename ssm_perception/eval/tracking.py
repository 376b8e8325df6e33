"""Run the tracker over ground-truth sequences and score it (the library side of scripts/eval_tracking.py).

A sequence is an iterable of ``GtFrame`` (one per LiDAR stamp), from the simulator in-process
(``sim_sequence``), from a simulated bag (``load_gt_frames``) or hand-made (eval/synthetic.py).
A detection source turns a frame into detections in base_link, what the perception pipeline hands
the tracker on the vehicle:

    'synthetic'     SYNTHETIC detections perturbed from the ground truth (eval/synthetic.py)
    'model'         PerceptionPipeline with the configured temporal model (model.kind, e.g. mamba)
    'single-frame'  PerceptionPipeline with model.kind = 'single' (no memory): the AB3DMOT-style
                    baseline, single-frame detections + the same Kalman tracker

The tracker, its configuration and the metrics are identical for every source, so differences
between sources are differences of the detections. The learned sources need sensor data
(``GtFrame.sensors``): ``sim_sequence`` (simulator in-process) and ``bag_sequence`` (a simulated bag
decoded like ``ssm-perception evaluate`` does) carry it; ``load_gt_frames`` reads ground truth only.

What is scored (nuScenes / KITTI practice, the same rules for every source):

    frame     odom, at the LiDAR stamp (ground truth is stamped with it; tracks are updated at it)
    region    the ego-centred BEV grid of the frame, for truth and tracks alike
    truth     objects with at least ``MIN_LIDAR_POINTS`` LiDAR returns in the frame (nuScenes drops
              boxes without points: nothing can be tracked that no sensor saw). Unobservable ones
              in the grid are 'ignored': a track on one is neither a hit nor a false positive
    tracks    confirmed and coasting (tentative ones are not handed to the planner)
    matching  per class, 2D centre distance <= 2 m (nuScenes' tracking threshold for every class)

``cache_detections`` runs the learned detectors once per sequence and keeps their detections above
a low score floor, so thresholds and tracker settings can be swept over the cached detections
(scripts/tune_tracking.py) without re-running the network.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ssm_perception.config import GridConfig, TrackingConfig, TrackSupportConfig
from ssm_perception.eval.mot import GroundTruthObject, GtFrame, MotEvaluator
from ssm_perception.eval.synthetic import (
    SyntheticDetectionConfig,
    synthetic_detections,
)
from ssm_perception.geometry import (
    interpolate_transform,
    invert_transform,
    make_transform,
    yaw_of,
)
from ssm_perception.tracking.detections import (
    MAX_DETECTIONS,
    Detection,
    detections_to_odom,
    select_two_stage,
)
from ssm_perception.tracking.support import TrackSupportRule, footprint_returns, to_base
from ssm_perception.tracking.tracker import MultiObjectTracker

DetectionSource = Callable[[GtFrame], list[Detection]]  # frame -> detections in base_link
GT_OBJECTS_TOPIC = "/ground_truth/objects"
TF_TOPIC = "/tf"
MIN_LIDAR_POINTS = 1  # nuScenes keeps ground-truth boxes with at least one LiDAR (or radar) point
# /ground_truth/objects carries observability in Track.status (sim/writer.py): CONFIRMED (1) = at least
# one LiDAR return this scan, COASTING (2) = none. Bags do not carry the count itself.
_STATUS_SEEN, _STATUS_UNSEEN = 1, 2


def in_grid(x: float, y: float, T_odom_base: np.ndarray, grid: GridConfig) -> bool:
    """Is the odom point inside the ego-centred BEV grid of this frame?"""
    T_base_odom = invert_transform(T_odom_base)
    p = T_base_odom[:2, :2] @ [x, y] + T_base_odom[:2, 3]
    return grid.x_min <= p[0] < grid.x_min + grid.length_x and grid.y_min <= p[1] < grid.y_min + grid.length_y


def _footprint_visible(o: GroundTruthObject, T_base_odom: np.ndarray, grid: GridConfig, visible: np.ndarray) -> bool:
    """Does any cell under the box (sampled every half cell) show as visible in the visibility grid?"""
    step = grid.resolution / 2
    u = np.arange(-o.length / 2, o.length / 2 + 1e-9, step)
    v = np.arange(-o.width / 2, o.width / 2 + 1e-9, step)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    c, s = math.cos(o.yaw), math.sin(o.yaw)
    ox, oy = o.x + c * uu - s * vv, o.y + s * uu + c * vv  # odom
    bx = T_base_odom[0, 0] * ox + T_base_odom[0, 1] * oy + T_base_odom[0, 3]
    by = T_base_odom[1, 0] * ox + T_base_odom[1, 1] * oy + T_base_odom[1, 3]
    i = np.floor((bx - grid.x_min) / grid.resolution).astype(np.int64)
    j = np.floor((by - grid.y_min) / grid.resolution).astype(np.int64)
    ok = (i >= 0) & (i < grid.nx) & (j >= 0) & (j < grid.ny)
    return bool(visible[i[ok], j[ok]].any())


def split_ground_truth(
    objects: Sequence[GroundTruthObject],
    T_odom_base: np.ndarray,
    grid: GridConfig,
    min_points: int = MIN_LIDAR_POINTS,
    visible: np.ndarray | None = None,
) -> tuple[list[GroundTruthObject], list[GroundTruthObject]]:
    """(counted, ignored) ground truth of one frame; objects outside the grid are in neither.

    Counted: inside the grid and observable, i.e. ``num_points >= min_points`` (simulator runs).
    Where the count is unknown (``num_points < 0``, bags), ``observed`` (at least one return) decides;
    where that is unknown too, some cell of the box footprint must be visible in ``visible``
    ([H, W] bool, /ground_truth/visibility), or, without that grid, the object is counted. The same
    rule serves every detection source, the temporal model and the single-frame baseline alike.
    """
    T_base_odom = invert_transform(np.asarray(T_odom_base, dtype=np.float64))
    counted, ignored = [], []
    for o in objects:
        if not in_grid(o.x, o.y, T_odom_base, grid):
            continue
        if o.num_points >= 0:
            seen = o.num_points >= min_points
        elif o.observed is not None:
            seen = o.observed
        else:
            seen = visible is None or _footprint_visible(o, T_base_odom, grid, visible)
        (counted if seen else ignored).append(o)
    return counted, ignored


def synthetic_source(grid: GridConfig, seed: int, cfg: SyntheticDetectionConfig | None = None) -> DetectionSource:
    rng = np.random.default_rng(seed)
    return lambda frame: synthetic_detections(frame.objects or [], frame.T_odom_base, grid, rng, cfg)


PARKED_SPEED_MPS = 0.2  # a ground-truth car slower than this is standing (parked or waiting)
SUPPORT_MARGIN_M = 0.25  # eval/labelfree.py's footprint growth for "a track without returns"


def sparse_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] per-cell counts -> (flat indices int32, counts uint16) of the non-zero cells."""
    flat = np.asarray(counts).ravel()
    idx = np.flatnonzero(flat)
    return idx.astype(np.int32), np.minimum(flat[idx], 65535).astype(np.uint16)


def dense_counts(sparse: tuple[np.ndarray, np.ndarray], grid: GridConfig) -> np.ndarray:
    out = np.zeros(grid.nx * grid.ny, np.int32)
    out[sparse[0]] = sparse[1]
    return out.reshape(grid.nx, grid.ny)


@dataclass
class SupportStats:
    """Track support and standing-car recall over a tracking evaluation (the track rule's effect)."""

    instances: int = 0  # published (confirmed, coasting) track instances inside the grid with a scan
    unsupported: int = 0  # ... without a non-ground return in their footprint (eval/labelfree.py's test)
    withheld_unsupported: int = 0  # instances the rule withheld: no support
    withheld_static: int = 0  # ... static on returns, not confident
    withheld_shape: int = 0  # ... on structure going on past the box
    standing_cars: int = 0  # counted ground-truth cars (>= 1 return, in the grid) standing still
    standing_cars_tracked: int = 0  # ... with a published car track within the match distance

    def summary(self) -> dict:
        return {**self.__dict__,
                "unsupported_share": self.unsupported / self.instances if self.instances else None,
                "standing_car_recall": self.standing_cars_tracked / self.standing_cars if self.standing_cars
                else None}


def evaluate_tracking(
    sequences: Iterable[tuple[Iterable[GtFrame], DetectionSource]],
    tracking: TrackingConfig,
    grid: GridConfig,
    evaluator: MotEvaluator | None = None,
    progress: bool = False,
    min_points: int = MIN_LIDAR_POINTS,
    support: TrackSupportConfig | None = None,
    stats: SupportStats | None = None,
) -> MotEvaluator:
    """Track every sequence from scratch and accumulate metrics over the grid region.

    Evaluated hypotheses are confirmed and coasting tracks (tentative ones are not reported to the
    planner as objects); ground truth and hypotheses are both restricted to the grid of the frame.
    Ground truth with fewer than ``min_points`` LiDAR returns this frame is 'ignored' (see
    ``split_ground_truth``): tracks on it are neither rewarded nor punished (MOTChallenge's
    distractors; nuScenes drops such boxes from the truth and would count a track coasting through
    an occlusion as a false positive, which punishes exactly what the planner wants).

    ``support``: the track rule (tracking/support.py), as PerceptionPipeline.process applies it after
    the tracker, on the scan's non-ground counts (``GtFrame.nonground``, or the pipeline source's
    last frame); frames without them pass unchanged. ``stats`` accumulates track support and the
    recall of standing cars (``SupportStats``) when the counts are known.
    """
    evaluator = evaluator or MotEvaluator()
    tracker = MultiObjectTracker(tracking)
    rule = TrackSupportRule(support, grid) if support is not None else None
    for k, (frames, source) in enumerate(sequences):
        tracker.reset()
        if rule is not None:
            rule.reset()
        evaluator.start_sequence()
        for frame in tqdm(frames, desc=f"sequence {k}", unit="frame", disable=not progress, leave=False):
            # The tracker selects (thresholds, NMS) itself; selecting first in base_link gives the same
            # detections (distances are frame-invariant) and spares moving hundreds of low scores to odom.
            strong, weak = select_two_stage(source(frame), tracking)
            dets = detections_to_odom(strong + weak, frame.T_odom_base)
            tracks = tracker.update(dets, frame.stamp_s)
            counts = band = None
            if frame.nonground is not None:
                counts = dense_counts(frame.nonground, grid)
                band = None if frame.band is None else dense_counts(frame.band, grid)
            elif getattr(source, "last_nonground", None) is not None:
                counts, band = source.last_nonground, getattr(source, "last_band", None)
            if rule is not None:
                tracks, report = rule.apply(tracks, counts, frame.T_odom_base, frame.stamp_s, band_count=band)
                if stats is not None:
                    stats.withheld_unsupported += len(report.withheld_unsupported)
                    stats.withheld_static += len(report.withheld_static)
                    stats.withheld_shape += len(report.withheld_shape)
            hyp = [t for t in tracks if t.status != "tentative" and in_grid(t.x, t.y, frame.T_odom_base, grid)]
            if stats is not None and counts is not None:
                T_base_odom = invert_transform(np.asarray(frame.T_odom_base, np.float64))
                for t in hyp:
                    n = footprint_returns(counts, grid, *to_base(T_base_odom, t.x, t.y, t.yaw), t.length, t.width,
                                          SUPPORT_MARGIN_M)
                    if n is not None:
                        stats.instances += 1
                        stats.unsupported += n == 0
            if frame.objects is None:  # no truth at this stamp: tracked (state continuity), not scored
                continue
            gt, ignored = split_ground_truth(frame.objects, frame.T_odom_base, grid, min_points)
            if stats is not None:
                for o in gt:
                    if o.cls == 1 and math.hypot(o.vx, o.vy) < PARKED_SPEED_MPS:
                        stats.standing_cars += 1
                        stats.standing_cars_tracked += any(
                            t.cls == 1 and math.hypot(t.x - o.x, t.y - o.y) <= evaluator.max_distance_m for t in hyp)
            evaluator.update(gt, hyp, ignored, ego_xy=(float(frame.T_odom_base[0, 3]), float(frame.T_odom_base[1, 3])))
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
    Observability comes from the objects' Track.status (LiDAR returns or not, see ``_gt_observed``);
    where a bag lacks it, from the box footprint in /ground_truth/visibility (``split_ground_truth``).
    Frames without /ground_truth/objects have ``objects = None``."""
    from ssm_perception.eval.evaluate import decode_bag, topic_roles

    decoded = decode_bag(bag, config, topic_roles(config.topics), progress=False)
    observed = _gt_observed(bag)
    g = config.grid
    frames = []
    for inp in decoded.frames:
        objects = decoded.gt.objects.get(inp.stamp_ns)
        truth = decoded.gt.grids.get(inp.stamp_ns)
        if objects is not None:
            seen = observed.get(inp.stamp_ns, {})
            objects = [replace(o, observed=seen.get(o.id)) for o in objects]
            if truth is not None:  # not in the statuses: decide from the visible footprint now
                vis = truth[2]  # [H, W] bool
                T_base_odom = invert_transform(np.asarray(inp.T_odom_base, np.float64))
                objects = [o if o.observed is not None else
                           replace(o, observed=_footprint_visible(o, T_base_odom, g, vis)) for o in objects]
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
    from ssm_perception.frame_assembler import FrameAssembler

    assembler = FrameAssembler(cfg)  # consecutive simulated frames of one sequence share it (ego twist)

    def source(frame: GtFrame) -> list[Detection]:
        if frame.sensors is None:
            raise ValueError(f"--detections {kind} needs sensor data: frames from sim_sequence or bag_sequence")
        if isinstance(frame.sensors, FrameInputs):  # decoded from a bag
            out = pipeline.process(frame.sensors)
        else:
            sc, fr = frame.sensors
            out = pipeline.process(FrameInputs.from_sim(sc, fr, assembler))
        # the scan's non-ground counts, for the track rule of a tracker run outside the pipeline
        lidar = out.evidence is not None and out.sensors.get("lidar")
        source.last_nonground = out.evidence.nonground_count if lidar else None  # type: ignore[attr-defined]
        source.last_band = out.evidence.band_count if lidar else None  # type: ignore[attr-defined]
        return out.detections_base

    source.last_nonground = None  # type: ignore[attr-defined]
    source.last_band = None  # type: ignore[attr-defined]

    source.model_info = pipeline.model_info  # type: ignore[attr-defined]  # for the results file
    return source


# ------------------------------------------------------------------------------ cached detections
# 2: frames keep the scan's non-ground counts (the track rule's input); 3: and its band counts;
# 4: the auto intensity scale is applied inside [0.5, 2] too (bev/lidar_input.py)
CACHE_VERSION = 4


@dataclass
class CachedSequence:
    """One sequence's ground truth (sensor data dropped) and each learned source's detections."""

    name: str
    frames: list[GtFrame]
    detections: dict[str, list[list[Detection]]]  # source -> [frame][detection] in base_link, score >= floor
    floor: float  # decoder score floor the detections were taken at
    model_info: dict[str, Any] = field(default_factory=dict)  # source -> pipeline.model_info

    def sequence(self, source: str) -> tuple[list[GtFrame], DetectionSource]:
        """(frames, source) for ``evaluate_tracking``, replaying the cached detections."""
        if source not in self.detections:
            raise KeyError(f"{self.name}: no cached detections of {source!r} (have {sorted(self.detections)})")
        by_stamp = dict(zip((f.stamp_s for f in self.frames), self.detections[source], strict=True))
        return self.frames, lambda frame: by_stamp[frame.stamp_s]

    def saturated_frames(self, source: str, max_detections: int = MAX_DETECTIONS) -> int:
        """Frames whose detection list hit the decoder's cap: thresholds near the floor are then
        replayed with fewer detections than a pipeline decoding at that threshold would produce."""
        return sum(len(d) >= max_detections for d in self.detections[source])


def _file_digest(path: str | Path) -> str:
    from ssm_perception.model import file_sha256

    return file_sha256(Path(path))


def cache_detections(
    name: str,
    frames: Callable[[], Iterable[GtFrame]],
    config,
    sources: Sequence[str],
    floor: float = 0.1,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    checkpoints: dict[str, str] | None = None,
) -> CachedSequence:
    """Run every learned ``source`` ('model', 'single-frame') once over ``frames()`` (one pass of the
    simulator or one decoded bag serves all sources) and keep the detections with score >= ``floor``.

    With ``cache_dir`` the result is stored as a pickle keyed by the sequence name, the floor, the
    checkpoints' sha256 and the model/grid/sensor configuration, so a later call with the same
    inputs loads it instead of running the network, and a new checkpoint is never served stale
    detections. ``checkpoints``: {source: weights file} overriding ``config.model.checkpoint``.
    """
    srcs = {}
    for s in sources:
        cfg = config.model_copy(deep=True)
        cfg.tracking.detection_threshold = float(floor)  # only the decoder floor: the tracker is not used here
        if checkpoints and checkpoints.get(s):
            cfg.model.checkpoint = str(checkpoints[s])
            cfg.model.allow_untrusted_weights = True  # named explicitly by the caller (scripts' --checkpoint)
        srcs[s] = pipeline_source(cfg, s)
    infos = {s: src.model_info for s, src in srcs.items()}
    key_data = {
        "version": CACHE_VERSION, "name": name, "floor": float(floor),
        "checkpoints": {s: _file_digest(i["source"]) for s, i in infos.items()},
        # where the network runs (cpu/cuda, threads) does not change what it detects beyond fp32 noise
        # (the track rule runs after the tracker, on the cached counts: it does not change what is cached)
        "config": cfg.model_dump(mode="json", exclude={"tracking": True, "track_support": True, "diagnostics": True,
                                                       "topics": True,
                                                       "model": {"device", "cpu_threads", "allow_untrusted_weights"}}),
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = None
    if cache_dir is not None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        path = Path(cache_dir) / f"{safe}_{'_'.join(sorted(sources))}_{key}.pkl"
        if path.is_file():
            with path.open("rb") as f:
                return pickle.load(f)
    kept: list[GtFrame] = []
    dets: dict[str, list[list[Detection]]] = {s: [] for s in srcs}
    for frame in tqdm(frames(), desc=f"detections {name}", unit="frame", disable=not progress, leave=False):
        for s, src in srcs.items():
            dets[s].append(src(frame))
        # the scan's counts come from the encoder, the same for every source: the first one's
        first = srcs[next(iter(srcs))] if srcs else None
        counts = None if first is None else first.last_nonground
        band = None if first is None else first.last_band
        kept.append(replace(frame, sensors=None, nonground=None if counts is None else sparse_counts(counts),
                            band=None if band is None else sparse_counts(band)))
    out = CachedSequence(name=name, frames=kept, detections=dets, floor=float(floor), model_info=infos)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(out, f)
        tmp.replace(path)  # atomic: a killed run never leaves a truncated cache behind
    return out


def cache_sim_detections(preset: str, seed: int, duration_s: float | None, config, sources: Sequence[str],
                         floor: float = 0.1, cache_dir: str | Path | None = None, progress: bool = False,
                         checkpoints: dict[str, str] | None = None) -> CachedSequence:
    """``cache_detections`` over one in-process simulator run."""
    name = f"sim:{preset}:seed{seed}:{duration_s if duration_s is not None else 'preset'}s"
    return cache_detections(name, lambda: sim_sequence(preset, seed, duration_s, config), config, sources,
                            floor, cache_dir, progress, checkpoints)


def _cache_sim_worker(args) -> int:
    preset, seed, duration_s, config_data, sources, floor, cache_dir, checkpoints = args
    from ssm_perception.config import PerceptionConfig

    config = PerceptionConfig.model_validate(config_data)
    return len(cache_sim_detections(preset, seed, duration_s, config, sources, floor, cache_dir, False,
                                    checkpoints).frames)


def cache_sim_many(preset: str, seeds: Sequence[int], duration_s: float | None, config, sources: Sequence[str],
                   floor: float, cache_dir: str | Path, checkpoints: dict[str, str] | None = None,
                   workers: int = 1, progress: bool = False) -> list[CachedSequence]:
    """``cache_sim_detections`` for several seeds, ``workers`` simulator+network processes at a time
    (each seed is independent; on a many-core GPU machine this is what makes a sweep affordable)."""
    if workers > 1 and len(seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        jobs = [(preset, int(s), duration_s, config.model_dump(mode="json"), list(sources), floor, str(cache_dir),
                 checkpoints) for s in seeds]
        with ProcessPoolExecutor(min(workers, len(seeds)), mp_context=get_context("spawn")) as pool:
            list(tqdm(pool.map(_cache_sim_worker, jobs), total=len(jobs), desc="detections", unit="seed",
                      disable=not progress))
    return [cache_sim_detections(preset, int(s), duration_s, config, sources, floor, cache_dir, progress, checkpoints)
            for s in tqdm(seeds, desc="detections", unit="seed", disable=not progress or workers > 1)]


def evaluate_cached(caches: Sequence[CachedSequence], source: str, tracking: TrackingConfig, grid: GridConfig,
                    min_points: int = MIN_LIDAR_POINTS, support: TrackSupportConfig | None = None,
                    stats: SupportStats | None = None) -> MotEvaluator:
    """``evaluate_tracking`` on cached detections: a fresh tracker per sequence with ``tracking``."""
    lowest = min(tracking.score_threshold.of(k, 1.0) for k in (1, 2, 3, 4))
    floor = max((c.floor for c in caches), default=0.0)
    if lowest < floor - 1e-9:
        raise ValueError(f"a score threshold of {lowest} is below the cached detections' floor {floor}: "
                         "re-cache with a lower floor")
    return evaluate_tracking([c.sequence(source) for c in caches], tracking, grid, min_points=min_points,
                             support=support, stats=stats)


# ------------------------------------------------------------------------------ bags
def _stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _observed_from_status(status: int) -> bool | None:
    """Ground-truth Track.status -> some LiDAR return this scan (True), none (False), not said (None)."""
    return {_STATUS_SEEN: True, _STATUS_UNSEEN: False}.get(int(status))


def ground_truth_objects(msg) -> list[GroundTruthObject]:
    """A /ground_truth/objects TrackArray (odom) -> GroundTruthObject per track, ``observed`` from its status."""
    from ssm_perception.io.track_fields import class_of, velocity_in_parent_frame

    objects = []
    for t in msg.tracks:
        T = _pose_matrix(t.pose.pose)
        yaw = yaw_of(T)
        vx, vy = velocity_in_parent_frame(t.twist.twist.linear.x, t.twist.twist.linear.y, yaw)  # object frame -> odom
        d = t.shape.dimensions
        objects.append(GroundTruthObject(
            id=int(t.track_number), cls=class_of(t.classification), x=float(T[0, 3]), y=float(T[1, 3]), yaw=yaw,
            vx=vx, vy=vy, length=float(d.x), width=float(d.y), height=float(d.z),
            observed=_observed_from_status(t.status),
        ))
    return objects


def _gt_observed(bag: str | Path) -> dict[int, dict[int, bool | None]]:
    """{stamp [ns]: {object id: observed}} from the statuses on /ground_truth/objects."""
    from ssm_perception.io.bag import read_messages

    out: dict[int, dict[int, int]] = {}
    for _, _, _, msg in read_messages(bag, [GT_OBJECTS_TOPIC]):
        st = msg.header.stamp
        out[int(st.sec) * 1_000_000_000 + int(st.nanosec)] = {
            int(t.track_number): _observed_from_status(t.status) for t in msg.tracks}
    return out


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
        frames.append(GtFrame(stamp_s=stamp, T_odom_base=trajectory.at(stamp), objects=ground_truth_objects(msg)))
    frames.sort(key=lambda f: f.stamp_s)
    return frames
