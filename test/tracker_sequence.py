"""A recorded tracker input for the equivalence test of the vectorised tracker (test_tracking_vectorised.py)
and for scripts/bench_tracker.py: ``n`` objects of all classes on a 100 m square, constant
velocity or turning, detected with noise, misses (10 %), missing velocities (15 %), weak
detections below the class thresholds, clutter, and a 0.6 s gap in the stream."""

from __future__ import annotations

import math

import numpy as np

from ssm_perception.tracking.detections import Detection

SIZES = {1: (4.5, 1.9, 1.6), 2: (10.0, 2.5, 3.2), 3: (1.8, 0.6, 1.7), 4: (0.6, 0.6, 1.75)}


def sequence(n: int = 120, frames: int = 50, seed: int = 0, stationary: float = 0.0) -> list[tuple[float, list[Detection]]]:
    """``stationary``: share of the objects that stand still (drawn from a separate generator, so
    the default sequence is unchanged)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-50, 50, (n, 2))
    yaw = rng.uniform(-math.pi, math.pi, n)
    speed = rng.uniform(0, 12, n)
    if stationary > 0.0:
        speed = np.where(np.random.default_rng(seed + 777).random(n) < stationary, 0.0, speed)
    turn = np.where(rng.random(n) < 0.3, rng.uniform(-0.3, 0.3, n), 0.0)
    cls = rng.choice([1, 1, 1, 2, 3, 4], n)
    out = []
    t = 0.0
    for f in range(frames):
        dt = 0.1 if f != 30 else 0.6  # a gap in the stream
        t += dt
        yaw = yaw + turn * dt
        pos = pos + np.stack([np.cos(yaw), np.sin(yaw)], 1) * (speed * dt)[:, None]
        dets = []
        for i in range(n):
            r = rng.random()
            if r < 0.1:
                continue  # missed
            score = float(rng.uniform(0.5, 0.95)) if r > 0.2 else float(rng.uniform(0.12, 0.28))  # some weak
            has_v = rng.random() > 0.15
            length, width, height = SIZES[int(cls[i])]
            dets.append(Detection(
                x=float(pos[i, 0] + rng.normal(0, 0.2)), y=float(pos[i, 1] + rng.normal(0, 0.2)),
                yaw=float(yaw[i] + rng.normal(0, 0.05) + (math.pi if rng.random() < 0.05 else 0.0)),
                length=length, width=width, height=height,
                vx=float(speed[i] * math.cos(yaw[i]) + rng.normal(0, 0.5)) if has_v else math.nan,
                vy=float(speed[i] * math.sin(yaw[i]) + rng.normal(0, 0.5)) if has_v else math.nan,
                cls=int(cls[i]) if rng.random() > 0.03 else (2 if cls[i] == 1 else int(cls[i])),
                score=score, frame="odom", evidence=float(rng.uniform(0.1, 1.0))))
        for _ in range(rng.poisson(3)):  # clutter
            dets.append(Detection(x=float(rng.uniform(-50, 50)), y=float(rng.uniform(-50, 50)),
                                  yaw=float(rng.uniform(-3, 3)), length=1.0, width=1.0, height=1.0, vx=math.nan,
                                  vy=math.nan, cls=int(rng.integers(1, 5)), score=float(rng.uniform(0.3, 0.6)),
                                  frame="odom", evidence=float(rng.uniform(0.0, 1.0))))
        out.append((1000.0 + t, dets))
    return out


def track_rows(tracks) -> list[list]:
    """The recorded fields of a list of TrackState (numbers to 1e-4: the recording is compared with a
    tolerance anyway)."""
    return [[t.id, t.cls, t.status] + [round(float(v), 4) for v in (
             t.x, t.y, t.yaw, t.vx, t.vy, t.yaw_rate, t.length, t.existence, t.score, t.pose_cov[0, 0],
             t.pose_cov[5, 5], t.twist_cov[0, 0])] for t in tracks]


# ------------------------------------------------------------------ the whole tracking stage, recorded
# PerceptionPipeline's stage 7 (detections base_link -> odom, tracker, track rule) on the sequence
# above seen from a moving ego, with a LiDAR count grid made from the detections (85 % of them have
# returns), a wall of returns and clutter cells. test_tracking_stage_reference.py replays it against
# test/data/tracker_stage_reference.npz, recorded from the tracker and rule before their rewrite
# for speed (issue 21 item 3): ids, classes, statuses and the rule's decisions exactly, states to 1e-9.

STAGE_GRID = {"length_x": 100.0, "length_y": 100.0, "resolution": 0.5}  # 200 x 200 cells around the ego
STAGE_CHECKPOINTS = (24, 49)  # frames whose track fields are stored in full (others: a fingerprint)
FIELDS = ("x", "y", "yaw", "vx", "vy", "yaw_rate", "length", "width", "height", "existence", "age_s",
          "time_since_update_s", "score", "existence_probability")
_POSE = (0, 1, 5)


def ego_pose(stamp: float) -> tuple[float, float, float]:
    t = stamp - 1000.0
    return -5.0 + 4.0 * t, 2.0 * math.sin(0.1 * t), 0.3 + 0.05 * t


def stage_inputs(n: int = 120, frames: int = 50, seed: int = 0, stationary: float = 0.2):
    """[(stamp, detections in base_link, T_odom_base, non-ground counts [200, 200])] per frame."""
    from ssm_perception.config import GridConfig
    from ssm_perception.geometry import invert_transform, se2_matrix

    grid = GridConfig(**STAGE_GRID)
    rng = np.random.default_rng(1000 + seed)
    wall = np.stack([np.linspace(-30.0, 30.0, 121), np.full(121, 40.0)], 1)  # returns on a building front
    out = []
    for stamp, dets in sequence(n, frames, seed, stationary):
        ex, ey, eyaw = ego_pose(stamp)
        T = se2_matrix(ex, ey, eyaw)
        Tinv = invert_transform(T)
        c, s = math.cos(eyaw), math.sin(eyaw)
        base = []
        for wx in (-20.0, 0.0, 20.0):  # weak car detections on the wall (static on returns, not confident)
            if rng.random() < 0.9:
                dets = [*dets, Detection(x=wx + rng.normal(0, 0.1), y=40.5 + rng.normal(0, 0.1), yaw=0.0, length=4.0,
                                         width=1.8, height=1.5, vx=math.nan, vy=math.nan, cls=1,
                                         score=float(rng.uniform(0.32, 0.38)), frame="odom", evidence=0.9)]
        for d in dets:
            bx = Tinv[0, 0] * d.x + Tinv[0, 1] * d.y + Tinv[0, 3]
            by = Tinv[1, 0] * d.x + Tinv[1, 1] * d.y + Tinv[1, 3]
            base.append(Detection(x=bx, y=by, yaw=d.yaw - eyaw, length=d.length, width=d.width, height=d.height,
                                  vx=c * d.vx + s * d.vy, vy=-s * d.vx + c * d.vy, cls=d.cls, score=d.score,
                                  frame="base_link", evidence=d.evidence))
        pts = [np.array([(d.x, d.y) for d in base if d.score >= 0.3 and rng.random() < 0.85]).reshape(-1, 2)]
        pts.append((Tinv[:2, :2] @ wall.T).T + Tinv[:2, 3])
        pts.append(rng.uniform(-50.0, 50.0, (40, 2)))  # clutter
        counts = np.zeros((grid.nx, grid.ny), np.int32)
        for p, k in zip(pts, (3, 4, 1), strict=True):
            for off in ((0.0, 0.0), (0.5, 0.0), (-0.5, 0.0), (0.0, 0.5)):
                i = np.floor((p[:, 0] + off[0] - grid.x_min) / grid.resolution).astype(int)
                j = np.floor((p[:, 1] + off[1] - grid.y_min) / grid.resolution).astype(int)
                ok = (i >= 0) & (i < grid.nx) & (j >= 0) & (j < grid.ny)
                np.add.at(counts, (i[ok], j[ok]), k if off == (0.0, 0.0) else 1)
        out.append((stamp, base, T, counts))
    return out


def fingerprint_weights(n_fields: int) -> np.ndarray:
    return np.random.default_rng(12345).uniform(0.5, 1.5, n_fields)


_POSE_MASK = np.ones((6, 6), bool)
_POSE_MASK[np.ix_(_POSE, _POSE)] = False
_TWIST_MASK = np.ones((6, 6), bool)
_TWIST_MASK[np.ix_((0, 1), (0, 1))] = False
_TWIST_MASK[5, 5] = False


def track_fields(tracks) -> np.ndarray:
    """[T, 33]: FIELDS, class probabilities of classes 0-4, the estimated covariance entries (pose x, y,
    yaw block, twist vx, vy block, yaw-rate variance)."""
    n = len(tracks)
    if n == 0:
        return np.zeros((0, len(FIELDS) + 5 + 9 + 4 + 1))
    scalars = np.array([[float(getattr(t, f)) for f in FIELDS] for t in tracks], np.float64)
    probs = np.array([[float((t.class_probs or {}).get(c, 0.0)) for c in range(5)] for t in tracks], np.float64)
    pc = np.stack([np.asarray(t.pose_cov).reshape(6, 6) for t in tracks])
    tc = np.stack([np.asarray(t.twist_cov).reshape(6, 6) for t in tracks])
    return np.concatenate([scalars, probs, pc[:, ~_POSE_MASK], tc[:, :2, :2].reshape(n, 4), tc[:, 5:6, 5]], 1)


def check_constant_covariance(tracks) -> bool:
    """The covariance entries outside the estimated ones are the unobserved variance (diagonal) and 0."""
    from ssm_perception.tracking.tracker import UNOBSERVED_VAR

    if not tracks:
        return True
    want = np.eye(6) * UNOBSERVED_VAR
    pc = np.stack([np.asarray(t.pose_cov).reshape(6, 6) for t in tracks])
    tc = np.stack([np.asarray(t.twist_cov).reshape(6, 6) for t in tracks])
    return bool((pc[:, _POSE_MASK] == want[_POSE_MASK]).all() and (tc[:, _TWIST_MASK] == want[_TWIST_MASK]).all())


STATUS = {"tentative": 0, "confirmed": 1, "coasting": 2}


def record_stage(inputs, tracking_cfg, support_cfg, step) -> dict[str, np.ndarray]:
    """Per frame: the tracker's tracks (id, class, status, fingerprint of track_fields), the track
    rule's decision per track (0 tentative passed, 1 published, 2 withheld unsupported, 3 withheld
    static) and returns, the published ids in order; full track_fields at STAGE_CHECKPOINTS.
    ``step(tracker, rule, dets_base, T_odom_base, stamp, counts) -> (tracks, published, report)``."""
    from ssm_perception.config import GridConfig
    from ssm_perception.tracking.support import TrackSupportRule
    from ssm_perception.tracking.tracker import MultiObjectTracker

    tracker = MultiObjectTracker(tracking_cfg)
    rule = TrackSupportRule(support_cfg, GridConfig(**STAGE_GRID))
    cols = {k: [] for k in ("n", "ids", "cls", "status", "fp", "decision", "returns", "n_pub", "pub_ids")}
    full, uuids, const_ok = [], {}, True
    for k, (stamp, dets, T, counts) in enumerate(inputs):
        tracks, published, report = step(tracker, rule, dets, T, stamp, counts)
        f = track_fields(tracks)
        const_ok &= check_constant_covariance(tracks)
        for t in tracks:
            assert uuids.setdefault(t.id, t.uuid) == t.uuid and len(t.uuid) == 16
        unsup, static = set(report.withheld_unsupported), set(report.withheld_static)
        pub = {t.id for t in published}
        cols["n"].append(len(tracks))
        cols["ids"] += [t.id for t in tracks]
        cols["cls"] += [t.cls for t in tracks]
        cols["status"] += [STATUS[t.status] for t in tracks]
        cols["fp"] += (f @ fingerprint_weights(f.shape[1])).tolist() if len(tracks) else []
        cols["decision"] += [0 if t.status == "tentative" else 1 if t.id in pub else 2 if t.id in unsup
                             else 3 if t.id in static else -1 for t in tracks]
        cols["returns"] += [report.returns.get(t.id, -1) for t in tracks]
        cols["n_pub"].append(len(published))
        cols["pub_ids"] += [t.id for t in published]
        if k in STAGE_CHECKPOINTS:
            full.append(f)
    assert const_ok
    assert len(set(uuids.values())) == len(uuids)
    out = {k: np.array(v, np.float64 if k == "fp" else np.int64) for k, v in cols.items()}
    out["full"] = np.concatenate(full)
    out["full_n"] = np.array([len(x) for x in full], np.int64)
    return out


def stage_configs():
    """name -> (TrackingConfig, TrackSupportConfig, objects, frames) of the recorded stage sequences."""
    from ssm_perception.config import TrackingConfig, TrackSupportConfig

    return {
        "defaults": (TrackingConfig(), TrackSupportConfig(), 120, 50),
        "two_stage_3hits_window3": (TrackingConfig(low_score_threshold=0.1, confirm_hits=3),
                                    TrackSupportConfig(window_frames=3, min_returns=3, static_min_s=1.5), 60, 50),
    }


def _pipeline_calls(tracker, rule, dets, T, stamp, counts):
    """What PerceptionPipeline.track ran when the reference was recorded (before the stage function)."""
    from ssm_perception.tracking.detections import detections_to_odom

    tracks = tracker.update(detections_to_odom(dets, T), stamp)
    published, report = rule.apply(tracks, counts, T, stamp)
    return tracks, published, report


if __name__ == "__main__":  # writes the reference (only from the implementation it is meant to pin)
    import sys

    arrays = {}
    for name, (tc, sc, n, frames) in stage_configs().items():
        rec = record_stage(stage_inputs(n, frames), tc, sc, _pipeline_calls)
        arrays.update({f"{name}/{k}": v for k, v in rec.items()})
        print(name, {k: v.shape for k, v in rec.items()}, "decisions", np.bincount(rec["decision"] + 1))
    np.savez_compressed(sys.argv[1], **arrays)
