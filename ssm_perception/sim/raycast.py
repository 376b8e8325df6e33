"""Vectorized ray casting against the 2.5D world: flat ground (z = 0), extruded oriented boxes
(optionally moving at constant velocity / yaw rate during a sweep) and vertical cylinders.

Written by hand because the scene is analytic (a few hundred primitives, no meshes) and every
sensor needs per-ray times: general ray tracers (open3d RaycastingScene) would need a new mesh per
ray time. Work is kept linear in the number of (ray, primitive) pairs that survive culling by
azimuth sector and by where each ray already hits the ground; there is no Python loop over rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssm_perception.sim.world import GROUND, MARKING, SIDEWALK


@dataclass
class Scene:
    """Primitives in the world frame at t_ref; boxes may move (velocity, yaw rate) for t != t_ref."""

    bx: np.ndarray  # [Nb]
    by: np.ndarray
    byaw: np.ndarray
    bl: np.ndarray
    bw: np.ndarray
    bz0: np.ndarray
    bz1: np.ndarray
    bvx: np.ndarray
    bvy: np.ndarray
    bwz: np.ndarray
    bmat: np.ndarray
    bobj: np.ndarray  # track id or -1
    cx: np.ndarray  # [Nc]
    cy: np.ndarray
    cr: np.ndarray
    cz0: np.ndarray
    cz1: np.ndarray
    cmat: np.ndarray
    ramp: tuple[float, float, float, float] | None = None  # ground: world.ground_z; None = plane z = 0

    @property
    def n_boxes(self) -> int:
        return len(self.bx)


@dataclass
class Hits:
    range: np.ndarray  # [N] distance along the (unit) ray, inf = no return
    material: np.ndarray  # [N] int, -1 = no return
    obj: np.ndarray  # [N] track id, -1 = none
    prim: np.ndarray  # [N] primitive index (boxes first, then cylinders), -1 = ground or none
    normal: np.ndarray  # [N, 3] surface normal (world), zeros where no return


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenation of arange(lo[p], hi[p]) for all p, and the p of each element (no Python loop)."""
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    owner = np.repeat(np.arange(len(lo)), n)
    start = np.cumsum(n) - n
    return lo[owner] + (np.arange(total) - start[owner]), owner


