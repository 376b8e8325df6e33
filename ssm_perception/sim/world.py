"""2.5D world: static primitives (extruded boxes and cylinders on a flat ground at z = 0), paths,
and agents whose motion is integrated once up front (IDM car following, traffic lights, scripted
stops and crossings) so that any later query of a pose at any time is a cheap interpolation.

All coordinates here are in the world frame, which is also the ``map`` frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Surface materials: drive LiDAR intensity, radar RCS and camera colour.
GROUND, SIDEWALK, MARKING, BUILDING, VEHICLE, PEDESTRIAN, POLE, VEGETATION, KERB, BARRIER, CYCLIST = range(11)
MATERIAL_NAMES = ("ground", "sidewalk", "marking", "building", "vehicle", "pedestrian", "pole", "vegetation", "kerb",
                  "barrier", "cyclist")

# Object classes (our numbering; io/track_fields.py maps them to msg/ObjectClassification.msg labels).
CLS_UNKNOWN, CLS_CAR, CLS_TRUCK, CLS_CYCLIST, CLS_PEDESTRIAN = range(5)
CLASS_MATERIAL = {CLS_CAR: VEHICLE, CLS_TRUCK: VEHICLE, CLS_CYCLIST: CYCLIST, CLS_PEDESTRIAN: PEDESTRIAN}
CLASS_SIZE = {CLS_CAR: (4.5, 1.9, 1.5), CLS_TRUCK: (9.0, 2.5, 3.4), CLS_CYCLIST: (1.8, 0.6, 1.7),
              CLS_PEDESTRIAN: (0.6, 0.6, 1.75)}
BUS_SIZE = (12.0, 2.55, 3.2)  # a city bus: class truck in the ground truth (our classes have no bus)
_BUS = -1  # marker in the class lists of the layouts: a truck-class agent of BUS_SIZE

# Occupancy ground truth counts primitives that reach into the body band of a vehicle
# (top above OCC_Z_LOW, bottom below OCC_Z_HIGH): kerbs are driveable-looking, tree canopies overhang.
OCC_Z_LOW, OCC_Z_HIGH = 0.3, 2.0


@dataclass
class Primitives:
    """Static boxes and vertical cylinders, as flat arrays (vectorized casting)."""

    # boxes: [Nb] centre, yaw, length (along yaw), width, bottom z, top z, material, object id (-1 = none), class
    bx: np.ndarray
    by: np.ndarray
    byaw: np.ndarray
    bl: np.ndarray
    bw: np.ndarray
    bz0: np.ndarray
    bz1: np.ndarray
    bmat: np.ndarray
    bid: np.ndarray
    bcls: np.ndarray
    # cylinders: [Nc] centre, radius, bottom z, top z, material
    cx: np.ndarray
    cy: np.ndarray
    cr: np.ndarray
    cz0: np.ndarray
    cz1: np.ndarray
    cmat: np.ndarray


class PrimitiveBuilder:
    def __init__(self):
        self.boxes: list[tuple] = []
        self.cyls: list[tuple] = []

    def box(self, x, y, yaw, length, width, z0, z1, mat, obj_id=-1, cls=CLS_UNKNOWN):
        self.boxes.append((x, y, yaw, length, width, z0, z1, mat, obj_id, cls))

    def segment(self, x0, y0, x1, y1, width, height, mat, piece: float = 20.0):
        """A wall/kerb along (x0, y0) -> (x1, y1), cut into boxes of at most ``piece`` metres so that
        angular culling in the ray caster stays tight."""
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, math.ceil(length / piece))
        yaw = math.atan2(y1 - y0, x1 - x0)
        for k in range(n):
            a = (k + 0.5) / n
            self.box(x0 + a * (x1 - x0), y0 + a * (y1 - y0), yaw, length / n, width, 0.0, height, mat)

    def cylinder(self, x, y, r, z0, z1, mat):
        self.cyls.append((x, y, r, z0, z1, mat))

    def build(self) -> Primitives:
        b = np.array(self.boxes, dtype=np.float64).reshape(-1, 10)
        c = np.array(self.cyls, dtype=np.float64).reshape(-1, 6)
        return Primitives(
            bx=b[:, 0], by=b[:, 1], byaw=b[:, 2], bl=b[:, 3], bw=b[:, 4], bz0=b[:, 5], bz1=b[:, 6],
            bmat=b[:, 7].astype(np.int64), bid=b[:, 8].astype(np.int64), bcls=b[:, 9].astype(np.int64),
            cx=c[:, 0], cy=c[:, 1], cr=c[:, 2], cz0=c[:, 3], cz1=c[:, 4], cmat=c[:, 5].astype(np.int64),
        )


class Path:
    """A planar curve sampled every ``step`` metres; pose at arc length s by interpolation."""

    def __init__(self, x0: float, y0: float, yaw0: float, segments: list[tuple], step: float = 0.25):
        # segments: ("S", length) straight, or ("A", radius, angle) arc turning left for angle > 0.
        xs, ys, yaws = [x0], [y0], [yaw0]
        x, y, yaw = x0, y0, yaw0
        for seg in segments:
            if seg[0] == "S":
                n = max(1, math.ceil(seg[1] / step))
                d = np.arange(1, n + 1) * (seg[1] / n)
                xs += list(x + d * math.cos(yaw))
                ys += list(y + d * math.sin(yaw))
                yaws += [yaw] * n
                x, y = xs[-1], ys[-1]
            else:
                radius, angle = seg[1], seg[2]
                n = max(2, math.ceil(abs(angle) * radius / step))
                a = np.arange(1, n + 1) * (angle / n)
                sgn = math.copysign(1.0, angle)
                # centre of the turn sits to the left (angle > 0) or right of the heading
                cxx, cyy = x - sgn * radius * math.sin(yaw), y + sgn * radius * math.cos(yaw)
                hy = yaw + a
                xs += list(cxx + sgn * radius * np.sin(hy))
                ys += list(cyy - sgn * radius * np.cos(hy))
                yaws += list(hy)
                x, y, yaw = xs[-1], ys[-1], yaws[-1]
        self.x, self.y, self.yaw = np.array(xs), np.array(ys), np.array(yaws)
        self.s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(self.x), np.diff(self.y)))])
        self.length = float(self.s[-1])

    def at(self, s):
        s = np.clip(s, 0.0, self.length)
        return np.interp(s, self.s, self.x), np.interp(s, self.s, self.y), np.interp(s, self.s, self.yaw)

    def offset(self, d: float) -> Path:
        """The same curve shifted d metres to the left (a walking companion's path)."""
        p = Path.__new__(Path)
        p.x, p.y = self.x - d * np.sin(self.yaw), self.y + d * np.cos(self.yaw)
        p.yaw, p.s, p.length = self.yaw, self.s, self.length
        return p

    def rotated(self, theta: float) -> Path:
        c, s = math.cos(theta), math.sin(theta)
        p = Path.__new__(Path)
        p.x, p.y = c * self.x - s * self.y, s * self.x + c * self.y
        p.yaw, p.s, p.length = self.yaw + theta, self.s, self.length
        return p


@dataclass
class AgentSpec:
    """An agent before simulation: its path, start arc length and behaviour."""

    cls: int
    path: Path
    s0: float
    v_des: float
    size: tuple[float, float, float]
    start_time: float = 0.0  # waits (v = 0) until this time: pedestrians at the kerb
    stops: list[tuple[float, float]] = field(default_factory=list)  # (time, duration) scripted stops
    stop_line_s: float | None = None  # traffic-light stop line on the path (arc length)
    axis: int = 0  # road axis the agent travels on (0: x road, 1: y road) for the traffic light
    follows: bool = True  # car-following (pedestrians do not)


@dataclass
class Trajectories:
    """Agent motion sampled on a common time grid t [T] (seconds from the scenario start)."""

    t: np.ndarray  # [T]
    x: np.ndarray  # [A, T]
    y: np.ndarray
    yaw: np.ndarray
    v: np.ndarray  # speed along the heading [A, T]
    cls: np.ndarray  # [A]
    size: np.ndarray  # [A, 3] l, w, h

    def state(self, t: float):
        """x, y, yaw, vx, vy, yaw_rate [A] at time t (linear interpolation on the grid)."""
        f = np.clip((t - self.t[0]) / (self.t[1] - self.t[0]), 0, len(self.t) - 1.000001)
        i = int(f)
        a = f - i
        x = self.x[:, i] * (1 - a) + self.x[:, i + 1] * a
        y = self.y[:, i] * (1 - a) + self.y[:, i + 1] * a
        dyaw = np.angle(np.exp(1j * (self.yaw[:, i + 1] - self.yaw[:, i])))
        yaw = self.yaw[:, i] + a * dyaw
        v = self.v[:, i] * (1 - a) + self.v[:, i + 1] * a
        rate = dyaw / (self.t[1] - self.t[0])
        return x, y, yaw, v * np.cos(yaw), v * np.sin(yaw), rate


def traffic_light_green(axis: int, t: float, cycle: float = 32.0, green: float = 14.0) -> bool:
    """Two-phase signal: the x road is green for [0, green), the y road for [cycle/2, cycle/2 + green)."""
    phase = (t % cycle) - (cycle / 2.0) * axis
    return 0.0 <= phase < green


def simulate_agents(specs: list[AgentSpec], duration: float, dt: float = 0.05, lights: bool = False) -> Trajectories:
    """Integrate all agents with the Intelligent Driver Model (leaders: anything in a corridor ahead,
    red lights as a standing obstacle at the stop line); positions follow each agent's path.

    A hand-written loop over time (vectorized over agents): no traffic-simulation package fits a
    few dozen scripted agents that must be reproducible bit for bit.
    """
    n_t = math.ceil((duration + 1.0) / dt) + 1
    a_n = len(specs)
    t = np.arange(n_t) * dt
    xs, ys, yaws, vs = (np.zeros((a_n, n_t)) for _ in range(4))
    if a_n == 0:
        return Trajectories(t, xs, ys, yaws, vs, np.zeros(0, np.int64), np.zeros((0, 3)))
    s = np.array([sp.s0 for sp in specs], dtype=np.float64)
    v_des = np.array([sp.v_des for sp in specs])
    v = np.array([sp.v_des if sp.start_time <= 0 else 0.0 for sp in specs])  # traffic already flowing
    length = np.array([sp.size[0] for sp in specs])
    width = np.array([sp.size[1] for sp in specs])
    follows = np.array([sp.follows for sp in specs])
    a_max, b_comf, t_gap, s_min = 1.5, 2.5, 1.2, 2.0
    for k in range(n_t):
        tk = t[k]
        pose = [sp.path.at(si) for sp, si in zip(specs, s, strict=True)]
        px = np.array([p[0] for p in pose])
        py = np.array([p[1] for p in pose])
        pyaw = np.array([p[2] for p in pose])
        xs[:, k], ys[:, k], yaws[:, k], vs[:, k] = px, py, pyaw, v
        # desired speed now: waiting, scripted stops
        vd = v_des.copy()
        for i, sp in enumerate(specs):
            if tk < sp.start_time or any(t0 <= tk < t0 + d for t0, d in sp.stops):
                vd[i] = 0.0
        # nearest leader in a corridor ahead: relative position in each agent's heading frame
        dx = px[None, :] - px[:, None]
        dy = py[None, :] - py[:, None]
        c, sn = np.cos(pyaw)[:, None], np.sin(pyaw)[:, None]
        fwd = c * dx + sn * dy
        lat = -sn * dx + c * dy
        gap = fwd - (length[:, None] + length[None, :]) / 2.0
        ahead = (fwd > 0) & (np.abs(lat) < (width[:, None] + width[None, :]) / 2.0 + 0.4) & (gap < 60.0)
        np.fill_diagonal(ahead, False)
        gap = np.where(ahead, gap, np.inf)
        lead = np.argmin(gap, axis=1)
        g = gap[np.arange(a_n), lead]
        dv = v - np.where(np.isfinite(g), v[lead] * np.cos(pyaw[lead] - pyaw), 0.0)
        if lights:
            for i, sp in enumerate(specs):
                if sp.stop_line_s is None or not follows[i] or traffic_light_green(sp.axis, tk):
                    continue
                d_line = sp.stop_line_s - s[i] - length[i] / 2.0
                # too close to stop comfortably: run the amber
                if 0.0 < d_line < g[i] and d_line > v[i] ** 2 / (2 * 4.0):
                    g[i], dv[i] = d_line + s_min * 0.5, v[i]
        s_star = s_min + v * t_gap + v * dv / (2 * math.sqrt(a_max * b_comf))
        inter = np.where(follows & np.isfinite(g), (np.maximum(s_star, 0.0) / np.maximum(g, 0.1)) ** 2, 0.0)
        acc = a_max * (1.0 - (v / np.maximum(vd, 0.1)) ** 4 - inter)
        acc = np.where(vd <= 0.0, -np.minimum(b_comf * 1.6, v / dt), acc)
        acc = np.where(~follows & (vd > 0), (vd - v) / 0.5, acc)  # pedestrians: settle to walking speed
        acc = np.clip(acc, -8.0, a_max * 1.5)
        v_new = np.maximum(v + acc * dt, 0.0)
        s = s + 0.5 * (v + v_new) * dt
        v = v_new
    cls = np.array([sp.cls for sp in specs], dtype=np.int64)
    size = np.array([sp.size for sp in specs], dtype=np.float64)
    return Trajectories(t, xs, ys, np.unwrap(yaws, axis=1), vs, cls, size)


# ------------------------------------------------------------------------------- layouts
@dataclass
class World:
    """Everything the sensors see: static primitives, agents (index 0 is the ego vehicle)."""

    static: Primitives
    traj: Trajectories  # agent 0 = ego
    object_ids: np.ndarray  # [A] track ids (ego: 0, unused)
    road_half_width: float
    intersection: bool
    lane_markings: list[float]  # lateral offsets of dashed lines on the x road (and y road if intersection)
    parking_lot: bool = False
    ramp: tuple[float, float, float, float] | None = None  # ground: see ground_z

    def ground_z(self, x, y):
        """Ground height: 0, except beyond the line n . (x, y) = c of ``ramp`` (nx, ny, c, grade),
        where it rises (grade > 0) or falls linearly. The ego's whole path stays on the flat side."""
        return ground_z(self.ramp, x, y)

    def ground_material(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Road / sidewalk / marking for ground points (camera shading, LiDAR intensity)."""
        on_x = np.abs(y) < self.road_half_width
        on_y = (np.abs(x) < self.road_half_width) if self.intersection else np.zeros_like(on_x)
        mat = np.full(x.shape, SIDEWALK, dtype=np.int64)
        mat[on_x | on_y | self.parking_lot] = GROUND
        # dashed lane lines (3 m dash, 3 m gap): only points near a line offset are tested
        for along, across, on in ((x, y, on_x), (y, x, on_y)):
            if not self.lane_markings or not on.any():
                continue
            near = np.min(np.abs(across[:, None] - np.asarray(self.lane_markings)[None, :]), axis=1) < 0.08
            idx = np.nonzero(near & on)[0]
            dash = np.floor(along[idx] / 3.0) % 2 == 0
            mat[idx[dash]] = MARKING
        return mat


def ground_z(ramp, x, y):
    """Height of the ground at (x, y) for a ramp (nx, ny, c, grade) or None (flat)."""
    if ramp is None:
        return np.zeros(np.shape(x)) if np.ndim(x) else 0.0
    nx, ny, c, grade = ramp
    return grade * np.maximum(nx * np.asarray(x, np.float64) + ny * np.asarray(y, np.float64) - c, 0.0)


def _choose_ramp(cfg, srng, traj: Trajectories, directions) -> tuple | None:
    """A grade change on a straight line 12-35 m beyond the farthest point of the ego's path in one
    of ``directions`` (unit (nx, ny)): the ego stays on flat ground, the sensors see the slope."""
    grade = cfg.scenery.slope
    if grade == 0:
        return None
    nx, ny = directions[int(srng.integers(len(directions)))]
    reach = float(np.max(nx * traj.x[0] + ny * traj.y[0]))
    return (float(nx), float(ny), reach + float(srng.uniform(12.0, 35.0)), float(grade))


def _lift(static: Primitives, ramp) -> Primitives:
    """Static primitives set onto the ramped ground: cut low boxes that cross the sloped part into
    pieces of at most 2 m (kerbs, barriers, hedges, fences follow the ground), lift each box by the
    ground height at its centre (tall buildings: bottom at the lowest ground under them, so they
    never float), and lift cylinders."""
    if ramp is None:
        return static
    rows = []
    for k in range(len(static.bx)):
        row = [static.bx[k], static.by[k], static.byaw[k], static.bl[k], static.bw[k], static.bz0[k], static.bz1[k],
               static.bmat[k], static.bid[k], static.bcls[k]]
        c, s = math.cos(row[2]), math.sin(row[2])
        long_ax = 0 if row[3] >= row[4] else 1
        length = max(row[3], row[4])
        corners = [(row[0] + a * c * row[3] / 2 - b * s * row[4] / 2, row[1] + a * s * row[3] / 2 + b * c * row[4] / 2)
                   for a in (-1, 1) for b in (-1, 1)]
        gz = [float(ground_z(ramp, x, y)) for x, y in corners]
        if max(abs(z) for z in gz) == 0.0:  # entirely on the flat part
            rows.append(row)
            continue
        if row[6] - row[5] < 3.0 and row[8] < 0 and length > 2.0:
            n = math.ceil(length / 2.0)
            ux, uy = (c, s) if long_ax == 0 else (-s, c)
            for i in range(n):
                a = (i + 0.5) / n - 0.5
                px, py = row[0] + a * length * ux, row[1] + a * length * uy
                piece = list(row)
                piece[0], piece[1] = px, py
                piece[3 + long_ax] = length / n
                g = float(ground_z(ramp, px, py))
                piece[5], piece[6] = row[5] + g, row[6] + g
                rows.append(piece)
            continue
        g = float(ground_z(ramp, row[0], row[1]))
        tall = row[6] - row[5] >= 3.0
        row[5], row[6] = row[5] + (min(gz) if tall else g), row[6] + g
        rows.append(row)
    b = np.array(rows, dtype=np.float64).reshape(-1, 10)
    gc = ground_z(ramp, static.cx, static.cy)
    return Primitives(
        bx=b[:, 0], by=b[:, 1], byaw=b[:, 2], bl=b[:, 3], bw=b[:, 4], bz0=b[:, 5], bz1=b[:, 6],
        bmat=b[:, 7].astype(np.int64), bid=b[:, 8].astype(np.int64), bcls=b[:, 9].astype(np.int64),
        cx=static.cx, cy=static.cy, cr=static.cr, cz0=static.cz0 + gc, cz1=static.cz1 + gc, cmat=static.cmat,
    )


def _lane_path(direction: float, offset: float, length: float, turn: str | None = None) -> Path:
    """Lane driving through the origin along heading ``direction`` at lateral offset -offset (right-hand
    traffic), optionally turning right (into the perpendicular outer lane) or left (inner lane)."""
    if turn is None:
        p = Path(-length, -offset, 0.0, [("S", 2 * length)])
    elif turn == "R":
        r = 4.0
        x0 = -offset - r
        p = Path(-length, -offset, 0.0, [("S", length + x0), ("A", r, -math.pi / 2), ("S", length)])
    else:
        r = 10.0
        x0 = offset - r
        p = Path(-length, -offset, 0.0, [("S", length + x0), ("A", r, math.pi / 2), ("S", length)])
    return p.rotated(direction)


def _buildings(b: PrimitiveBuilder, rng, along: int, side: float, start: float, stop: float, setback: float):
    """A row of buildings facing a road along axis ``along`` on side ``side`` (+1/-1) from start to stop.
    Returns (box index, along, side) of each building."""
    u = start
    made = []
    while u < stop:
        length, depth = rng.uniform(12, 30), rng.uniform(10, 20)
        height = rng.uniform(6, 25)
        front = setback + rng.uniform(0, 3)
        c_u, c_v = u + length / 2, side * (front + depth / 2)
        made.append((len(b.boxes), along, side))
        if along == 0:
            b.box(c_u, c_v, 0.0, length, depth, 0.0, height, BUILDING)
        else:
            b.box(c_v, c_u, 0.0, depth, length, 0.0, height, BUILDING)
        u += length + rng.uniform(1, 6)
    return made


def _street_furniture(b: PrimitiveBuilder, rng, along: int, side: float, start: float, stop: float, half: float):
    """Street lights every ~30 m and trees between them on the sidewalk."""
    for u in np.arange(start, stop, 30.0) + rng.uniform(0, 5):
        p = (u, side * (half + 1.0)) if along == 0 else (side * (half + 1.0), u)
        b.cylinder(p[0], p[1], 0.15, 0.0, 7.0, POLE)
        if rng.random() < 0.7:
            q = (u + 15, side * (half + 2.5)) if along == 0 else (side * (half + 2.5), u + 15)
            b.cylinder(q[0], q[1], 0.2, 0.0, 2.6, VEGETATION)
            b.cylinder(q[0], q[1], rng.uniform(1.2, 2.0), 2.6, rng.uniform(5, 8), VEGETATION)


def _ids(n: int, rng) -> np.ndarray:
    """Distinct, non-sequential track ids (a tracker must not rely on them being small or ordered)."""
    return rng.choice(np.arange(100, 100 + 50 * max(n, 1)), size=n, replace=False).astype(np.int64)


def build_urban(cfg, rng) -> World:
    """Four-way signalised intersection at the origin: 2 lanes + parking lane per direction,
    buildings, parked cars, street furniture; ego approaches from the west and turns left."""
    half, extent = 9.5, 220.0
    b = PrimitiveBuilder()
    parked_ids = []
    buildings = []
    for along in (0, 1):
        for side in (-1.0, 1.0):
            for seg in ((-extent, -half), (half, extent)):
                a0, a1 = seg
                pts = ((a0, side * half), (a1, side * half)) if along == 0 else ((side * half, a0), (side * half, a1))
                b.segment(*pts[0], *pts[1], 0.3, cfg.scenery.kerb_height, KERB)
                # leave the corner free of buildings: the other road's sidewalk ends at |u| = 14
                lo, hi = (a0 + 4.5, a1) if a0 > 0 else (a0, a1 - 4.5)
                buildings += _buildings(b, rng, along, side, lo, hi - 12.0, 14.0)
                _street_furniture(b, rng, along, side, a0 + 3, a1 - 3, half)
                # parked cars in the parking lane, away from the intersection
                u = a0 + 3.0
                while u < a1 - 3.0:
                    if abs(u) > 22.0 and rng.random() < cfg.traffic.parked_fraction:
                        car_len = rng.uniform(4.2, 4.9)
                        c = (u, side * 8.25) if along == 0 else (side * 8.25, u)
                        yaw = (0.0 if along == 0 else math.pi / 2) + rng.normal(0, 0.03)
                        parked_ids.append(len(b.boxes))
                        b.box(c[0], c[1], yaw, car_len, 1.85, 0.0, rng.uniform(1.4, 1.7), VEHICLE, 0, CLS_CAR)
                    u += rng.uniform(5.5, 7.0)
    specs = []
    ego_path = _lane_path(0.0, 1.75, extent, "L")
    specs.append(AgentSpec(CLS_CAR, ego_path, extent - 70.0, cfg.traffic.ego_speed_mps, (4.6, 1.9, 1.5), stop_line_s=extent - 13.5,
                           axis=0))
    # a lead vehicle in ego's lane that brakes to a stop and goes on
    specs.append(AgentSpec(CLS_CAR, _lane_path(0.0, 1.75, extent, "L"), extent - 45.0, 9.0, CLASS_SIZE[CLS_CAR],
                           stops=[(2.5, 1.5)], stop_line_s=extent - 13.5, axis=0))
    lanes = []
    for k, direction in enumerate((0.0, math.pi / 2, math.pi, -math.pi / 2)):
        for offset in (1.75, 5.25):
            lanes.append((direction, offset, k % 2))
    n_veh = cfg.traffic.vehicles + cfg.traffic.trucks + cfg.traffic.cyclists + cfg.traffic.buses
    classes = [CLS_CAR] * cfg.traffic.vehicles + [CLS_TRUCK] * cfg.traffic.trucks + [CLS_CYCLIST] * cfg.traffic.cyclists
    classes += [_BUS] * cfg.traffic.buses
    rng.shuffle(classes)
    occupied: dict[int, list[float]] = {}
    for i in range(n_veh):
        cls = classes[i]
        for _ in range(20):  # find a free start place in some lane
            li = int(rng.integers(len(lanes)))
            direction, offset, axis = lanes[li]
            if cls == CLS_CYCLIST:
                offset = 7.0
            s0 = float(rng.uniform(extent - 110.0, extent + 60.0))
            if all(abs(s0 - o) > 16.0 for o in occupied.get(li, [])) and not (li == 0 and s0 > extent - 85):
                break
        occupied.setdefault(li, []).append(s0)
        turn = None
        if s0 < extent - 15.0 and cls != CLS_CYCLIST:
            turn = rng.choice(np.array([None, None, "R", "L"], dtype=object))
            turn = None if (turn == "R" and offset < 5) or (turn == "L" and offset > 5) else turn
        if cls == _BUS:
            turn = None  # a 12 m bus does not take the 4 m right-turn radius
        path = _lane_path(direction, offset, extent, turn)
        # (the dict draws all three speeds, as the original layout did: the random stream stays put)
        v = {CLS_CAR: rng.uniform(8, 12), CLS_TRUCK: rng.uniform(7, 9), CLS_CYCLIST: rng.uniform(4, 6)}[
            CLS_TRUCK if cls == _BUS else cls]
        stops = [(float(rng.uniform(1, 15)), float(rng.uniform(1, 3)))] if rng.random() < 0.25 else []
        size = BUS_SIZE if cls == _BUS else CLASS_SIZE[cls]
        specs.append(AgentSpec(CLS_TRUCK if cls == _BUS else cls, path, s0, v, size, stops=stops,
                               stop_line_s=extent - 13.5, axis=axis))
    # pedestrians: crossing at the crosswalks (|u| = 12), a jaywalker ahead of ego, sidewalk walkers
    for k in range(cfg.traffic.pedestrians):
        s0, start = 0.0, 0.0
        if k == 1:  # jaywalker crossing ego's road ahead of it, early in the run
            path = Path(float(rng.uniform(-50.0, -35.0)), -half - 1.0, math.pi / 2, [("S", 2 * half + 2.0)])
            start = float(rng.uniform(0.5, 2.0))
        elif k % 3 == 0:  # crosswalk, any of the four arms
            direction = float(rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2]))
            u = 12.0 * float(rng.choice([-1.0, 1.0]))
            path = Path(u, -half - 2.0, math.pi / 2, [("S", 2 * half + 4.0)]).rotated(direction)
            start = float(rng.uniform(0.0, 10.0))
        elif k % 3 == 1:  # mid-block crossing somewhere
            path = Path(float(rng.uniform(-80, 80)), -half - 1.0, math.pi / 2, [("S", 2 * half + 2.0)])
            path = path.rotated(float(rng.choice([0.0, math.pi / 2])))
            start = float(rng.uniform(0, 12))
        else:  # sidewalk walker
            side = float(rng.choice([-1.0, 1.0]))
            path = Path(-60.0, side * (half + 2.0), 0.0, [("S", 160.0)]).rotated(float(rng.choice([0.0, math.pi])))
            s0 = float(rng.uniform(0, 100))
        specs.append(AgentSpec(CLS_PEDESTRIAN, path, s0, float(rng.uniform(1.1, 1.6)), CLASS_SIZE[CLS_PEDESTRIAN],
                               start_time=start, follows=False))
    srng = np.random.default_rng([cfg.seed, 12])  # scenery stream: never shifts the draws above
    specs += _pedestrian_groups(specs, cfg, srng, skip_first=1)
    _scenery_urban(b, cfg, srng, half, extent, buildings)
    traj = simulate_agents(specs, cfg.duration_s, lights=True)
    ramp = _choose_ramp(cfg, srng, traj, [(1.0, 0.0), (0.0, -1.0), (0.0, 1.0)])
    return _finish(b, traj, rng, half, True, [-3.5, 3.5, 0.0], ramp=ramp)


def build_highway(cfg, rng) -> World:
    """Straight six-lane highway with median barrier and guard rails; trucks on the right, a braking
    vehicle ahead of ego and one lane change."""
    half, extent = 11.5, 900.0
    b = PrimitiveBuilder()
    b.segment(-extent, 0.0, extent, 0.0, 0.5, 0.9, BARRIER)
    for side in (-1.0, 1.0):
        b.segment(-extent, side * (half + 0.5), extent, side * (half + 0.5), 0.3, 0.8, BARRIER)
        for u in np.arange(-extent, extent, 45.0) + rng.uniform(0, 10):
            b.cylinder(u, side * (half + 3.0), 0.2, 0.0, 9.0, POLE)
        for u in rng.uniform(-extent, extent, 120):
            d = side * rng.uniform(half + 6.0, half + 30.0)
            b.cylinder(u, d, 0.25, 0.0, 3.0, VEGETATION)
            b.cylinder(u, d, rng.uniform(1.5, 3.0), 3.0, rng.uniform(7, 12), VEGETATION)
    lanes_y = (1.9, 5.6, 9.3)
    v_ego = cfg.traffic.ego_speed_mps
    specs = [AgentSpec(CLS_CAR, Path(-extent, -5.6, 0.0, [("S", 2 * extent)]), extent - 300.0, v_ego,
                       (4.6, 1.9, 1.5))]
    # braking vehicle ahead of ego
    specs.append(AgentSpec(CLS_CAR, Path(-extent, -5.6, 0.0, [("S", 2 * extent)]), extent - 260.0, v_ego,
                           CLASS_SIZE[CLS_CAR], stops=[(4.0, 0.6)]))
    n = cfg.traffic.vehicles + cfg.traffic.trucks + cfg.traffic.buses
    classes = [CLS_TRUCK] * cfg.traffic.trucks + [CLS_CAR] * cfg.traffic.vehicles + [_BUS] * cfg.traffic.buses
    used: dict[tuple, list[float]] = {}
    for i in range(n):
        cls = classes[i]
        for _ in range(20):
            lane = 2 if cls in (CLS_TRUCK, _BUS) else int(rng.integers(0, 3))
            direction = float(rng.choice([0.0, math.pi]))
            s0 = float(rng.uniform(extent - 420.0, extent - 120.0)) if direction == 0 else float(
                rng.uniform(extent - 500.0, extent + 300.0))
            if all(abs(s0 - o) > 25 for o in used.get((lane, direction), [])) and not (
                    direction == 0 and lane == 1 and abs(s0 - (extent - 300.0)) < 60):
                break
        used.setdefault((lane, direction), []).append(s0)
        v = {0: rng.uniform(27, 32), 1: rng.uniform(23, 27), 2: rng.uniform(20, 23)}[lane]
        if i == 0 and direction == 0:  # a lane change: two opposite arcs shift one lane (3.7 m)
            r, ang = 400.0, math.acos(1 - 3.7 / 800.0)
            path = Path(-extent, -lanes_y[lane], 0.0, [("S", s0 + 30.0), ("A", r, ang),
                                                       ("A", r, -ang), ("S", 2 * extent)])
        else:
            path = Path(-extent, -lanes_y[lane], 0.0, [("S", 2 * extent)]).rotated(direction)
        if cls == _BUS:
            specs.append(AgentSpec(CLS_TRUCK, path, s0, v, BUS_SIZE))
        else:
            specs.append(AgentSpec(cls, path, s0, v, CLASS_SIZE[cls]))
    srng = np.random.default_rng([cfg.seed, 12])
    _scenery_highway(b, cfg, srng, half, extent)
    traj = simulate_agents(specs, cfg.duration_s)
    ramp = _choose_ramp(cfg, srng, traj, [(1.0, 0.0)])  # a hill or dip ahead
    return _finish(b, traj, rng, half, False, [0.0 - 3.75, -7.45, 3.75, 7.45], ramp=ramp)


def build_parking(cfg, rng) -> World:
    """Parking lot: rows of parking places along two aisles, a car pulling out, pedestrians walking
    between cars, light poles and a store front."""
    b = PrimitiveBuilder()
    for x in np.arange(-60.0, 60.0, 2.7):
        for row_y, yaw in ((-5.5, -math.pi / 2), (5.5, math.pi / 2), (16.5, -math.pi / 2), (27.5, math.pi / 2)):
            if abs(x - 10.0) < 1.5 and row_y == 5.5:
                continue  # the place the leaving car drives out of
            if rng.random() < cfg.traffic.parked_fraction:
                cls = CLS_TRUCK if rng.random() < 0.05 else CLS_CAR
                length, width, height = (6.0, 2.3, 2.6) if cls == CLS_TRUCK else (rng.uniform(4.2, 4.9), 1.85,
                                                                                 rng.uniform(1.4, 1.8))
                b.box(x, row_y, yaw + rng.normal(0, 0.04), length, width, 0.0, height, VEHICLE, 0, cls)
    for x in np.arange(-60.0, 61.0, 20.0):
        b.cylinder(x, 11.0, 0.2, 0.0, 8.0, POLE)
        b.cylinder(x, -9.0, 0.2, 0.0, 8.0, POLE)
    b.segment(-62.0, 11.0, 62.0, 11.0, 1.2, cfg.scenery.kerb_height, KERB)
    b.box(0.0, 50.0, 0.0, 120.0, 25.0, 0.0, 8.0, BUILDING)
    b.segment(-65.0, -12.0, 65.0, -12.0, 0.3, cfg.scenery.kerb_height, KERB)
    for x in np.arange(-60.0, 60.0, 8.0) + rng.uniform(0, 3):
        b.cylinder(x, -14.0, 0.2, 0.0, 2.0, VEGETATION)
        b.cylinder(x, -14.0, rng.uniform(1.0, 1.8), 2.0, 5.0, VEGETATION)
    specs = [AgentSpec(CLS_CAR, Path(-70.0, -1.5, 0.0, [("S", 200.0)]), 15.0, cfg.traffic.ego_speed_mps,
                       (4.6, 1.9, 1.5), stops=[(6.0, 1.0)])]
    # the leaving car: backs... drives forward out of its place and away along the aisle (oncoming)
    specs.append(AgentSpec(CLS_CAR, Path(10.0, 7.5, -math.pi / 2, [("S", 1.0), ("A", 5.0, -math.pi / 2),
                                                                   ("S", 100.0)]), 0.0, 3.0, CLASS_SIZE[CLS_CAR],
                           start_time=1.0))
    for k in range(cfg.traffic.vehicles // 3):
        specs.append(AgentSpec(CLS_CAR, Path(60.0, 1.5, math.pi, [("S", 200.0)]), float(rng.uniform(0, 60)) + 20 * k,
                               float(rng.uniform(3, 5)), CLASS_SIZE[CLS_CAR], start_time=float(rng.uniform(0, 5))))
    for k in range(cfg.traffic.pedestrians):
        x = float(rng.uniform(-40, 40))
        if k % 2 == 0:  # cross the aisle
            path = Path(x, -9.0 if k % 4 == 0 else 9.0, math.pi / 2 if k % 4 == 0 else -math.pi / 2, [("S", 18.0)])
        else:  # walk along the aisle edge
            path = Path(-60.0, rng.choice([-3.6, 3.6]), 0.0, [("S", 130.0)]).rotated(float(rng.choice([0, math.pi])))
        specs.append(AgentSpec(CLS_PEDESTRIAN, path, 0.0 if k % 2 == 0 else float(rng.uniform(0, 100)),
                               float(rng.uniform(1.0, 1.5)), CLASS_SIZE[CLS_PEDESTRIAN],
                               start_time=float(rng.uniform(0, 8)), follows=False))
    srng = np.random.default_rng([cfg.seed, 12])
    specs += _pedestrian_groups(specs, cfg, srng)
    _scenery_parking(b, cfg, srng)
    traj = simulate_agents(specs, cfg.duration_s)
    ramp = _choose_ramp(cfg, srng, traj, [(1.0, 0.0), (-1.0, 0.0)])
    return _finish(b, traj, rng, 4.5, False, [], parking_lot=True, ramp=ramp)


# ------------------------------------------------------------------------------- extra scenery
def _pedestrian_groups(specs: list[AgentSpec], cfg, srng, skip_first: int = 0) -> list[AgentSpec]:
    """Companions for the pedestrians (groups of 1..pedestrian_group_max): side by side, 0.7 m
    apart, a step ahead or behind, same start and pace (they walk together)."""
    g = cfg.traffic.pedestrian_group_max
    if g <= 1:
        return []
    peds = [sp for sp in specs if sp.cls == CLS_PEDESTRIAN][skip_first:]  # the scripted jaywalker walks alone
    out = []
    for sp in peds:
        for j in range(int(srng.integers(0, g))):
            lateral = 0.7 * (j // 2 + 1) * (1 if j % 2 == 0 else -1)
            out.append(AgentSpec(CLS_PEDESTRIAN, sp.path.offset(lateral), max(0.0, sp.s0 + float(srng.uniform(-0.6, 0.6))),
                                 sp.v_des, CLASS_SIZE[CLS_PEDESTRIAN], start_time=sp.start_time, follows=False))
    return out


def _parked(b: PrimitiveBuilder, x, y, yaw, srng, truck: bool = False):
    """A parked car (or van-sized truck) as a static object box (id assigned in _finish)."""
    if truck:
        b.box(x, y, yaw, srng.uniform(5.5, 7.0), 2.2, 0.0, srng.uniform(2.5, 3.0), VEHICLE, 0, CLS_TRUCK)
    else:
        b.box(x, y, yaw, srng.uniform(4.2, 4.9), 1.85, 0.0, srng.uniform(1.4, 1.8), VEHICLE, 0, CLS_CAR)


def _scenery_urban(b: PrimitiveBuilder, cfg, srng, half: float, extent: float, buildings):
    """Hedges, fences, bushes, signs, bollards, signal poles, and buildings set back behind a
    forecourt with cars parked along their front. Positions (u along the road, v across it) stay
    off the lanes, the parking lane (|v| < 9.5), the sidewalk walkers' line (|v| = 11.5) and the
    crosswalks (|u| = 12)."""
    sc = cfg.scenery
    if not (sc.vegetation or sc.fences or sc.poles or sc.front_parking):
        return

    def place(along, u, v):
        return (u, v) if along == 0 else (v, u)

    # buildings set back: forecourt parking along the front (a frequent source of confusion
    # between parked cars and facades on real data)
    for idx, along, side in buildings:
        if srng.random() >= sc.front_parking:
            continue
        x, y, yaw, length, width, z0, z1, mat, oid, cls = b.boxes[idx]
        depth = width if along == 0 else length
        c_u, c_v = (x, y) if along == 0 else (y, x)
        lenu = length if along == 0 else width
        front = abs(c_v) - depth / 2
        push = 7.0
        c_v += side * push
        nx_, ny_ = place(along, c_u, c_v)
        b.boxes[idx] = (nx_, ny_, yaw, length, width, z0, z1, mat, oid, cls)
        # perpendicular bays along the new front, nose to the wall
        for u in np.arange(c_u - lenu / 2 + 1.5, c_u + lenu / 2 - 1.2, 2.7):
            if srng.random() < 0.65:
                v = side * (front + push - 0.6 - 2.4)
                px, py = place(along, float(u), float(v))
                car_yaw = (math.pi / 2 if along == 0 else 0.0) + srng.normal(0, 0.05)
                _parked(b, px, py, car_yaw, srng, truck=srng.random() < 0.08)
    for along in (0, 1):
        for side in (-1.0, 1.0):
            for a0, a1 in ((-extent, -half - 5.0), (half + 5.0, extent)):
                # hedges or fences in 10 m slots just in front of the building line
                for u in np.arange(a0 + 2.0, a1 - 10.0, 10.0):
                    r = srng.random()
                    if r < sc.vegetation * 0.5:
                        ln = float(srng.uniform(3.0, 9.0))
                        px, py = place(along, float(u) + ln / 2, side * 13.2)
                        b.box(px, py, 0.0 if along == 0 else math.pi / 2, ln, float(srng.uniform(0.5, 0.9)), 0.0,
                              float(srng.uniform(0.7, 1.6)), VEGETATION)
                    elif r < sc.vegetation * 0.5 + sc.fences * 0.5:
                        ln = float(srng.uniform(5.0, 10.0))
                        px, py = place(along, float(u) + ln / 2, side * 13.4)
                        b.box(px, py, 0.0 if along == 0 else math.pi / 2, ln, 0.06, 0.0,
                              float(srng.uniform(1.0, 2.0)), BARRIER)
                # bushes on the verge between the street lights' and the trees' line
                for u in np.arange(a0 + 4.0, a1 - 4.0, 7.0):
                    if srng.random() < sc.vegetation * 0.3:
                        px, py = place(along, float(u + srng.uniform(-2, 2)), side * (half + float(srng.uniform(2.2, 3.2))))
                        b.cylinder(px, py, float(srng.uniform(0.3, 0.8)), 0.0, float(srng.uniform(0.5, 1.5)), VEGETATION)
                # signs on posts at the kerb
                for u in np.arange(a0 + 6.0, a1 - 6.0, 25.0):
                    if srng.random() < sc.poles:
                        px, py = place(along, float(u + srng.uniform(-5, 5)), side * (half + 0.5))
                        b.cylinder(px, py, 0.04, 0.0, 2.8, POLE)
                        b.box(px, py, float(srng.uniform(0, math.pi)), 0.7, 0.05, 2.1, 2.8, POLE)
    if sc.poles > 0:
        # signal poles at the corners and bollards on the corner kerbs
        for sx in (-1.0, 1.0):
            for sy in (-1.0, 1.0):
                b.cylinder(sx * (half + 1.0), sy * (half + 1.0), 0.12, 0.0, 5.5, POLE)
                if srng.random() < sc.poles:
                    for k in range(3):
                        b.cylinder(sx * (half + 3.0 + 1.5 * k), sy * (half + 0.4), 0.1, 0.0, 0.9, POLE)


def _scenery_highway(b: PrimitiveBuilder, cfg, srng, half: float, extent: float):
    """Noise walls / fences, bush rows and sign posts on the verges beyond the guard rails."""
    sc = cfg.scenery
    if not (sc.vegetation or sc.fences or sc.poles):
        return
    for side in (-1.0, 1.0):
        for u in np.arange(-extent, extent, 40.0):
            r = srng.random()
            if r < sc.fences * 0.6:
                b.segment(u, side * (half + 5.0), u + 40.0, side * (half + 5.0), 0.2, float(srng.uniform(1.5, 4.0)),
                          BARRIER)
            elif r < sc.fences * 0.6 + sc.vegetation * 0.6:
                for x in np.arange(u, u + 40.0, 4.0):
                    b.cylinder(float(x + srng.uniform(-1, 1)), side * (half + float(srng.uniform(3.5, 6.0))),
                               float(srng.uniform(0.6, 1.4)), 0.0, float(srng.uniform(0.8, 2.2)), VEGETATION)
            if srng.random() < sc.poles * 0.4:
                b.cylinder(u + 20.0, side * (half + 2.0), 0.08, 0.0, 3.0, POLE)
                b.box(u + 20.0, side * (half + 2.0), 0.0, 0.08, 1.5, 2.0, 3.0, POLE)


def _scenery_parking(b: PrimitiveBuilder, cfg, srng):
    """Bushes along the lot edge, a fence behind the south kerb, bollards at the store front."""
    sc = cfg.scenery
    for x in np.arange(-60.0, 60.0, 5.0):
        if srng.random() < sc.vegetation * 0.5:
            b.cylinder(float(x + srng.uniform(0, 3)), -13.2, float(srng.uniform(0.4, 0.9)), 0.0,
                       float(srng.uniform(0.5, 1.3)), VEGETATION)
    if srng.random() < sc.fences:
        b.segment(-65.0, -16.5, 65.0, -16.5, 0.06, float(srng.uniform(1.2, 2.0)), BARRIER)
    for x in np.arange(-55.0, 56.0, 4.0):
        if srng.random() < sc.poles * 0.5:
            b.cylinder(float(x), 36.0, 0.1, 0.0, 0.9, POLE)


def _finish(b: PrimitiveBuilder, traj: Trajectories, rng, half: float, intersection: bool, markings,
            parking_lot: bool = False, ramp=None) -> World:
    static = _lift(b.build(), ramp)
    # parked cars become objects with stable ids, after the agents
    n_parked = int((static.bid == 0).sum())
    ids = _ids(len(traj.cls) + n_parked, rng)
    agent_ids, parked = ids[: len(traj.cls)], ids[len(traj.cls):]
    agent_ids[0] = 0
    static.bid[static.bid == 0] = parked
    return World(static, traj, agent_ids, half, intersection, markings, parking_lot, ramp)


LAYOUTS = {"urban": build_urban, "highway": build_highway, "parking": build_parking}
