"""Sensor models on top of the ray caster: spinning LiDAR (motion-distorted), front radar (sparse
detections with Doppler and RCS), pinhole RGB camera (coarse ray grid, upsampled)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import transforms3d.euler as te

from ssm_perception.io.pointcloud2 import LIDAR_DTYPE, RADAR_DTYPE
from ssm_perception.sim import world as W
from ssm_perception.sim.raycast import Scene, cast, is_ground_material

# Per material: LiDAR reflectivity (0..255 scale), radar RCS [dBsm], camera RGB.
_REFLECT = np.array([18, 35, 200, 60, 90, 35, 110, 30, 40, 80, 45], dtype=np.float64)
_RCS = np.array([-20, -20, -20, 18, 10, -5, 5, -8, -10, 12, 0], dtype=np.float64)
_COLOR = np.array([
    (72, 72, 78), (150, 146, 138), (235, 235, 228), (168, 120, 96), (40, 70, 140), (210, 120, 70),
    (120, 120, 132), (60, 118, 52), (175, 175, 170), (160, 160, 150), (200, 40, 40),
], dtype=np.float64)
_SKY_TOP, _SKY_HORIZON, _HAZE = np.array([70, 120, 200.0]), np.array([185, 205, 230.0]), np.array([190, 198, 210.0])
_SUN = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])


def mount_matrix(mount) -> np.ndarray:
    """T_base_sensor from a Mount (translation + roll/pitch/yaw, static)."""
    t = np.eye(4)
    t[:3, :3] = te.euler2mat(*mount.rpy, axes="sxyz")
    t[:3, 3] = mount.xyz
    return t


def sensor_rays_world(T_world_base_xyyaw, T_base_sensor, dirs_sensor):
    """Origins/dirs in world for poses (x [K], y [K], yaw [K]) of base_link (planar, z = 0), and
    ray directions in the sensor frame [K, M, 3] or [M, 3]. Returns origins [K, 3], dirs [K, M, 3]."""
    x, y, yaw = (np.atleast_1d(v) for v in T_world_base_xyyaw)
    c, s = np.cos(yaw), np.sin(yaw)
    rz = np.zeros((len(x), 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, -s, s, c, 1.0
    r_ws = rz @ T_base_sensor[:3, :3]  # [K, 3, 3]
    origins = np.einsum("kij,j->ki", rz, T_base_sensor[:3, 3]) + np.stack([x, y, np.zeros_like(x)], 1)
    d = dirs_sensor if dirs_sensor.ndim == 3 else np.broadcast_to(dirs_sensor, (len(x),) + dirs_sensor.shape)
    return origins, np.einsum("kij,kmj->kmi", r_ws, d)


# ------------------------------------------------------------------------------------ LiDAR
# Self-returns and weather clutter get their own material codes (after -2 clutter, -3 corrupted).
MAT_SELF, MAT_WEATHER = -4, -5
_RHO_MIN = float(_REFLECT.min())  # least reflective surface: still detected at max_range in clear air


def _body_hits(origin: np.ndarray, dirs: np.ndarray, body) -> np.ndarray:
    """Distance along each ray [N, 3] (base_link, from one origin outside the box) to the ego body
    box (x0, x1, y0, y1, z0, z1), inf where it misses."""
    lo, hi = np.asarray(body[0::2]), np.asarray(body[1::2])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
        a, b = (lo - origin) / d, (hi - origin) / d
    tmin = np.minimum(a, b).max(axis=1)
    tmax = np.maximum(a, b).min(axis=1)
    return np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)


class Lidar:
    def __init__(self, cfg, seed: int = 0):
        self.cfg = cfg
        self.T_base_sensor = mount_matrix(cfg.mount)
        n_az, n_b = cfg.azimuth_steps, cfg.beams
        self.period = 1.0 / cfg.rate_hz
        # clockwise spin starting behind the vehicle; column k is measured at t = k * period / n_az
        self.az = np.pi - 2 * np.pi * (np.arange(n_az) / n_az)
        self.col_t = np.arange(n_az) * (self.period / n_az)
        el = np.deg2rad(np.asarray(cfg.elevations(), dtype=np.float64))  # ascending
        ca, sa = np.cos(self.az)[:, None], np.sin(self.az)[:, None]
        self.dirs = np.stack([np.cos(el)[None, :] * ca, np.cos(el)[None, :] * sa,
                              np.broadcast_to(np.sin(el), (n_az, n_b))], -1)  # [n_az, n_b, 3]
        # ring id of each beam (beams are kept in ascending elevation for the ray caster)
        self.ring = np.arange(n_b) if cfg.ring_order == "bottom_up" else np.arange(n_b)[::-1].copy()
        self.reflect = _REFLECT
        if cfg.reflectivity_jitter > 0:  # this sensor's view of the materials, fixed per scenario seed
            f = np.random.default_rng([seed, 5]).lognormal(0.0, cfg.reflectivity_jitter, len(_REFLECT))
            self.reflect = np.clip(_REFLECT * f, 5.0, 255.0)
        self._lost_beams = self._column_mask()

    def _column_mask(self) -> np.ndarray:
        """[n_az, n_b] True where a return can never come: dead beams, blocked azimuth sectors."""
        cfg = self.cfg
        m = np.zeros((cfg.azimuth_steps, cfg.beams), dtype=bool)
        if cfg.dead_beams:
            m[:, np.isin(self.ring, cfg.dead_beams)] = True
        for a0, a1 in cfg.blocked_sectors_deg:
            rel = (np.rad2deg(self.az) - a0) % 360.0
            m[rel <= (a1 - a0) % 360.0, :] = True
        return m

    def scan(self, scene: Scene, ego_pose_at, t0: float, ground_material, rng, clutter_rate: float = 0.0,
             nan_fraction: float = 0.0, weather=None, rng_extra=None):
        """One sweep starting at t0 (seconds from scenario start).

        ego_pose_at(times [K]) -> (x, y, yaw) of base_link in the world at those times.
        weather: None or (kind, extinction [1/m], near-range returns per scan) in effect now.
        rng_extra: random stream of the sensor-model effects (beam failures, packet loss, weather),
        kept apart from ``rng`` so that scans without them draw exactly the original noise.
        Returns (cloud [N] LIDAR_DTYPE in the sensor frame at each point's own time, material [N],
        object id [N], clean hits [n_az, n_b] for visibility ground truth).
        """
        cfg = self.cfg
        n_b = cfg.beams
        origins, dirs = sensor_rays_world(ego_pose_at(t0 + self.col_t), self.T_base_sensor, self.dirs)
        o = np.repeat(origins, n_b, axis=0)
        d = dirs.reshape(-1, 3)
        dt = np.repeat(self.col_t, n_b)
        hits = cast(scene, o, d, cfg.max_range, dt, ground_material, beams=n_b)
        selfret = None
        if cfg.self_returns:  # the ego body stops the beam: roof / hood points, nothing behind them
            R, tr = self.T_base_sensor[:3, :3], self.T_base_sensor[:3, 3]
            t_body = _body_hits(tr, self.dirs.reshape(-1, 3) @ R.T, cfg.ego_body)
            selfret = t_body < hits.range
            if selfret.any():
                hits = dataclasses.replace(
                    hits, range=np.where(selfret, t_body, hits.range), material=np.where(selfret, -1, hits.material),
                    obj=np.where(selfret, -1, hits.obj), prim=np.where(selfret, -1, hits.prim),
                    normal=np.where(selfret[:, None], 0.0, hits.normal))
        rng_ = hits.range.copy()
        # rain-like clutter: drops intercept the beam close to the sensor (first return wins)
        clutter = np.zeros(len(rng_), dtype=bool)
        if clutter_rate > 0:
            k = rng.poisson(clutter_rate)
            idx = rng.choice(len(rng_), size=min(k, len(rng_)), replace=False)
            r_drop = cfg.min_range + rng.exponential(6.0, size=len(idx))
            closer = r_drop < rng_[idx]
            rng_[idx[closer]] = r_drop[closer]
            clutter[idx[closer]] = True
        wclutter = None
        alpha = 0.0
        if weather is not None:
            kind, alpha, w_rate = weather
            wclutter = np.zeros(len(rng_), dtype=bool)
            k = rng_extra.poisson(w_rate)
            if k:
                idx = rng_extra.choice(len(rng_), size=min(k, len(rng_)), replace=False)
                # fog: backscatter from the cloud a few metres out; rain/snow: drops and flakes nearby
                r_near = cfg.min_range + (rng_extra.gamma(2.0, 1.5, len(idx)) if kind == "fog"
                                          else rng_extra.exponential(4.0 if kind == "rain" else 7.0, len(idx)))
                closer = r_near < rng_[idx]
                rng_[idx[closer]] = r_near[closer]
                wclutter[idx[closer]] = True
        noisy = rng_ + rng.normal(0.0, cfg.range_noise, size=len(rng_))
        lost = rng.random(len(rng_)) < cfg.missing_prob
        if selfret is None:
            keep = np.isfinite(rng_) & (noisy >= cfg.min_range) & ~lost
        else:  # self-returns are reported down to self_min_range (drivers do not cut them off)
            body = selfret & ~clutter & (~wclutter if wclutter is not None else True)
            near_ok = np.where(body, noisy >= cfg.self_min_range, noisy >= cfg.min_range)
            keep = np.isfinite(rng_) & near_ok & ~lost
        keep &= noisy <= cfg.max_range
        keep &= self._model_losses(rng_, hits, clutter, wclutter, alpha, rng_extra)
        idx = np.nonzero(keep)[0]
        pts = self.dirs.reshape(-1, 3)[idx] * noisy[idx, None]
        mat = np.where(clutter[idx], -2, hits.material[idx])
        if selfret is not None:
            mat = np.where(selfret[idx] & ~clutter[idx], MAT_SELF, mat)
        if wclutter is not None:
            mat = np.where(wclutter[idx] & ~clutter[idx], MAT_WEATHER, mat)
        incidence = np.abs(np.einsum("ij,ij->i", hits.normal[idx], d[idx]))
        refl = self.reflect[np.maximum(mat, 0)]
        inten = refl * (0.3 + 0.7 * incidence) * (1.0 - 0.4 * noisy[idx] / cfg.max_range)
        inten = np.where(clutter[idx], rng.uniform(0, 4, len(idx)), inten + rng.normal(0, 2.0, len(idx)))
        cloud = np.empty(len(idx), dtype=LIDAR_DTYPE)
        cloud["x"], cloud["y"], cloud["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
        cloud["intensity"] = self._intensity(np.clip(inten, 0, 255), refl, incidence, noisy[idx], mat, alpha,
                                             rng_extra)
        cloud["t"] = dt[idx]
        cloud["ring"] = self.ring[idx % n_b]
        if nan_fraction > 0 and len(idx):
            bad = rng.random(len(idx)) < nan_fraction
            vals = np.where(rng.random(int(bad.sum())) < 0.5, np.nan, np.inf * rng.choice([-1.0, 1.0], int(bad.sum())))
            for c in ("x", "y", "z"):
                cloud[c][bad] = vals
            mat = mat.copy()
            mat[bad] = -3
        obj = np.where(mat >= 0, hits.obj[idx], -1)
        return cloud, mat.astype(np.int16), obj, hits

    def _model_losses(self, rng_, hits, clutter, wclutter, alpha, rng_extra) -> np.ndarray:
        """[N] False for returns the sensor model loses: dead beams, blocked sectors, weak beams,
        lost packets, and weather attenuation of far, dark surfaces."""
        cfg = self.cfg
        ok = ~self._lost_beams.reshape(-1)
        if not (cfg.weak_beams or cfg.packet_loss_prob > 0 or alpha > 0):
            return ok
        n_az, n_b = cfg.azimuth_steps, cfg.beams
        if cfg.weak_beams:
            weak = np.zeros((n_az, n_b), bool)
            weak[:, np.isin(self.ring, cfg.weak_beams)] = True
            ok &= ~(weak.reshape(-1) & (rng_extra.random(n_az * n_b) < cfg.weak_beam_missing))
        if cfg.packet_loss_prob > 0:
            n_pk = -(-n_az // cfg.packet_columns)
            lost_pk = rng_extra.random(n_pk) < cfg.packet_loss_prob
            ok &= ~np.repeat(lost_pk[np.arange(n_az) // cfg.packet_columns], n_b)
        if alpha > 0:
            # Two-way extinction against the link budget: a surface of reflectivity rho at range r
            # returns rho * exp(-2 alpha r) / r^2; the darkest surface is just seen at max_range in
            # clear air. A lognormal factor blurs the edge (speckle, beam-to-beam gain).
            surface = ~clutter & ~wclutter & np.isfinite(rng_) & (hits.material >= 0)
            r = np.maximum(rng_, 0.1)
            rho = self.reflect[np.maximum(hits.material, 0)]
            budget = rho / _RHO_MIN * np.exp(-2.0 * alpha * r) * (cfg.max_range / r) ** 2
            budget = budget * rng_extra.lognormal(0.0, 0.3, len(r))
            ok &= ~(surface & (budget < 1.0))
        return ok

    def _intensity(self, legacy, refl, incidence, r, mat, alpha, rng_extra):
        """Intensity field per the model; ``legacy`` is the original 'incidence' value on 0..255."""
        cfg = self.cfg
        model = cfg.intensity_model
        if model == "none":
            return np.zeros(len(legacy))
        if model == "incidence":
            v = legacy / 255.0
        elif model == "reflectivity":  # calibrated: range- and angle-independent, small gain noise
            v = refl / 255.0 * rng_extra.lognormal(0.0, 0.05, len(refl))
        else:  # signal: raw return strength, ~ rho cos(theta) / r^2 (1 at 5 m on a white wall)
            v = np.clip(refl / 255.0 * (0.2 + 0.8 * incidence) * (5.0 / np.maximum(r, 0.5)) ** 2, 0.0, 1.0)
        if alpha > 0:
            v = v * np.exp(-2.0 * alpha * r)
        spurious = mat < 0  # clutter, self-returns, weather: weak, diffuse
        if spurious.any() and model != "incidence":
            v = np.where(spurious, rng_extra.uniform(0.0, 0.05, len(v)), v)
        if model == "incidence" and cfg.intensity_max == 255.0 and cfg.intensity_gamma == 1.0 and alpha == 0:
            return legacy  # the original field, bit for bit
        return np.clip(v, 0.0, 1.0) ** cfg.intensity_gamma * cfg.intensity_max


# ------------------------------------------------------------------------------------ radar
class Radar:
    def __init__(self, cfg):
        self.cfg = cfg
        self.T_base_sensor = mount_matrix(cfg.mount)
        half = math.radians(cfg.fov_deg) / 2
        az = np.arange(-half, half + 1e-9, math.radians(cfg.azimuth_step_deg))
        el = np.deg2rad(np.asarray(cfg.elevations_deg))
        a, e = np.meshgrid(az, el, indexing="ij")
        self.dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)

    def scan(self, scene: Scene, ego_xyyaw, ego_v, ego_yaw_rate, rng, clutter_rate: float = 0.0,
             nan_fraction: float = 0.0):
        """Detections in the radar frame. radial_velocity = relative (not ego-compensated) range rate."""
        cfg = self.cfg
        origins, dirs = sensor_rays_world(ego_xyyaw, self.T_base_sensor, self.dirs)
        o, d = np.repeat(origins, len(self.dirs), axis=0), dirs[0]
        hits = cast(scene, o, d, cfg.max_range)
        solid = np.isfinite(hits.range) & ~is_ground_material(hits.material)
        # sensor velocity in the world: ego velocity + yaw rate x lever arm
        yaw = float(np.atleast_1d(ego_xyyaw[2])[0])
        lever = origins[0, :2] - np.array([float(np.atleast_1d(ego_xyyaw[0])[0]), float(np.atleast_1d(ego_xyyaw[1])[0])])
        v_s = np.array([ego_v * math.cos(yaw) - ego_yaw_rate * lever[1], ego_v * math.sin(yaw) + ego_yaw_rate * lever[0],
                        0.0])
        rows = []
        prims = np.unique(hits.prim[solid])
        for p in prims:
            rays = np.nonzero(solid & (hits.prim == p))[0]
            if rng.random() >= cfg.detect_prob:
                continue
            mat = int(hits.material[rays[0]])
            k = 1 if mat == W.PEDESTRIAN else min(cfg.max_detections_per_object, len(rays))
            chosen = rng.choice(rays, size=k, replace=False)
            for r in np.sort(chosen):
                rows.append((r, mat, p))
        n_det = len(rows)
        n_fa = int(rng.poisson(cfg.false_alarms_per_scan + clutter_rate))
        out = np.zeros(n_det + n_fa, dtype=RADAR_DTYPE)
        r_world = self.T_base_sensor[:3, :3]
        rz = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        r_ws = rz @ r_world  # world <- sensor
        if n_det:
            ray = np.array([r[0] for r in rows])
            mat = np.array([r[1] for r in rows])
            prim = np.array([r[2] for r in rows])
            rng_m = hits.range[ray] + rng.normal(0, cfg.range_noise, n_det)
            az = np.arctan2(self.dirs[ray, 1], self.dirs[ray, 0]) + np.deg2rad(
                rng.normal(0, cfg.azimuth_noise_deg, n_det))
            el = np.arcsin(np.clip(self.dirs[ray, 2], -1, 1))
            u = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
            xyz = u * rng_m[:, None]
            # target velocity: moving boxes carry their own velocity; everything else is static
            v_t = np.zeros((n_det, 3))
            box = prim < scene.n_boxes
            v_t[box, 0] = scene.bvx[prim[box]]
            v_t[box, 1] = scene.bvy[prim[box]]
            u_world = d[ray]
            vr = np.einsum("ij,ij->i", v_t - v_s[None, :], u_world) + rng.normal(0, cfg.velocity_noise, n_det)
            out["x"][:n_det], out["y"][:n_det], out["z"][:n_det] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
            out["radial_velocity"][:n_det] = vr
            out["rcs"][:n_det] = _RCS[mat] + rng.normal(0, 2.0, n_det)
        if n_fa:
            half = math.radians(cfg.fov_deg) / 2
            az = rng.uniform(-half, half, n_fa)
            rr = rng.uniform(3.0, cfg.max_range * 0.6, n_fa)
            u = np.stack([np.cos(az), np.sin(az), np.zeros(n_fa)], 1)
            u_world = u @ r_ws.T
            out["x"][n_det:], out["y"][n_det:] = rr * u[:, 0], rr * u[:, 1]
            out["z"][n_det:] = rng.uniform(-0.3, 1.0, n_fa)
            out["radial_velocity"][n_det:] = -(u_world @ v_s) + rng.normal(0, 0.5, n_fa)
            out["rcs"][n_det:] = rng.uniform(-15, -5, n_fa)
        if nan_fraction > 0 and len(out):
            bad = rng.random(len(out)) < nan_fraction
            out["x"][bad] = np.nan
            out["radial_velocity"][bad] = np.inf
        return out


# ------------------------------------------------------------------------------------ camera
class Camera:
    def __init__(self, cfg):
        self.cfg = cfg
        self.T_base_sensor = mount_matrix(cfg.mount)
        w, h, s = cfg.width, cfg.height, cfg.render_scale
        fx = (w / 2.0) / math.tan(math.radians(cfg.hfov_deg) / 2)
        self.K = np.array([[fx, 0, (w - 1) / 2.0], [0, fx, (h - 1) / 2.0], [0, 0, 1.0]])
        self.D = np.zeros(5)
        self.P = np.hstack([self.K, np.zeros((3, 1))])
        u = np.arange(w // s) * s + (s - 1) / 2.0
        v = np.arange(h // s) * s + (s - 1) / 2.0
        uu, vv = np.meshgrid(u, v)  # [h/s, w/s]
        d = np.stack([(uu - self.K[0, 2]) / fx, (vv - self.K[1, 2]) / fx, np.ones_like(uu)], -1)
        self.dirs = (d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3)  # optical frame
        self.coarse_shape = (h // s, w // s)

    def render(self, scene: Scene, ego_xyyaw, ground_material, max_range: float = 150.0,
               extinction: float = 0.0) -> np.ndarray:
        """[H, W, 3] uint8 RGB: surfaces shaded by material, sun angle and distance haze; fog or rain
        (``extinction`` [1/m] > 0) thickens the haze and greys the sky."""
        origins, dirs = sensor_rays_world(ego_xyyaw, self.T_base_sensor, self.dirs)
        d = dirs[0]
        hits = cast(scene, np.repeat(origins, len(d), axis=0), d, max_range, None, ground_material)
        hit = np.isfinite(hits.range)
        mat = np.maximum(hits.material, 0)
        base = _COLOR[mat].copy()
        # vary vehicle and building colours per object so instances are distinguishable
        tint = ((hits.prim * 2654435761) % 97)[:, None] / 97.0
        varied = (hits.material == W.VEHICLE) | (hits.material == W.BUILDING)
        base = np.where(varied[:, None], base * (0.6 + 0.8 * tint) * np.array([1.0, 0.9, 0.8]) + 20 * tint, base)
        light = 0.35 + 0.65 * np.clip(hits.normal @ _SUN, 0, 1)
        if extinction > 0:
            haze = 1.0 - np.exp(-np.where(hit, hits.range, 0.0) * (1.0 / 120.0 + extinction))
        else:
            haze = 1.0 - np.exp(-np.where(hit, hits.range, 0.0) / 120.0)
        shaded = base * light[:, None] * (1 - haze[:, None]) + _HAZE * haze[:, None]
        up = np.clip(d[:, 2], 0, 1)[:, None]
        sky = _SKY_HORIZON * (1 - up) + _SKY_TOP * up
        if extinction > 0:
            f = 1.0 - math.exp(-extinction * 300.0)
            sky = sky * (1 - f) + _HAZE * f
        rgb = np.where(hit[:, None], shaded, sky).reshape(*self.coarse_shape, 3)
        s = self.cfg.render_scale
        img = np.repeat(np.repeat(np.clip(rgb, 0, 255).astype(np.uint8), s, axis=0), s, axis=1)
        return img
