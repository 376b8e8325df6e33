"""SYNTHETIC detections made from ground truth, for exercising the tracker before a model exists.

Nothing here is a detector: ``synthetic_detections`` perturbs ground-truth boxes with per-class
noise, drops boxes that are occluded (too few LiDAR returns where the truth counts them, else
hidden behind other boxes as seen from the ego) or missed at random (more often far away), and
adds false positives. Numbers measured on these detections describe the
tracker, not the perception model, and are labelled 'synthetic' wherever they are written.

``crossing_scenario`` is a hand-made ground-truth sequence covering the hard cases of the issue:
a car crossing behind a parked truck, two cyclists crossing paths, a turning car, an
oncoming car, and a car that leaves the grid ahead and re-enters it later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ssm_perception.config import GridConfig
from ssm_perception.eval.mot import GroundTruthObject, GtFrame
from ssm_perception.geometry import invert_transform, se2_matrix, wrap_angle, yaw_of
from ssm_perception.tracking.detections import Detection


@dataclass(frozen=True)
class ClassNoise:
    pos_std: float  # [m] per axis
    yaw_std: float  # [rad]
    vel_std: float  # [m/s] per axis
    size_rel_std: float = 0.05  # relative std of length/width/height


@dataclass(frozen=True)
class SyntheticDetectionConfig:
    """How synthetic detections deviate from the truth (defaults: a decent LiDAR BEV detector)."""

    noise: dict[int, ClassNoise] = field(default_factory=lambda: {
        1: ClassNoise(0.20, 0.05, 0.40),
        2: ClassNoise(0.35, 0.05, 0.50),
        3: ClassNoise(0.20, 0.15, 0.40),
        4: ClassNoise(0.15, 0.50, 0.30),
    })
    miss_prob_near: float = 0.03  # random miss probability at the ego
    miss_prob_far: float = 0.20  # ... at 50 m (quadratic in range in between)
    min_visible_fraction: float = 0.3  # less of the box's angular extent visible -> not detected
    min_points: int = 3  # where the truth knows LiDAR returns per object (simulator), fewer -> not detected
    false_positives_per_frame: float = 1.0  # Poisson mean, uniform over the grid, random class
    fp_score_range: tuple[float, float] = (0.3, 0.55)
    tp_score_range: tuple[float, float] = (0.55, 0.95)
    flip_yaw_prob: float = 0.02  # heading reported backwards (box symmetry)


def _corners_base(o: GroundTruthObject, T_base_odom: np.ndarray) -> np.ndarray:
    """[4, 2] box corners in base_link."""
    c, s = math.cos(o.yaw), math.sin(o.yaw)
    half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [o.length / 2, o.width / 2]
    pts = half @ np.array([[c, s], [-s, c]]) + [o.x, o.y]
    return pts @ T_base_odom[:2, :2].T + T_base_odom[:2, 3]


def visible_fractions(objects: list[GroundTruthObject], T_odom_base: np.ndarray) -> np.ndarray:
    """[N] fraction of each box's angular extent (seen from base_link's origin) not hidden by a nearer box."""
    T_base_odom = invert_transform(T_odom_base)
    corners = [_corners_base(o, T_base_odom) for o in objects]
    centres = [c.mean(axis=0) for c in corners]
    out = np.ones(len(objects))
    for i, ci in enumerate(corners):
        bearing = math.atan2(centres[i][1], centres[i][0])
        rng_i = float(np.linalg.norm(centres[i]))
        ang = wrap_angle(np.arctan2(ci[:, 1], ci[:, 0]) - bearing)
        lo, hi = float(ang.min()), float(ang.max())
        if hi - lo < 1e-6:
            continue
        blocked = []
        for j, cj in enumerate(corners):
            if j == i or float(np.linalg.norm(cj, axis=1).min()) >= rng_i:
                continue
            aj = wrap_angle(np.arctan2(cj[:, 1], cj[:, 0]) - bearing)
            if float(aj.max() - aj.min()) > math.pi:  # straddles the opposite direction: not in the way
                continue
            blocked.append((max(lo, float(aj.min())), min(hi, float(aj.max()))))
        covered, end = 0.0, lo  # union length of the blocked intervals
        for a, b in sorted(blocked):
            a = max(a, end)
            if b > a:
                covered += b - a
                end = b
        out[i] = 1.0 - covered / (hi - lo)
    return out


def synthetic_detections(
    objects_odom: list[GroundTruthObject],
    T_odom_base: np.ndarray,
    grid: GridConfig,
    rng: np.random.Generator,
    cfg: SyntheticDetectionConfig | None = None,
) -> list[Detection]:
    """SYNTHETIC detections (base_link) of the ground-truth objects of one frame; see module docstring."""
    cfg = cfg or SyntheticDetectionConfig()
    T_base_odom = invert_transform(T_odom_base)
    dyaw = yaw_of(T_base_odom)
    c, s = math.cos(dyaw), math.sin(dyaw)
    if any(o.num_points < 0 for o in objects_odom):  # the box geometry is only needed without point counts
        visible = visible_fractions(objects_odom, T_odom_base)
    else:
        visible = np.ones(len(objects_odom))
    x_max, y_max = grid.x_min + grid.length_x, grid.y_min + grid.length_y
    dets = []
    for o, vis in zip(objects_odom, visible):
        p = T_base_odom[:2, :2] @ [o.x, o.y] + T_base_odom[:2, 3]
        if not (grid.x_min <= p[0] < x_max and grid.y_min <= p[1] < y_max):
            continue
        r = float(np.hypot(*p)) / 50.0
        p_miss = cfg.miss_prob_near + (cfg.miss_prob_far - cfg.miss_prob_near) * min(r, 1.5) ** 2
        # The simulator's per-object LiDAR return count is the better occlusion model (it knows
        # buildings); the box-on-box geometry is the fallback for hand-made ground truth.
        hidden = o.num_points < cfg.min_points if o.num_points >= 0 else vis < cfg.min_visible_fraction
        if hidden or rng.random() < p_miss:
            continue
        n = cfg.noise.get(o.cls, ClassNoise(0.4, 0.3, 0.8))
        yaw = o.yaw + dyaw + rng.normal(0, n.yaw_std)
        if rng.random() < cfg.flip_yaw_prob:
            yaw += math.pi
        vx, vy = c * o.vx - s * o.vy, s * o.vx + c * o.vy
        size = np.array([o.length, o.width, o.height]) * (1.0 + rng.normal(0, n.size_rel_std, 3))
        lo, hi = cfg.tp_score_range
        dets.append(Detection(
            x=float(p[0] + rng.normal(0, n.pos_std)), y=float(p[1] + rng.normal(0, n.pos_std)),
            yaw=float(wrap_angle(yaw)), length=float(size[0]), width=float(size[1]), height=float(size[2]),
            vx=float(vx + rng.normal(0, n.vel_std)), vy=float(vy + rng.normal(0, n.vel_std)), cls=o.cls,
            score=float(hi - (hi - lo) * min(r, 1.0) * rng.random()),
        ))
    for _ in range(rng.poisson(cfg.false_positives_per_frame)):
        cls = int(rng.integers(1, 5))
        size = {1: (4.5, 1.9, 1.6), 2: (9.0, 2.5, 3.2), 3: (1.8, 0.6, 1.7), 4: (0.6, 0.6, 1.7)}[cls]
        dets.append(Detection(
            x=float(rng.uniform(grid.x_min, x_max)), y=float(rng.uniform(grid.y_min, y_max)),
            yaw=float(rng.uniform(-math.pi, math.pi)), length=size[0], width=size[1], height=size[2],
            vx=float(rng.normal(0, 1.0)), vy=float(rng.normal(0, 1.0)), cls=cls,
            score=float(rng.uniform(*cfg.fp_score_range)),
        ))
    return dets


# ------------------------------------------------------------------------------ scenario
@dataclass(frozen=True)
class _Agent:
    id: int
    cls: int
    size: tuple[float, float, float]
    state: Callable[[float], tuple[float, float, float, float, float]]  # t -> x, y, yaw, vx, vy (odom)
    t_start: float = -math.inf
    t_end: float = math.inf


def _line(x0: float, y0: float, vx: float, vy: float, t0: float = 0.0):
    yaw = math.atan2(vy, vx) if (vx or vy) else 0.0
    return lambda t: (x0 + vx * (t - t0), y0 + vy * (t - t0), yaw, vx, vy)


def _turn(x0: float, y0: float, yaw0: float, v: float, w: float):
    def state(t):
        yaw = yaw0 + w * t
        x = x0 + v / w * (math.sin(yaw) - math.sin(yaw0))
        y = y0 + v / w * (math.cos(yaw0) - math.cos(yaw))
        return x, y, yaw, v * math.cos(yaw), v * math.sin(yaw)
    return state


def _leave_and_return(ego_speed: float):
    # Ahead of the ego in the left lane: 6 m/s faster until t = 8 s (leaves the 50 m grid at about
    # t = 3.3 s), then 4 m/s slower, so the ego catches up and it re-enters at about t = 15 s.
    v1, v2, t_switch, x0 = ego_speed + 6.0, ego_speed - 4.0, 8.0, 30.0

    def state(t):
        if t < t_switch:
            return x0 + v1 * t, 3.5, 0.0, v1, 0.0
        return x0 + v1 * t_switch + v2 * (t - t_switch), 3.5, 0.0, v2, 0.0
    return state


CAR, TRUCK, CYCLIST, PEDESTRIAN = (4.5, 1.9, 1.6), (10.0, 2.5, 3.2), (1.8, 0.6, 1.7), (0.6, 0.6, 1.75)


def crossing_scenario(duration_s: float = 20.0, rate_hz: float = 10.0, ego_speed: float = 8.0) -> list[GtFrame]:
    """Deterministic ground truth (odom) of an urban street; ego drives along +x from the origin."""
    agents = [
        _Agent(1, 1, CAR, _line(-20.0, 7.0, ego_speed + 4.0, 0.0)),  # overtakes the ego in the outer lane
        _Agent(2, 1, CAR, _leave_and_return(ego_speed)),  # leaves the grid ahead, re-enters
        _Agent(3, 1, CAR, _line(150.0, -3.5, -10.0, 0.0)),  # oncoming
        _Agent(4, 2, TRUCK, _line(60.0, -6.0, 0.0, 0.0)),  # parked truck
        _Agent(5, 1, CAR, _line(72.0, -40.0, 0.0, 8.0)),  # crosses behind the truck (hidden ~1 s)
        _Agent(6, 3, CYCLIST, _line(60.0, 10.0, 2.83, -2.83)),  # two cyclists crossing paths at (70, 0)
        _Agent(7, 3, CYCLIST, _line(60.0, -10.0, 2.83, 2.83)),
        _Agent(8, 1, CAR, _turn(10.0, -20.0, 0.0, 8.0, 0.12)),  # turning
        _Agent(9, 4, PEDESTRIAN, _line(30.0, 8.0, 1.2, 0.0)),  # on the sidewalk
    ]
    frames = []
    for k in range(round(duration_s * rate_hz)):
        t = k / rate_hz
        objects = []
        for a in agents:
            if not (a.t_start <= t <= a.t_end):
                continue
            x, y, yaw, vx, vy = a.state(t)
            objects.append(GroundTruthObject(a.id, a.cls, x, y, yaw, vx, vy, *a.size))
        frames.append(GtFrame(stamp_s=t, T_odom_base=se2_matrix(ego_speed * t, 0.0, 0.0), objects=objects))
    return frames
