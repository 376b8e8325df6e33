"""A scenario: world + ego localization + sensor schedule + adversities, and the in-memory frame
iterator that training and tests use without bags.

Frames:
- world = map. The true ego pose is T_world_base(t) (base_link on the ground, z = 0).
- odom -> base_link is integrated odometry (scale error + yaw-rate bias: drift), starting at the
  identity; an ``odom`` localization jump adds a step to it.
- map -> odom = (localization estimate of T_map_base) * inv(T_odom_base). The estimate is exact
  unless a ``map`` localization jump made it wrong by a fixed offset from then on.
Ground truth in base_link is exact relative to the true pose; ground truth in odom goes through the
published odom -> base_link, so it is consistent with what a tracker in odom sees.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ssm_perception.config import GridConfig, UserError
from ssm_perception.geometry import invert_transform, se2_matrix
from ssm_perception.sim import world as W
from ssm_perception.sim.config import ScenarioConfig
from ssm_perception.sim.raycast import Scene
from ssm_perception.sim.sensors import Camera, Lidar, Radar

OBJECT_DTYPE = np.dtype([
    ("id", "<i8"), ("cls", "u1"), ("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("yaw", "<f8"), ("l", "<f4"),
    ("w", "<f4"), ("h", "<f4"), ("vx", "<f4"), ("vy", "<f4"), ("yaw_rate", "<f4"), ("num_points", "<i4"),
])
SENSORS = ("lidar", "radar", "camera")
_SENSOR_KEY = {"lidar": 1, "radar": 2, "camera": 3}
DYNAMIC_SPEED = 0.5  # m/s: agents moving faster than this are "dynamic" in the ground truth
OBJECT_RANGE = 80.0
VISIBILITY_BAND = 1.0  # m: a cell is visible when a LiDAR ray passed through it below this height  # objects farther than this from ego are left out of the per-frame lists


class ScenarioError(UserError, ValueError):
    """Unknown preset or unusable scenario settings."""


@dataclass
class CameraFrame:
    stamp_ns: int
    image: np.ndarray  # [H, W, 3] uint8 RGB
    K: np.ndarray  # [3, 3]
    D: np.ndarray  # [5] plumb_bob
    P: np.ndarray  # [3, 4]
    T_odom_base: np.ndarray | None = None  # [4, 4] odom -> base_link at this image's stamp


@dataclass
class RadarFrame:
    stamp_ns: int
    points: np.ndarray  # [N] RADAR_DTYPE in the radar frame
    T_odom_base: np.ndarray | None = None  # [4, 4] odom -> base_link at this scan's stamp


@dataclass
class Measurement:
    """One scheduled sensor message: nominal index, actual stamp and bag (receive) time."""

    sensor: str
    index: int
    t_s: float  # measurement time, seconds from the start (jitter included)
    stamp_ns: int
    bag_ns: int


@dataclass
class SimFrame:
    """Everything at one LiDAR stamp (stamp = start of the sweep; point field t is relative to it)."""

    stamp_ns: int
    t_s: float
    lidar: np.ndarray  # [N] LIDAR_DTYPE, lidar frame (motion-distorted: each point at stamp + t)
    lidar_material: np.ndarray  # [N] world material id per point (-2 clutter, -3 corrupted)
    lidar_object: np.ndarray  # [N] track id of the object hit, -1 none
    radar: RadarFrame | None
    camera: CameraFrame | None
    T_odom_base: np.ndarray  # [4, 4]
    T_map_odom: np.ndarray  # [4, 4]
    T_world_base: np.ndarray  # [4, 4] true pose (world == map)
    T_base_sensor: dict[str, np.ndarray]  # frame_id -> [4, 4]
    occupied: np.ndarray  # [H, W] bool on the GridConfig grid in base_link
    dynamic: np.ndarray  # [H, W] bool
    visible: np.ndarray  # [H, W] bool
    objects_odom: np.ndarray  # [M] OBJECT_DTYPE
    objects_base: np.ndarray  # [M] OBJECT_DTYPE
    events: list[dict] = field(default_factory=list)


def _stamp_ns(start_s: int, t: float) -> int:
    return int(start_s) * 1_000_000_000 + round(t * 1e9)


class Scenario:
    """Deterministic function of (config, seed): same inputs give the same frames and bags."""

    def __init__(self, config: ScenarioConfig, grid: GridConfig | None = None):
        self.config = config
        self.grid = grid or GridConfig()
        seed = config.seed
        layout = W.LAYOUTS[config.layout]
        self.world = layout(config, np.random.default_rng([seed, 0]))
        self.lidar = Lidar(config.lidar, seed)
        self.radar = Radar(config.radar)
        self.camera = Camera(config.camera)
        self.T_base_sensor = {
            config.lidar.frame_id: self.lidar.T_base_sensor,
            config.radar.frame_id: self.radar.T_base_sensor,
            config.camera.frame_id: self.camera.T_base_sensor,
        }
        self._build_localization()
        self._cache: OrderedDict = OrderedDict()
        # grid cell centres in base_link: [H, W]
        g = self.grid
        self._gx = g.x_min + (np.arange(g.nx) + 0.5) * g.resolution
        self._gy = g.y_min + (np.arange(g.ny) + 0.5) * g.resolution

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, seed: int = 0, duration_s: float | None = None, grid: GridConfig | None = None):
        from ssm_perception.sim.presets import preset

        return cls(preset(name, seed=seed, duration_s=duration_s), grid)

    @property
    def start_ns(self) -> int:
        return _stamp_ns(self.config.start_time_s, 0.0)

    def ns(self, t: float) -> int:
        return _stamp_ns(self.config.start_time_s, t)

    # ------------------------------------------------------------------ ego and localization
    def ego_pose_at(self, t):
        """True (x, y, yaw) of base_link in the world at times t (array or scalar)."""
        tr = self.world.traj
        t = np.asarray(t, dtype=np.float64)
        return (np.interp(t, tr.t, tr.x[0]), np.interp(t, tr.t, tr.y[0]), np.interp(t, tr.t, tr.yaw[0]))

    def ego_velocity_at(self, t: float):
        """(speed along heading, yaw rate) of the ego at t."""
        tr = self.world.traj
        dt = tr.t[1] - tr.t[0]
        v = float(np.interp(t, tr.t, tr.v[0]))
        yr = (float(np.interp(t + dt / 2, tr.t, tr.yaw[0])) - float(np.interp(t - dt / 2, tr.t, tr.yaw[0]))) / dt
        return v, yr

    def T_world_base(self, t: float) -> np.ndarray:
        x, y, yaw = self.ego_pose_at(t)
        return se2_matrix(float(x), float(y), float(yaw))

    def _build_localization(self):
        cfg = self.config
        dt = 0.01
        t = np.arange(0.0, cfg.duration_s + 1.0 + dt, dt)
        x, y, yaw = self.ego_pose_at(t)
        # body-frame increments of the true motion, corrupted by scale error and yaw-rate bias
        c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
        ddx, ddy = np.diff(x), np.diff(y)
        bx = (c * ddx + s * ddy) * (1 + cfg.odom_scale_error)
        by = (-s * ddx + c * ddy) * (1 + cfg.odom_scale_error)
        dyaw = np.diff(yaw) + cfg.odom_yaw_rate_bias * dt
        oyaw = np.concatenate([[0.0], np.cumsum(dyaw)])
        co, so = np.cos(oyaw[:-1]), np.sin(oyaw[:-1])
        ox = np.concatenate([[0.0], np.cumsum(co * bx - so * by)])
        oy = np.concatenate([[0.0], np.cumsum(so * bx + co * by)])
        self._odom_t, self._odom = t, (ox, oy, oyaw)
        self._jumps = [a for a in cfg.adversities if a.type == "localization_jump"]

    def T_odom_base(self, t: float) -> np.ndarray:
        ox, oy, oyaw = (np.interp(t, self._odom_t, v) for v in self._odom)
        T = se2_matrix(float(ox), float(oy), float(oyaw))
        for j in self._jumps:
            if j.frame == "odom" and t >= j.start_s:
                T = se2_matrix(*j.offset) @ T
        return T

    def T_map_base_estimate(self, t: float) -> np.ndarray:
        T = self.T_world_base(t)
        for j in self._jumps:
            if j.frame == "map" and t >= j.start_s:
                T = se2_matrix(*j.offset) @ T
        return T

    def T_map_odom(self, t: float) -> np.ndarray:
        return self.T_map_base_estimate(t) @ invert_transform(self.T_odom_base(t))

    # ------------------------------------------------------------------ scene at a time
    def scene_at(self, t: float) -> Scene:
        """Static primitives plus agent boxes at t (agents carry velocity for motion within a sweep)."""
        st, tr = self.world.static, self.world.traj
        ax, ay, ayaw, avx, avy, arate = tr.state(t)
        a = slice(1, None)  # agent 0 is the ego: not rendered
        mat = np.array([W.CLASS_MATERIAL[c] for c in tr.cls[a]], dtype=np.int64)
        cat = np.concatenate
        gz = self.world.ground_z(ax[a], ay[a])  # agents on a slope (0 on flat ground)
        return Scene(
            bx=cat([st.bx, ax[a]]), by=cat([st.by, ay[a]]), byaw=cat([st.byaw, ayaw[a]]),
            bl=cat([st.bl, tr.size[a, 0]]), bw=cat([st.bw, tr.size[a, 1]]), bz0=cat([st.bz0, gz]),
            bz1=cat([st.bz1, tr.size[a, 2] + gz]), bvx=cat([np.zeros(len(st.bx)), avx[a]]),
            bvy=cat([np.zeros(len(st.bx)), avy[a]]), bwz=cat([np.zeros(len(st.bx)), arate[a]]),
            bmat=cat([st.bmat, mat]), bobj=cat([st.bid, self.world.object_ids[a]]),
            cx=st.cx, cy=st.cy, cr=st.cr, cz0=st.cz0, cz1=st.cz1, cmat=st.cmat, ramp=self.world.ramp,
        )

    # ------------------------------------------------------------------ schedule and adversities
    def _adv(self, kind: str, sensor: str | None, t: float):
        for a in self.config.adversities:
            if a.type == kind and (sensor is None or sensor in a.sensors) and a.active(t):
                return a
        return None

    def in_time_gap(self, t: float) -> bool:
        return self._adv("time_gap", None, t) is not None

    def _sensor_cfg(self, sensor: str):
        return getattr(self.config, sensor)

    def measurement(self, sensor: str, k: int) -> Measurement | None:
        """Schedule of message k of a sensor, or None when dropped (dropout, time gap, end)."""
        cfg = self._sensor_cfg(sensor)
        t_nom = k / cfg.rate_hz
        if not cfg.enabled or t_nom >= self.config.duration_s or k < 0:
            return None
        if self.in_time_gap(t_nom) or self._adv("dropout", sensor, t_nom):
            return None
        rng = self.rng(sensor, k, 1)
        t, delay = t_nom, cfg.latency_s
        jit = self._adv("stamp_jitter", sensor, t_nom)
        if jit is not None:
            t = max(0.0, t_nom + float(rng.uniform(-jit.jitter_s, jit.jitter_s)))
            delay += float(rng.uniform(0.0, jit.jitter_s))
        if self._adv("out_of_order", sensor, t_nom) is not None and k % 2 == 1:
            delay += 1.5 / cfg.rate_hz  # arrives after its successor
        stamp = self.ns(t)
        return Measurement(sensor, k, t, stamp, stamp + round(delay * 1e9))

    def count(self, sensor: str) -> int:
        """Number of nominal slots (dropped ones included) of a sensor."""
        return math.ceil(self.config.duration_s * self._sensor_cfg(sensor).rate_hz - 1e-9)

    def rng(self, sensor: str, k: int, purpose: int = 0) -> np.random.Generator:
        # independent of processing order: frames() and write_bag() draw identical noise
        return np.random.default_rng([self.config.seed, _SENSOR_KEY[sensor], k, purpose])

    # ------------------------------------------------------------------ sensor data
    def _cached(self, key, fn):
        if key in self._cache:
            return self._cache[key]
        value = fn()
        self._cache[key] = value
        while len(self._cache) > 8:
            self._cache.popitem(last=False)
        return value

    def weather_at(self, sensor: str, t: float):
        """(kind, extinction [1/m], near-range returns per LiDAR scan) of the weather in effect for a
        sensor at t, or None in clear air."""
        a = self._adv("weather", sensor, t)
        if a is None or a.strength(t) <= 0:
            return None
        s = a.strength(t)
        return a.weather, s * 3.0 / a.visibility_m, s * a.rate

    def lidar_scan(self, m: Measurement):
        def run():
            clutter = self._adv("clutter", "lidar", m.t_s)
            nan = self._adv("nan_points", "lidar", m.t_s)
            return self.lidar.scan(
                self.scene_at(m.t_s), self.ego_pose_at, m.t_s, self.world.ground_material, self.rng("lidar", m.index),
                clutter_rate=clutter.rate if clutter else 0.0, nan_fraction=nan.fraction if nan else 0.0,
                weather=self.weather_at("lidar", m.t_s), rng_extra=self.rng("lidar", m.index, 2),
            )

        return self._cached(("lidar", m.index), run)

    def radar_scan(self, m: Measurement) -> RadarFrame:
        def run():
            clutter = self._adv("clutter", "radar", m.t_s)
            nan = self._adv("nan_points", "radar", m.t_s)
            v, yr = self.ego_velocity_at(m.t_s)
            pts = self.radar.scan(self.scene_at(m.t_s), self.ego_pose_at(m.t_s), v, yr, self.rng("radar", m.index),
                                  clutter_rate=clutter.rate if clutter else 0.0,
                                  nan_fraction=nan.fraction if nan else 0.0)
            return RadarFrame(m.stamp_ns, pts, self.T_odom_base(m.t_s))

        return self._cached(("radar", m.index), run)

    def camera_frame(self, m: Measurement) -> CameraFrame:
        def run():
            w = self.weather_at("camera", m.t_s)
            img = self.camera.render(self.scene_at(m.t_s), self.ego_pose_at(m.t_s), self.world.ground_material,
                                     extinction=w[1] if w else 0.0)
            c = self.camera
            return CameraFrame(m.stamp_ns, img, c.K.copy(), c.D.copy(), c.P.copy(), self.T_odom_base(m.t_s))

        return self._cached(("camera", m.index), run)

    def latest(self, sensor: str, stamp_ns: int) -> Measurement | None:
        """Latest delivered measurement with stamp <= stamp_ns, if within 1.5 periods (else None)."""
        cfg = self._sensor_cfg(sensor)
        if not cfg.enabled:
            return None
        t = (stamp_ns - self.start_ns) / 1e9
        k = math.floor(t * cfg.rate_hz + 1e-9) + 1
        for kk in range(k, k - 3, -1):
            m = self.measurement(sensor, kk)
            if m is not None and m.stamp_ns <= stamp_ns and (stamp_ns - m.stamp_ns) <= 1.5e9 / cfg.rate_hz:
                return m
        return None

    # ------------------------------------------------------------------ ground truth
    def objects_at(self, t: float, num_points: dict[int, int] | None = None) -> np.ndarray:
        """All objects (agents but the ego, parked cars) in the world frame, within OBJECT_RANGE of ego."""
        tr, st = self.world.traj, self.world.static
        ax, ay, ayaw, avx, avy, arate = tr.state(t)
        parked = st.bid >= 0
        n_a, n_p = len(ax) - 1, int(parked.sum())
        out = np.zeros(n_a + n_p, dtype=OBJECT_DTYPE)
        out["id"] = np.concatenate([self.world.object_ids[1:], st.bid[parked]])
        out["cls"] = np.concatenate([tr.cls[1:], st.bcls[parked]])
        out["x"] = np.concatenate([ax[1:], st.bx[parked]])
        out["y"] = np.concatenate([ay[1:], st.by[parked]])
        out["yaw"] = np.concatenate([ayaw[1:], st.byaw[parked]])
        out["l"] = np.concatenate([tr.size[1:, 0], st.bl[parked]])
        out["w"] = np.concatenate([tr.size[1:, 1], st.bw[parked]])
        out["h"] = np.concatenate([tr.size[1:, 2], st.bz1[parked]])
        out["z"] = out["h"] / 2.0
        if self.world.ramp is not None:  # box bottoms on the ground (parked cars: their lifted bottom)
            out["h"] = np.concatenate([tr.size[1:, 2], st.bz1[parked] - st.bz0[parked]])
            out["z"] = out["h"] / 2.0 + np.concatenate([self.world.ground_z(ax[1:], ay[1:]), st.bz0[parked]])
        out["vx"] = np.concatenate([avx[1:], np.zeros(n_p)])
        out["vy"] = np.concatenate([avy[1:], np.zeros(n_p)])
        out["yaw_rate"] = np.concatenate([arate[1:], np.zeros(n_p)])
        if num_points:
            out["num_points"] = [num_points.get(int(i), 0) for i in out["id"]]
        ex, ey, _ = self.ego_pose_at(t)
        out = out[np.hypot(out["x"] - ex, out["y"] - ey) <= OBJECT_RANGE]
        return out[np.argsort(out["id"], kind="stable")]

    @staticmethod
    def transform_objects(objs: np.ndarray, T_dst_src: np.ndarray) -> np.ndarray:
        """Objects re-expressed in another planar frame (positions, headings and velocity vectors)."""
        out = objs.copy()
        c, s = T_dst_src[0, 0], T_dst_src[1, 0]
        yaw = math.atan2(s, c)
        out["x"] = c * objs["x"] - s * objs["y"] + T_dst_src[0, 3]
        out["y"] = s * objs["x"] + c * objs["y"] + T_dst_src[1, 3]
        out["yaw"] = np.angle(np.exp(1j * (objs["yaw"] + yaw)))
        out["vx"] = c * objs["vx"] - s * objs["vy"]
        out["vy"] = s * objs["vx"] + c * objs["vy"]
        return out

    def bev_ground_truth(self, t: float, hits=None):
        """occupied, dynamic, visible [H, W] bool on the grid in base_link at time t.

        A cell is occupied when its centre lies in an obstacle footprint grown by half a cell
        (thin poles still mark their cell); obstacles are primitives that reach the body band
        [OCC_Z_LOW, OCC_Z_HIGH] above the ground. Visible: the LiDAR sweep's line of sight reaches
        the cell (no obstacle return nearer in that azimuth column).
        """
        g = self.grid
        res = g.resolution
        T_wb = self.T_world_base(t)
        T_bw = invert_transform(T_wb)
        occupied = np.zeros((g.nx, g.ny), dtype=bool)
        dynamic = np.zeros((g.nx, g.ny), dtype=bool)
        st, tr = self.world.static, self.world.traj
        ax, ay, ayaw, avx, avy, _ = tr.state(t)
        speed = np.hypot(avx, avy)
        # boxes: static + agents (not the ego)
        bx = np.concatenate([st.bx, ax[1:]])
        by = np.concatenate([st.by, ay[1:]])
        byaw = np.concatenate([st.byaw, ayaw[1:]])
        bl = np.concatenate([st.bl, tr.size[1:, 0]])
        bw = np.concatenate([st.bw, tr.size[1:, 1]])
        g0 = self.world.ground_z(st.bx, st.by) if self.world.ramp is not None else 0.0  # band above the ground
        band = np.concatenate([(st.bz1 - g0 > W.OCC_Z_LOW) & (st.bz0 - g0 < W.OCC_Z_HIGH), np.ones(len(ax) - 1, bool)])
        moving = np.concatenate([np.zeros(len(st.bx), bool), speed[1:] > DYNAMIC_SPEED])
        c, s = T_bw[0, 0], T_bw[1, 0]
        px = c * bx - s * by + T_bw[0, 3]
        py = s * bx + c * by + T_bw[1, 3]
        pyaw = byaw + math.atan2(s, c)
        rad = 0.5 * np.hypot(bl, bw) + res
        near = band & (px + rad > g.x_min) & (px - rad < -g.x_min) & (py + rad > g.y_min) & (py - rad < -g.y_min)
        for k in np.nonzero(near)[0]:
            i0, i1, j0, j1 = self._window(px[k], py[k], rad[k])
            if i1 <= i0 or j1 <= j0:
                continue
            X = self._gx[i0:i1, None] - px[k]
            Y = self._gy[None, j0:j1] - py[k]
            cy_, sy_ = math.cos(pyaw[k]), math.sin(pyaw[k])
            inside = (np.abs(cy_ * X + sy_ * Y) <= bl[k] / 2 + res / 2) & (np.abs(-sy_ * X + cy_ * Y) <= bw[k] / 2 + res / 2)
            occupied[i0:i1, j0:j1] |= inside
            if moving[k]:
                dynamic[i0:i1, j0:j1] |= inside
        gc = self.world.ground_z(st.cx, st.cy) if self.world.ramp is not None else 0.0
        cband = (st.cz1 - gc > W.OCC_Z_LOW) & (st.cz0 - gc < W.OCC_Z_HIGH)
        qx = c * st.cx - s * st.cy + T_bw[0, 3]
        qy = s * st.cx + c * st.cy + T_bw[1, 3]
        for k in np.nonzero(cband & (np.abs(qx) < -g.x_min + 3) & (np.abs(qy) < -g.y_min + 3))[0]:
            i0, i1, j0, j1 = self._window(qx[k], qy[k], st.cr[k] + res)
            if i1 <= i0 or j1 <= j0:
                continue
            d2 = (self._gx[i0:i1, None] - qx[k]) ** 2 + (self._gy[None, j0:j1] - qy[k]) ** 2
            occupied[i0:i1, j0:j1] |= d2 <= (st.cr[k] + res / 2) ** 2
        visible = self._visibility(hits, T_bw) if hits is not None else np.ones_like(occupied)
        return occupied, dynamic, visible

    def _window(self, x, y, r):
        g = self.grid
        i0 = max(0, int((x - r - g.x_min) / g.resolution))
        i1 = min(g.nx, int((x + r - g.x_min) / g.resolution) + 1)
        j0 = max(0, int((y - r - g.y_min) / g.resolution))
        j1 = min(g.ny, int((y + r - g.y_min) / g.resolution) + 1)
        return i0, i1, j0, j1

    def _visibility(self, hits, T_bw) -> np.ndarray:
        """Cells the LiDAR sweep observed: some beam of the cell's azimuth column passed through the
        cell below VISIBILITY_BAND metres (so an obstacle that tall standing there would have been
        hit), or a return landed in the cell. Low obstacles (barriers, kerbs) hide only what is
        below the rays passing over them; motion during the sweep is neglected here."""
        lid = self.lidar
        n_az, n_b = lid.cfg.azimuth_steps, lid.cfg.beams
        res = self.grid.resolution
        h = float(lid.T_base_sensor[2, 3])
        rng_ = hits.range.reshape(n_az, n_b)
        # beam directions in base_link per column (a pitched or rolled mount tilts them unevenly)
        dirs_b = lid.dirs @ lid.T_base_sensor[:3, :3].T  # [n_az, n_b, 3]
        dxy = np.hypot(dirs_b[..., 0], dirs_b[..., 1])  # horizontal part of each beam
        tan_el = dirs_b[..., 2] / np.maximum(dxy, 1e-9)
        # horizontal interval [lo, hi] of each beam inside the band z in [0, VISIBILITY_BAND]
        with np.errstate(divide="ignore", invalid="ignore"):
            if h <= VISIBILITY_BAND:
                lo = np.zeros((n_az, n_b))
                r_out = np.where(tan_el > 0, (VISIBILITY_BAND - h) / tan_el, np.inf)
            else:
                lo = np.where(tan_el < 0, (h - VISIBILITY_BAND) / -tan_el, np.inf)
                r_out = np.full((n_az, n_b), np.inf)
        reach = np.where(np.isfinite(rng_), rng_ * dxy, lid.cfg.max_range)  # [n_az, n_b]
        hi = np.minimum(reach, r_out)
        T_lb = invert_transform(lid.T_base_sensor)
        X, Y = np.meshgrid(self._gx, self._gy, indexing="ij")
        lx = T_lb[0, 0] * X + T_lb[0, 1] * Y + T_lb[0, 3]
        ly = T_lb[1, 0] * X + T_lb[1, 1] * Y + T_lb[1, 3]
        r = np.hypot(lx, ly)[..., None]  # [H, W, 1]
        col = np.round((np.pi - np.arctan2(ly, lx)) / (2 * np.pi) * n_az).astype(np.int64) % n_az
        margin = res * 0.71
        used = np.isfinite(lo).any(axis=0)  # beams that ever get below the band top
        visible = ((lo[:, used][col] <= r + margin) & (r - margin <= hi[:, used][col])).any(axis=-1)
        # cells holding a return (walls hit above the band, object tops) were observed too
        finite = np.isfinite(hits.range)
        if finite.any():
            d = lid.dirs.reshape(-1, 3)[finite] * hits.range[finite, None]
            Ts = lid.T_base_sensor
            bx = Ts[0, 0] * d[:, 0] + Ts[0, 1] * d[:, 1] + Ts[0, 3]
            by = Ts[1, 0] * d[:, 0] + Ts[1, 1] * d[:, 1] + Ts[1, 3]
            if Ts[0, 2] != 0 or Ts[1, 2] != 0:  # tilted mount: the vertical part moves points sideways
                bx, by = bx + Ts[0, 2] * d[:, 2], by + Ts[1, 2] * d[:, 2]
            i = np.floor((bx - self.grid.x_min) / res).astype(np.int64)
            j = np.floor((by - self.grid.y_min) / res).astype(np.int64)
            ok = (i >= 0) & (i < self.grid.nx) & (j >= 0) & (j < self.grid.ny)
            visible[i[ok], j[ok]] = True
        del T_bw
        return visible

    # ------------------------------------------------------------------ frames
    def events(self) -> list[dict]:
        """Every configured adversity with its absolute time window (the /ground_truth/events payload)."""
        out = []
        for i, a in enumerate(self.config.adversities):
            d = a.model_dump(mode="json")
            d.update(index=i, start_ns=self.ns(a.start_s), end_ns=self.ns(a.end_s), end_s=a.end_s)
            out.append({k: v for k, v in d.items() if k in _EVENT_KEYS[a.type] | _EVENT_COMMON})
        return out

    def active_events(self, t: float) -> list[dict]:
        period = 1.0 / self.config.lidar.rate_hz
        return [e for e in self.events()
                if e["start_s"] <= t < max(e["end_s"], e["start_s"] + period)]

    def lidar_frame(self, m: Measurement, with_others: bool = True) -> SimFrame:
        cloud, mat, obj, hits = self.lidar_scan(m)
        t = m.t_s
        T_ob = self.T_odom_base(t)
        T_wb = self.T_world_base(t)
        occ, dyn, vis = self.bev_ground_truth(t, hits)
        ids, counts = np.unique(obj[obj >= 0], return_counts=True)
        objs_w = self.objects_at(t, dict(zip(ids.tolist(), counts.tolist(), strict=True)))
        objs_b = self.transform_objects(objs_w, invert_transform(T_wb))
        objs_o = self.transform_objects(objs_b, T_ob)
        radar = camera = None
        if with_others:
            rm = self.latest("radar", m.stamp_ns)
            cm = self.latest("camera", m.stamp_ns)
            radar = self.radar_scan(rm) if rm else None
            camera = self.camera_frame(cm) if cm else None
        return SimFrame(
            stamp_ns=m.stamp_ns, t_s=t, lidar=cloud, lidar_material=mat, lidar_object=obj, radar=radar,
            camera=camera, T_odom_base=T_ob, T_map_odom=self.T_map_odom(t), T_world_base=T_wb,
            T_base_sensor={k: v.copy() for k, v in self.T_base_sensor.items()}, occupied=occ, dynamic=dyn,
            visible=vis, objects_odom=objs_o, objects_base=objs_b, events=self.active_events(t),
        )

    def frames(self, with_others: bool = True):
        """Yield one SimFrame per delivered LiDAR scan, in stamp order."""
        for k in range(self.count("lidar")):
            m = self.measurement("lidar", k)
            if m is not None:
                yield self.lidar_frame(m, with_others)


_EVENT_COMMON = {"type", "index", "start_s", "end_s", "start_ns", "end_ns", "duration_s"}
_EVENT_KEYS = {
    "dropout": {"sensors"}, "time_gap": set(), "localization_jump": {"offset", "frame"},
    "nan_points": {"sensors", "fraction"}, "stamp_jitter": {"sensors", "jitter_s"}, "out_of_order": {"sensors"},
    "clutter": {"sensors", "rate"}, "zone_change": {"zone"},
    "weather": {"sensors", "weather", "visibility_m", "rate", "ramp_s"},
}
