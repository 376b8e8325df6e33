"""A recorded tracker input for the equivalence test of the vectorised tracker (test_tracking_vectorised.py)
and for scripts/bench_tracker.py: ``n`` objects of all classes on a 100 m square, constant
velocity or turning, detected with noise, misses (10 %), missing velocities (15 %), weak
detections below the class thresholds, clutter, and a 0.6 s gap in the stream."""

from __future__ import annotations

import math

import numpy as np

from ssm_perception.tracking.detections import Detection

SIZES = {1: (4.5, 1.9, 1.6), 2: (10.0, 2.5, 3.2), 3: (1.8, 0.6, 1.7), 4: (0.6, 0.6, 1.75)}


def sequence(n: int = 120, frames: int = 50, seed: int = 0) -> list[tuple[float, list[Detection]]]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-50, 50, (n, 2))
    yaw = rng.uniform(-math.pi, math.pi, n)
    speed = rng.uniform(0, 12, n)
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