def cast(scene: Scene, origins: np.ndarray, dirs: np.ndarray, max_range: float, dt: np.ndarray | None = None,
         ground_material=None, beams: int = 1) -> Hits:
    """Cast rays (origins [N, 3], unit dirs [N, 3], world frame) at times t_ref + dt [N].

    ground_material(x, y) -> material ids for ground hits (road / sidewalk / marking).
    beams > 1: the rays form a spinning-LiDAR grid [N / beams, beams] (one azimuth per column,
    the same ascending elevations in every column, one origin height); culling then works on
    column and beam ranges instead of single rays. Falls back to per-ray culling otherwise.
    """
    n = len(origins)
    dt = np.zeros(n) if dt is None else dt
    ox, oy, oz = origins[:, 0], origins[:, 1], origins[:, 2]
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    best = np.full(n, np.inf)
    down = dz < -1e-9
    best[down] = -oz[down] / dz[down]
    z_floor = 0.0  # lowest ground height (culling)
    if scene.ramp is not None:
        best, z_floor = _ramp_ground(scene.ramp, ox, oy, oz, dx, dy, dz, best, max_range)
    best[best > max_range] = np.inf
    material = np.where(np.isfinite(best), GROUND, -1)
    obj = np.full(n, -1, dtype=np.int64)
    prim = np.full(n, -1, dtype=np.int64)
    normal = np.zeros((n, 3))
    normal[np.isfinite(best), 2] = 1.0
    # horizontal distance a ray travels before it stops (ground or max range): culls far primitives
    dxy = np.hypot(dx, dy)
    reach = np.minimum(best, max_range) * dxy

    # culling geometry relative to the mean origin: rays sorted by azimuth, the list doubled
    # (azimuth + 2 pi) so that every primitive's sector is one contiguous slice
    o_mean = origins.mean(axis=0)
    spread = float(np.max(np.hypot(ox - o_mean[0], oy - o_mean[1]))) if n else 0.0
    az = np.arctan2(dy, dx)
    dt_max = float(np.max(np.abs(dt))) if n else 0.0

    slope = dz / np.maximum(dxy, 1e-9)  # height change per metre travelled horizontally
    grid = None
    if beams > 1 and n % beams == 0 and n:
        az_c, slope_b = az.reshape(-1, beams), slope.reshape(-1, beams)
        spin = (az_c - az_c[:, :1] + np.pi) % (2 * np.pi) - np.pi
        ok = (np.abs(spin).max() < 1e-6 and np.ptp(slope_b, axis=0).max() < 1e-9
              and np.all(np.diff(slope_b[0]) >= 0) and np.ptp(oz) < 1e-9)
        if ok:
            c_order = np.argsort(az_c[:, 0], kind="stable")
            grid = (np.concatenate([az_c[c_order, 0], az_c[c_order, 0] + 2 * np.pi]),
                    np.concatenate([c_order, c_order]), slope_b[0].copy(), float(oz[0]))
    if grid is None:
        order = np.argsort(az, kind="stable")
        az2 = np.concatenate([az[order], az[order] + 2 * np.pi])
        order2 = np.concatenate([order, order])

    def sectors(px, py, radius, speed):
        rel_x, rel_y = px - o_mean[0], py - o_mean[1]
        dist = np.hypot(rel_x, rel_y)
        r_eff = radius + spread + speed * dt_max + 0.05
        keep = np.nonzero(dist - r_eff < max_range)[0]
        dist, r_eff = dist[keep], r_eff[keep]
        center = np.arctan2(rel_y[keep], rel_x[keep])
        half = np.where(dist <= r_eff, np.pi, np.arcsin(np.minimum(r_eff / np.maximum(dist, 1e-9), 1.0)))
        a0 = center - half
        a0 = np.where(a0 < -np.pi, a0 + 2 * np.pi, a0)
        return keep, dist, r_eff, a0, half

    def grid_pairs_for(px, py, radius, speed, z0, z1):
        az2c, order2c, slope_b, h = grid
        keep, dist, r_eff, a0, half = sectors(px, py, radius, speed)
        n_cols = len(order2c) // 2
        lo = np.searchsorted(az2c, a0)
        hi = np.minimum(np.searchsorted(az2c, a0 + 2 * half), lo + n_cols)
        near = np.maximum(dist - r_eff, 1e-6)
        far = dist + r_eff
        z0k, z1k = z0[keep], z1[keep]
        # beams (ascending slope) that can be inside [z0, z1] somewhere in the disc, and that do
        # not reach the ground before the disc
        s_max = np.maximum((z1k - h) / near, (z1k - h) / far)
        s_min = np.maximum(np.minimum((z0k - h) / near, (z0k - h) / far), (z_floor - h) / near)
        b_lo = np.searchsorted(slope_b, s_min, side="left")
        b_hi = np.searchsorted(slope_b, s_max, side="right")
        sel = np.nonzero((b_hi > b_lo) & (hi > lo))[0]
        cpos, cown = _ranges(lo[sel], hi[sel])  # (primitive, column) pairs
        own = sel[cown]
        bpos, bown = _ranges(b_lo[own], b_hi[own])  # expand each to its beam range
        rays = order2c[cpos][bown] * beams + bpos
        return rays, keep[own[bown]]

    def pairs_for(px, py, radius, speed, z0, z1):
        if grid is not None:
            return grid_pairs_for(px, py, radius, speed, z0, z1)
        keep, dist, r_eff, a0, half = sectors(px, py, radius, speed)
        lo = np.searchsorted(az2, a0)
        hi = np.searchsorted(az2, a0 + 2 * half)
        hi = np.minimum(hi, lo + n)
        pos, owner = _ranges(lo, hi)
        rays = order2[pos]
        near_d = np.maximum(dist[owner] - r_eff[owner], 0.0)
        far_d = dist[owner] + r_eff[owner]
        ok = reach[rays] > near_d
        # vertical cull: the ray passes entirely above or below the primitive's slab in its disc
        z_near = oz[rays] + slope[rays] * near_d
        z_far = oz[rays] + slope[rays] * far_d
        prim = keep[owner]
        ok &= (np.minimum(z_near, z_far) <= z1[prim]) & (np.maximum(z_near, z_far) >= z0[prim])
        return rays[ok], prim[ok]

    hit_t, hit_ray, hit_prim, hit_n = [], [], [], []
    # ---- boxes (slab test in each box's frame, at each ray's own time)
    if scene.n_boxes:
        speed = np.hypot(scene.bvx, scene.bvy) + np.abs(scene.bwz) * 0.5 * scene.bl
        r, p = pairs_for(scene.bx, scene.by, 0.5 * np.hypot(scene.bl, scene.bw), speed, scene.bz0, scene.bz1)
        if len(r):
            t = dt[r]
            yaw = scene.byaw[p] + scene.bwz[p] * t
            c, s = np.cos(yaw), np.sin(yaw)
            rx = ox[r] - (scene.bx[p] + scene.bvx[p] * t)
            ry = oy[r] - (scene.by[p] + scene.bvy[p] * t)
            lx, ly = c * rx + s * ry, -s * rx + c * ry
            ldx, ldy = c * dx[r] + s * dy[r], -s * dx[r] + c * dy[r]
            ldz = dz[r]
            ldx = np.where(np.abs(ldx) < 1e-12, 1e-12, ldx)
            ldy = np.where(np.abs(ldy) < 1e-12, 1e-12, ldy)
            ldz = np.where(np.abs(ldz) < 1e-12, 1e-12, ldz)
            hx, hy = 0.5 * scene.bl[p], 0.5 * scene.bw[p]
            ax, bx_ = (-hx - lx) / ldx, (hx - lx) / ldx
            ay, by_ = (-hy - ly) / ldy, (hy - ly) / ldy
            az_, bz_ = (scene.bz0[p] - oz[r]) / ldz, (scene.bz1[p] - oz[r]) / ldz
            mins = np.stack([np.minimum(ax, bx_), np.minimum(ay, by_), np.minimum(az_, bz_)])
            tmin = mins.max(axis=0)
            tmax = np.minimum(np.minimum(np.maximum(ax, bx_), np.maximum(ay, by_)), np.maximum(az_, bz_))
            ok = (tmax >= tmin) & (tmin > 1e-6) & (tmin < best[r])
            if ok.any():
                axis = mins[:, ok].argmax(axis=0)
                cc, ss = c[ok], s[ok]
                sx = -np.sign(ldx[ok])
                sy = -np.sign(ldy[ok])
                nrm = np.zeros((int(ok.sum()), 3))
                nrm[:, 0] = np.where(axis == 0, sx * cc, np.where(axis == 1, -sy * ss, 0.0))
                nrm[:, 1] = np.where(axis == 0, sx * ss, np.where(axis == 1, sy * cc, 0.0))
                nrm[:, 2] = np.where(axis == 2, -np.sign(ldz[ok]), 0.0)
                hit_t.append(tmin[ok])
                hit_ray.append(r[ok])
                hit_prim.append(p[ok])
                hit_n.append(nrm)
    # ---- cylinders (static)
    if len(scene.cx):
        r, p = pairs_for(scene.cx, scene.cy, scene.cr, np.zeros(len(scene.cx)), scene.cz0, scene.cz1)
        if len(r):
            rx, ry = ox[r] - scene.cx[p], oy[r] - scene.cy[p]
            a = np.maximum(dx[r] ** 2 + dy[r] ** 2, 1e-12)
            b = 2 * (rx * dx[r] + ry * dy[r])
            cc = rx**2 + ry**2 - scene.cr[p] ** 2
            disc = b * b - 4 * a * cc
            with np.errstate(invalid="ignore"):
                t = (-b - np.sqrt(disc)) / (2 * a)
            z = oz[r] + t * dz[r]
            ok = (disc >= 0) & (t > 1e-6) & (z >= scene.cz0[p]) & (z <= scene.cz1[p]) & (t < best[r])
            if ok.any():
                hx_ = rx[ok] + t[ok] * dx[r][ok]
                hy_ = ry[ok] + t[ok] * dy[r][ok]
                nrm = np.stack([hx_, hy_, np.zeros_like(hx_)], 1) / scene.cr[p][ok][:, None]
                hit_t.append(t[ok])
                hit_ray.append(r[ok])
                hit_prim.append(p[ok] + scene.n_boxes)
                hit_n.append(nrm)
    if hit_t:
        ht, hr, hp, hn = (np.concatenate(v) for v in (hit_t, hit_ray, hit_prim, hit_n))
        np.minimum.at(best, hr, ht)
        win = ht == best[hr]
        hr, hp, hn = hr[win], hp[win], hn[win]
        prim[hr] = hp
        is_box = hp < scene.n_boxes
        material[hr] = np.where(is_box, scene.bmat[np.minimum(hp, scene.n_boxes - 1)] if scene.n_boxes else 0,
                                scene.cmat[np.maximum(hp - scene.n_boxes, 0)] if len(scene.cx) else 0)
        obj[hr] = np.where(is_box, scene.bobj[np.minimum(hp, scene.n_boxes - 1)] if scene.n_boxes else -1, -1)
        normal[hr] = hn
    best[best > max_range] = np.inf
    gone = ~np.isfinite(best)
    material[gone], obj[gone], prim[gone] = -1, -1, -1
    normal[gone] = 0.0
    if ground_material is not None:
        g = (material == GROUND) & (prim < 0)
        if g.any():
            hx = ox[g] + best[g] * dx[g]
            hy = oy[g] + best[g] * dy[g]
            material[g] = ground_material(hx, hy)
    return Hits(best, material, obj, prim, normal)


def _ramp_ground(ramp, ox, oy, oz, dx, dy, dz, best_flat, max_range):
    """Ground hits with a grade change: the plane z = 0 up to the line n . p = c, then the plane
    z = grade * (n . p - c). Rays start on the flat side; a ray that reaches z = 0 before the line
    hits the flat part, otherwise it crosses the line above the ground and may hit the slope.
    Returns (distance [N], lowest ground height within max_range of the origins)."""
    nx, ny, c, g = ramp
    no = nx * ox + ny * oy  # [N]
    nd = nx * dx + ny * dy
    with np.errstate(divide="ignore", invalid="ignore"):
        flat_ok = np.isfinite(best_flat) & (no + best_flat * nd <= c)
        t = (g * (no - c) - oz) / (dz - g * nd)
        slope_ok = (t > 1e-6) & (no + t * nd >= c) & np.isfinite(t)
    best = np.where(flat_ok, best_flat, np.where(slope_ok, t, np.inf))
    z_floor = min(0.0, g * max(float(np.max(no)) + max_range - c, 0.0)) if len(no) else 0.0
    return best, z_floor


def is_ground_material(material: np.ndarray) -> np.ndarray:
    return (material == GROUND) | (material == SIDEWALK) | (material == MARKING)
