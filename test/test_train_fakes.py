"""Small synthetic sequences for the training tests (no simulator: fast and deterministic).

A 24 x 24 grid at 1 m: two static walls and one car driving across; the ego drives forward at
1 m per frame, so the warp between frames is a whole-cell shift. Features: channel 0 = occupied
and visible, channel 1 = visible; the rest zero. Visibility hides the half-plane y < -4 m, so the
model must remember occluded walls to score there.
"""

from __future__ import annotations

import numpy as np

from ssm_perception.config import GridConfig, PerceptionConfig
from ssm_perception.geometry import se2_matrix
from ssm_perception.train.dataset import SequenceSpec, rasterize_objects

GRID = {"length_x": 24.0, "length_y": 24.0, "resolution": 1.0}


def tiny_config(kind: str = "mamba") -> PerceptionConfig:
    return PerceptionConfig.model_validate({"grid": GRID, "model": {"kind": kind}})


def num_features() -> int:
    from ssm_perception.bev.features import NUM_FEATURES

    return NUM_FEATURES


def synthetic_sequence(spec: SequenceSpec, cfg: PerceptionConfig, progress: bool = False,
                       info: dict | None = None) -> dict:
    g: GridConfig = cfg.grid
    rng = np.random.default_rng(spec.seed)
    T = round(spec.duration_s * 10)
    H, W, res = g.nx, g.ny, g.resolution
    xs = g.x_min + (np.arange(H) + 0.5) * res
    ys = g.y_min + (np.arange(W) + 0.5) * res
    C = num_features()
    out = {k: [] for k in ("features", "occupied", "dynamic", "visible", "velocity", "center", "box",
                           "center_mask", "pose", "stamp_ns")}
    wall_y = (-8.0 + rng.integers(-2, 3), 7.0 + rng.integers(-2, 3))
    car_y0 = float(rng.uniform(-6, 6))
    for t in range(T):
        ego_x = 1.0 * t  # odom
        car = np.array([[1, 20.0 - 0.3 * t - ego_x, car_y0, 0.0, 4.0, 2.0, 1.5, -3.0, 0.0]])  # -3 m/s over ground
        wx = xs[:, None] + ego_x  # odom x of cells
        occ = np.zeros((H, W), bool)
        for wy in wall_y:
            occ |= (np.abs(ys[None, :] - wy) < 0.6) & ((wx % 6.0) < 4.0)
        vel, ctr, box, cmask = rasterize_objects(car, g)
        dyn = (np.abs(vel[0]) > 0) & np.ones((H, W), bool)
        occ |= dyn
        vis = np.broadcast_to(ys[None, :] > -4.0, (H, W)).copy()
        f = np.zeros((C, H, W), np.float32)
        f[0] = occ & vis
        f[1] = vis
        out["features"].append(f.astype(np.float16))
        out["occupied"].append(occ)
        out["dynamic"].append(dyn)
        out["visible"].append(vis)
        out["velocity"].append(vel.astype(np.float16))
        out["center"].append(np.round(ctr * 255).astype(np.uint8))
        out["box"].append(box.astype(np.float16))
        out["center_mask"].append(cmask)
        out["pose"].append(se2_matrix(ego_x, 0.0, 0.0))
        out["stamp_ns"].append(1_000_000_000 + t * 100_000_000)
    return {k: np.stack(v) if k != "stamp_ns" else np.asarray(v, np.int64) for k, v in out.items()}


def patch(monkeypatch) -> None:
    """Route the trainer's data generation to the synthetic sequences."""
    import ssm_perception.train.dataset as ds

    monkeypatch.setattr(ds, "generate_sequence", synthetic_sequence)

