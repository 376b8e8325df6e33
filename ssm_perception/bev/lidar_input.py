"""Sensor-agnostic LiDAR input: one place, before the BEV encoder, where a real sensor's cloud is
brought to what the model was trained on, and where the mounting is checked (ROS-free).

Per cloud (``LidarInput.__call__``, called from ``PerceptionPipeline.process``):
  - fields: intensity optional (absent or ``ignore`` mode: filled with the training median, so the
    intensity channel looks like a typical scene rather than "all black"); the per-point time field
    is found under its common names (t, time, time_offset, timestamp, offset_time, offset_ns) and
    converted to seconds relative to the stamp (integers are nanoseconds; absolute epoch times are
    made relative); ring optional. Output: structured x, y, z, intensity, t (if usable), ring (if any).
  - intensity scale: the simulator the model was trained on gives 0..255 (p95 ~ 80, median ~ 21,
    measured on the urban/highway/parking presets, seeds 0-1, 3 scans each). ``auto`` matches the
    95th percentile of the first ``auto_scans`` scans to the training one and logs the factor once
    (a WARN when it lies outside [0.5, 2], i.e. the sensor is not on a 0..255-like scale). The
    factor is applied even inside that band: a sensor's output then does not depend on its scale
    (x 255, / 255 give the same channel), and training, which ran through this step, saw 95th
    percentiles across the band. ``fixed`` uses the configured factor.
  - ego footprint: returns inside the configured box (base_link) are dropped (roof, mirrors, hood).
  - mounting checks (diagnostics only; the cloud is never altered by them): the ground plane fitted
    in base_link gives its normal (vs +z) and its height at the base_link origin (base_link sits on
    the ground, REP-103 / Autoware, and every height in the encoder is relative to it); scan-to-scan
    registration in base_link against the odom motion gives the heading error of the mount (a LiDAR
    whose frame has y forward shows up as ~90 deg). Messages name the transform base_link <- <lidar>.

The mounting height is never assumed anywhere: it comes from T_base_lidar (TF); these checks only
say when that transform disagrees with what the scans show.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import (
    cKDTree,  # imported here: a lazy import costs ~1 s inside the first frame
)

from ssm_perception.config import LidarInputConfig

log = logging.getLogger(__name__)

# Training intensity distribution (simulator, 0..255; see module docstring for how it was measured).
TRAIN_INTENSITY_P95 = 80.0
TRAIN_INTENSITY_MEDIAN = 21.0
TRAIN_INTENSITY_MAX = 255.0
_ON_SCALE = (0.5, 2.0)  # auto factors in this range: the sensor is on the training scale already (OK, not WARN)
TIME_FIELDS = ("t", "time", "time_offset", "timestamp", "offset_time", "offset_ns")
RING_FIELDS = ("ring", "laser_number", "channel")
OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
_MOUNT_FITS = 5  # ground fits whose median decides the tilt / height check
_HEADING_PAIRS = 3  # registered scan pairs whose median decides the heading check


@dataclass
class SensorCheck:
    level: int  # OK / WARN / ERROR
    message: str


def _structured(points) -> np.ndarray:
    arr = np.asarray(points)
    if arr.dtype.names is not None:
        return arr.reshape(-1)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"point array must be structured or [N, >=3], got shape {arr.shape}")
    names = ("x", "y", "z", "intensity", "t")[: min(arr.shape[1], 5)]
    out = np.zeros(arr.shape[0], dtype=[(n, "f4") for n in names])
    for k, n in enumerate(names):
        out[n] = arr[:, k]
    return out


def relative_times(values: np.ndarray, stamp_ns: int) -> tuple[np.ndarray | None, str]:
    """Per-point times as float32 seconds relative to the stamp, and how they were read.

    Integers are nanoseconds (Ouster t, Livox offset_time, Argoverse offset_ns), relative or, when
    larger than 1e15, absolute; floats are seconds, relative or, when larger than 1e6, absolute
    (Hesai timestamp; needs float64). None when no reading gives offsets within +-0.5 s."""
    v = np.asarray(values)
    if v.size == 0:
        return np.zeros(0, np.float32), "empty"
    if v.dtype.kind in "iu":
        vi = v.astype(np.int64)
        if np.abs(vi).max() > 10**15:
            t, how = (vi - int(stamp_ns)) * 1e-9, "absolute nanoseconds"
        else:
            t, how = vi * 1e-9, "nanoseconds after the stamp"
    else:
        vf = v if v.dtype == np.float32 else v.astype(np.float64)
        lo, hi = vf.min(), vf.max()  # one pass each; NaN/inf anywhere make them non-finite: slow path
        finite = vf if np.isfinite(lo) and np.isfinite(hi) else vf[np.isfinite(vf)]
        if finite.size and np.abs(finite).max() > 1e6:
            if v.dtype.itemsize < 8:
                return None, "absolute seconds in float32 (too coarse to use)"
            t, how = vf - stamp_ns * 1e-9, "absolute seconds"
        else:
            t, how = vf, "seconds after the stamp"
    lo, hi = t.min(), t.max()
    finite = t if np.isfinite(lo) and np.isfinite(hi) else t[np.isfinite(t)]
    if finite.size and (finite.min() < -0.5 or finite.max() > 0.5):
        return None, f"{how} spanning {finite.min():.3f}..{finite.max():.3f} s around the stamp (not a sweep)"
    return t.astype(np.float32, copy=False), how


class LidarInput:
    """Stateful per-sensor normaliser and checker (one per LiDAR stream; ``checks`` is its report)."""

    def __init__(self, config: LidarInputConfig | None = None):
        self.cfg = config or LidarInputConfig()
        self.checks: dict[str, SensorCheck] = {}
        self.scale: float | None = self.cfg.intensity_scale if self.cfg.intensity_mode == "fixed" else None
        self._p95: list[float] = []
        self._frames = 0
        self._fits: list[tuple[np.ndarray, float]] = []  # (unit normal in base_link, ground z at origin)
        self._pairs: list[float] = []  # heading error [deg] per registered pair
        self._ref: tuple[np.ndarray, np.ndarray] | None = None  # (xy [M, 2] in base_link, T_odom_base)
        self._logged: set[str] = set()
        self.dropped_ego = 0
        if self.cfg.intensity_mode == "fixed":
            self.checks["intensity"] = SensorCheck(OK, f"intensity x {self.scale:g} (configured)")

    # ------------------------------------------------------------------ per frame
    def __call__(self, points, T_base_lidar, T_odom_base=None, stamp_ns: int = 0,
                 frame_id: str = "lidar") -> np.ndarray:
        """The cloud as the encoder expects it (LiDAR frame): fields normalised, self-returns dropped."""
        src = _structured(points)
        names = src.dtype.names
        self._frames += 1
        tfield = next((f for f in TIME_FIELDS if f in names), None)
        rfield = next((f for f in RING_FIELDS if f in names), None)
        t = None
        if tfield is not None:
            t, how = relative_times(src[tfield], stamp_ns)
            self._note("time", OK if t is not None else WARN,
                       f"per-point time from field {tfield!r} read as {how}" + ("" if t is not None else
                                                                                 "; ignored (no deskew)"))
        T = np.asarray(T_base_lidar, dtype=np.float64)
        xs, ys, zs = (np.asarray(src[c], dtype=np.float32) for c in ("x", "y", "z"))
        rows = None  # None: all rows kept
        if self.cfg.ego_footprint:  # the box test per coordinate in float32 (no [N, 3] temporaries)
            c = self.cfg
            R, tr = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
            bounds = ((c.ego_x_min, c.ego_x_max), (c.ego_y_min, c.ego_y_max), (c.ego_z_min, c.ego_z_max))
            # Only returns whose LiDAR-frame x lies within the box's extent along that axis (the
            # transformed box's bounding interval, 1 cm wider than float32 rounding could ever need)
            # can be inside: the exact test below runs on those few, with the same float32 arithmetic.
            corners = np.array(np.meshgrid(*bounds, indexing="ij"), dtype=np.float64).reshape(3, -1)
            x_lidar = (T[:3, :3].T @ (corners - T[:3, 3:4]))[0]
            near = np.flatnonzero((xs >= x_lidar.min() - 0.01) & (xs <= x_lidar.max() + 0.01))
            inside = np.zeros(len(xs), dtype=bool)
            sub = None
            # Drivers mark missing returns as NaN/inf: those compare False here (kept, dropped by
            # the encoder's finite test), so numpy's inf*0 warning is noise.
            with np.errstate(invalid="ignore"):
                px, py, pz = xs[near], ys[near], zs[near]
                for k, (lo, hi) in enumerate(bounds):
                    v = R[k, 0] * px + R[k, 1] * py + R[k, 2] * pz + tr[k]
                    m = (v >= lo) & (v <= hi)
                    sub = m if sub is None else sub & m
            inside[near] = sub
            n_in = int(np.count_nonzero(inside))
            self.dropped_ego = n_in
            if n_in:
                share = n_in / max(1, len(src))
                self._note("ego_footprint", WARN if share > 0.2 else OK,
                           f"{n_in} returns ({100 * share:.1f} %) inside the ego box dropped in the last frame"
                           + (" (more than 20 %: is the lidar_input.ego_* box larger than the vehicle?)"
                              if share > 0.2 else ""), log_once=False)
                rows = np.flatnonzero(~inside)

        def col(a):
            return a if rows is None else a[rows]

        dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")]
        dtype += [("t", "f4")] if t is not None else []
        dtype += [("ring", "u2")] if rfield is not None else []
        n = len(src) if rows is None else len(rows)
        has_intensity = "intensity" in names
        if rows is None and src.dtype == np.dtype(dtype) and has_intensity and rfield == "ring":
            # The cloud already has the output layout (our own decoder's, the simulator's): one copy,
            # then only the values that can change (times read relative, non-finite intensities).
            out = np.empty_like(src)
            if src.flags.c_contiguous:
                out.view(np.uint8)[:] = src.view(np.uint8)  # a byte copy (a record copy is 20x slower)
            else:
                out[:] = src
            if t is not None and not np.may_share_memory(t, src):
                out["t"] = t  # times were converted (nanoseconds, absolute)
            if not np.isfinite(out["intensity"]).all():
                np.nan_to_num(out["intensity"], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            return self._finish(out, has_intensity, T, T_odom_base, frame_id)
        out = np.empty(n, dtype=dtype)
        out["x"], out["y"], out["z"] = col(xs), col(ys), col(zs)
        if t is not None:
            out["t"] = col(t)
        if rfield is not None:
            ring = col(src[rfield])
            # u8/u16 rings (the usual) fit as they are; anything else is cleaned and clipped
            out["ring"] = ring if ring.dtype.kind == "u" and ring.dtype.itemsize <= 2 else \
                np.clip(np.nan_to_num(ring.astype(np.float64)), 0, 65535)
        if has_intensity:
            out["intensity"] = np.nan_to_num(col(src["intensity"]).astype(np.float32), nan=0.0, posinf=0.0,
                                             neginf=0.0)
        return self._finish(out, has_intensity, T, T_odom_base, frame_id)

    def _finish(self, out: np.ndarray, has_intensity: bool, T: np.ndarray, T_odom_base, frame_id: str) -> np.ndarray:
        self._intensity(out, has_intensity)
        if self.cfg.mount_check and (len(self._fits) < _MOUNT_FITS or len(self._pairs) < _HEADING_PAIRS):
            xyz = np.stack([out["x"], out["y"], out["z"]], 1).astype(np.float64) @ T[:3, :3].T + T[:3, 3]
            self._mount(xyz[np.isfinite(xyz).all(1)], T, T_odom_base, frame_id)
        return out

    # ------------------------------------------------------------------ intensity
    def _intensity(self, out, has_intensity: bool) -> None:
        mode = self.cfg.intensity_mode
        if not has_intensity or mode == "ignore":
            out["intensity"] = TRAIN_INTENSITY_MEDIAN
            why = "the cloud has no intensity field" if not has_intensity else "intensity_mode: ignore"
            self._note("intensity", OK if mode == "ignore" else WARN,
                       f"{why}: intensity set to the training median {TRAIN_INTENSITY_MEDIAN:g}")
            return
        raw = out["intensity"]
        if mode == "auto" and len(self._p95) < self.cfg.auto_scans:
            vals = raw[np.isfinite(out["x"]) & np.isfinite(out["y"]) & np.isfinite(out["z"])]
            if vals.size:
                self._p95.append(float(np.percentile(vals, 95)))
            p95 = float(np.median(self._p95)) if self._p95 else 0.0
            self.scale = TRAIN_INTENSITY_P95 / p95 if p95 > 0 else None
            on_scale = self.scale is not None and _ON_SCALE[0] <= self.scale <= _ON_SCALE[1]
            if len(self._p95) < self.cfg.auto_scans:
                self._note("intensity", OK if on_scale else WARN, f"intensity scale being detected "
                           f"({len(self._p95)} of {self.cfg.auto_scans} scans): 95th percentile {p95:.4g} vs "
                           f"{TRAIN_INTENSITY_P95:g} in training -> x {self.scale if self.scale else 0:.4g} so far",
                           log_once=False)
            else:
                if self.scale is None:
                    self._note("intensity", WARN, f"intensity is 0 in all of the first {len(self._p95)} scans: "
                               f"treated as absent (training median {TRAIN_INTENSITY_MEDIAN:g})")
                else:
                    level = OK if on_scale else WARN
                    self._note("intensity", level, f"intensity scale detected from {len(self._p95)} scans: 95th "
                               f"percentile {p95:.4g} vs {TRAIN_INTENSITY_P95:g} in training -> x {self.scale:.4g} "
                               f"(to pin it: lidar_input.intensity_mode fixed, intensity_scale {self.scale:.4g})")
        if self.scale is None:
            out["intensity"] = TRAIN_INTENSITY_MEDIAN
        else:
            out["intensity"] = np.clip(raw * np.float32(self.scale), 0.0, TRAIN_INTENSITY_MAX)

    # ------------------------------------------------------------------ mounting
    def _mount(self, xyz: np.ndarray, T: np.ndarray, T_odom_base, frame_id: str) -> None:
        """Checked on the first scans (ground: 5 fits; heading: 3 scan pairs 1-6 m apart), then left alone."""
        tf_name = f"base_link <- {frame_id}"
        if len(self._fits) < _MOUNT_FITS:
            fit = fit_ground(xyz, T[:3, 3], seed=len(self._fits))
            if fit is not None:
                self._fits.append(fit)
                if len(self._fits) == _MOUNT_FITS:
                    self._decide_ground(T, tf_name)
        if T_odom_base is not None and len(self._pairs) < _HEADING_PAIRS:
            self._heading(xyz, np.asarray(T_odom_base, dtype=np.float64), tf_name)

    def _decide_ground(self, T: np.ndarray, tf_name: str) -> None:
        n = np.median(np.stack([f[0] for f in self._fits]), 0)
        n /= np.linalg.norm(n)
        z0 = float(np.median([f[1] for f in self._fits]))
        tilt = math.degrees(math.acos(min(1.0, abs(float(n[2])))))
        about_y = math.degrees(math.atan2(n[0], n[2]))
        about_x = math.degrees(math.atan2(-n[1], n[2]))
        problems = []
        if tilt > self.cfg.mount_max_tilt_deg:
            problems.append(f"the ground normal in base_link is tilted {tilt:.1f} deg from +z ({about_y:+.1f} deg "
                            f"about y, {about_x:+.1f} deg about x): check the rotation of the transform {tf_name}")
        if abs(z0) > self.cfg.mount_max_ground_offset_m:
            problems.append(f"the ground is at z = {z0:+.2f} m in base_link, expected ~0 (base_link on the "
                            f"ground): the LiDAR height in {tf_name} is z = {T[2, 3]:.2f} m; the ground says "
                            f"{T[2, 3] - z0:.2f} m")
        msg = "; ".join(problems) or (f"ground normal {tilt:.1f} deg from +z, ground at z = {z0:+.2f} m in "
                                      f"base_link: consistent with {tf_name}")
        self._note("mounting", WARN if problems else OK, "LiDAR mounting: " + msg)

    def _heading(self, xyz: np.ndarray, T_odom_base: np.ndarray, tf_name: str) -> None:
        if not np.all(np.isfinite(T_odom_base)):
            return
        if self._fits:  # height above the fitted ground (a tilted mount must not turn ground rings into walls)
            n = np.median(np.stack([f[0] for f in self._fits]), 0)
            n /= np.linalg.norm(n)
            h = (xyz - np.array([0.0, 0.0, float(np.median([f[1] for f in self._fits]))])) @ n
        else:
            h = xyz[:, 2]
        r = np.hypot(xyz[:, 0], xyz[:, 1])
        sel = (h > 0.4) & (h < 2.5) & (r > 2.0) & (r < 40.0)
        xy = xyz[sel, :2]
        if len(xy) < 200:
            return
        if len(xy) > 1000:
            xy = xy[np.random.default_rng(len(self._pairs)).choice(len(xy), 1000, replace=False)]
        if self._ref is None:
            self._ref = (xy, T_odom_base)
            return
        ref_xy, T_ref = self._ref
        M = np.linalg.inv(T_ref) @ T_odom_base  # current base in the reference base
        d = M[:2, 3]
        dyaw = math.atan2(M[1, 0], M[0, 0])
        dist = float(np.hypot(*d))
        if dist < 1.0:
            return
        if dist > 6.0 or abs(dyaw) > math.radians(3.0):
            self._ref = (xy, T_odom_base)  # too far or turning: start a new pair here
            return
        est = register_2d(ref_xy, xy, d)
        self._ref = (xy, T_odom_base)
        if est is None:
            return
        t_icp = est
        err = math.degrees(math.atan2(d[0] * t_icp[1] - d[1] * t_icp[0], d @ t_icp))
        self._pairs.append(err)
        if len(self._pairs) >= _HEADING_PAIRS:
            e = float(np.median(self._pairs))
            if abs(e) > self.cfg.mount_max_heading_deg:
                hint = " (a LiDAR frame with y forward?)" if 60 < abs(e) < 120 else ""
                self._note("heading", WARN, f"LiDAR heading: the scans move {e:+.0f} deg off the odom motion in "
                           f"base_link: the yaw of the transform {tf_name} looks wrong by about {e:+.0f} deg{hint}")
            else:
                self._note("heading", OK, f"LiDAR heading consistent with odometry ({e:+.1f} deg over "
                           f"{len(self._pairs)} scan pairs)")

    def _note(self, key: str, level: int, message: str, log_once: bool = True) -> None:
        self.checks[key] = SensorCheck(level, message)
        if log_once and (key, message) not in self._logged:
            self._logged.add((key, message))
            (log.warning if level >= WARN else log.info)(message)

    def summary(self) -> dict[str, tuple[int, str]]:
        return {k: (c.level, c.message) for k, c in self.checks.items()}


def fit_ground(xyz: np.ndarray, origin: np.ndarray, seed: int = 0, iterations: int = 256,
               threshold: float = 0.1) -> tuple[np.ndarray, float] | None:
    """Largest plane below the sensor within 30 m with few returns below it, any tilt up to 60 deg
    from +z of base_link.

    Written here instead of bev.ground.fit_ground_plane because that one rejects tilts beyond 15
    deg and looks only near base_link z = 0: exactly the mountings this check must catch.
    Returns (unit normal pointing to the sensor side, ground z at the base_link origin) or None."""
    rel = xyz - origin
    r = np.linalg.norm(rel, axis=1)
    cand = xyz[(r > 1.5) & (r < 30.0)]
    if len(cand) < 300:
        return None
    rng = np.random.default_rng(seed)
    if len(cand) > 3000:
        cand = cand[rng.choice(len(cand), 3000, replace=False)]
    # Hypotheses from the lowest quarter (mostly ground even in dense city scans, where the ground
    # is only ~10 % of all returns), scored on all candidates.
    low = cand[cand[:, 2] <= np.percentile(cand[:, 2], 25)]
    tri = low[rng.integers(0, len(low), (iterations, 3))]  # [K, 3, 3]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = n / np.maximum(norm, 1e-12)
    side = ((origin - tri[:, 0]) * n).sum(1)
    n = np.where(side[:, None] < 0, -n, n)
    h_sensor = np.abs(side)
    ok = (norm[:, 0] > 1e-6) & (n[:, 2] > math.cos(math.radians(60))) & (h_sensor > 0.2) & (h_sensor < 5.0)
    if not ok.any():
        return None
    d = -(n * tri[:, 0]).sum(1)
    dist = cand @ n.T + d  # [M, K] signed, positive on the sensor's side
    score = (np.abs(dist) < threshold).sum(0)
    # The ground is the lowest large surface: a plane with many returns below it is a roof or a
    # bonnet (parked cars give such planes at ~1.4 m in city scans), not the ground.
    ok &= (dist < -0.3).mean(0) < 0.05
    score[~ok] = -1
    best = int(score.argmax())
    inl = cand[np.abs(cand @ n[best] + d[best]) < threshold]
    if len(inl) < max(100, 0.05 * len(cand)):  # real urban scans: the ground is ~10 % of returns within 30 m
        return None
    c = inl.mean(0)
    nn = np.linalg.svd(inl - c, full_matrices=False)[2][-1]
    if (origin - c) @ nn < 0:
        nn = -nn
    if nn[2] <= 1e-3:
        return None
    return nn, float(c @ nn / nn[2])


def register_2d(ref: np.ndarray, cur: np.ndarray, odom_t: np.ndarray, iterations: int = 10,
                max_dist: float = 1.5) -> np.ndarray | None:
    """Translation t of a 2D rigid fit R cur + t ~ ref (ICP, scipy KD-tree), tried from four starts
    (the odom translation rotated by 0/90/180/270 deg: a wrong mount yaw rotates the apparent motion);
    the start that converges with the most inliers wins. None when no start converges cleanly."""
    tree = cKDTree(ref)
    best = None
    for k in range(4):
        a = k * math.pi / 2
        R = np.eye(2)
        t = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ odom_t
        for it in range(iterations):
            moved = cur @ R.T + t
            gate = max_dist if it < iterations // 2 else max_dist / 3
            dist, idx = tree.query(moved, distance_upper_bound=gate)
            m = np.isfinite(dist)
            if m.sum() < 50:
                break
            p, q = cur[m], ref[idx[m]]
            pc, qc = p.mean(0), q.mean(0)
            u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
            R = (u @ vt).T
            if np.linalg.det(R) < 0:
                vt[-1] *= -1
                R = (u @ vt).T
            t = qc - R @ pc
        moved = cur @ R.T + t
        dist, _ = tree.query(moved, distance_upper_bound=0.3)
        inliers = float(np.isfinite(dist).mean())
        if best is None or inliers > best[0]:
            best = (inliers, t, R)
    if best is None or best[0] < 0.3:
        return None
    return best[1]
