"""Compiled loops (numba) for the hot parts of the tracking stage, with the numpy code as fallback.

Why by hand: with 100+ tracks the numpy path of one frame is a few hundred small array operations
(5 x 5 matrices over a track axis, fancy indexing, temporaries), each costing microseconds of
dispatch for nanoseconds of arithmetic; one compiled loop per step does the same equations
without them. No library offers a batched EKF of these two models, a Mahalanobis gate over
class-compatible pairs or the count of grid returns under many oriented boxes.

Each kernel follows its numpy counterpart equation by equation:

    ekf_predict   kalman.batch_predict (CV and CTRV rows, covariance symmetrised and capped)
    ekf_update    kalman.batch_update (Joseph form; rows with missing components use the finite ones)
    gate_cost     MultiObjectTracker.cost_matrix (prefilter, [x, y, yaw] block, adjugate Mahalanobis)
    box_returns   support.footprints_returns's cell loop (same float operations per cell: same cells)
    shape_beyond  support.structure_beyond for many boxes (same window, cell tests and label sums)

The filter kernels sum and solve in their own order (plain loops, Gaussian elimination with
partial pivoting instead of BLAS/LAPACK), so states agree with the numpy path to rounding, not bit
for bit (test/test_tracking_kernels.py: 1e-12 relative per step; the stage's reference test holds
at its 1e-9); the gate and the footprint count use the same operations as numpy (the counts are
equal exactly). ``available()`` is False where numba is missing or fails to compile, or with
SSM_PERCEPTION_NO_NUMBA=1 (the numpy path then runs, as it does in the fallback tests).
Compiled on first use and cached on disk (numba's cache=True); ``warm()`` pays that before the
first frame (the tracker's constructor calls it).
"""

from __future__ import annotations

import functools
import logging
import math
import os

import numpy as np

log = logging.getLogger(__name__)

_HALF_PI = math.pi / 2
_PI = math.pi
_TWO_PI = 2 * math.pi
_EPS_W = 1e-4  # CTRVEKF._EPS_W


@functools.cache
def _kernels():
    """{name: compiled function}, or None (numba missing or disabled: the numpy path runs)."""
    if os.environ.get("SSM_PERCEPTION_NO_NUMBA", "") not in ("", "0"):
        return None
    try:
        import numba
    except ImportError:
        return None
    jit = numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)

    # fold_yaw and the angle wrap are written out inline: a kernel calling another compiled
    # function defined here would not be found in numba's cache (it would compile every process).
    @jit
    def ekf_predict(x, P, ctrv, dt, accel, yaw_accel, max_dt, max_pos_std, nx, nP):
        # x [T, 5], P [T, 5, 5] -> nx, nP (BoxEKF.predict per row with dt clipped at max_dt)
        F = np.empty((5, 5))
        Q = np.empty((5, 5))
        FP = np.empty((5, 5))
        for t in range(x.shape[0]):
            d = min(dt, max_dt[t])
            for i in range(5):
                for j in range(5):
                    F[i, j] = 1.0 if i == j else 0.0
                    Q[i, j] = 0.0
            a2 = accel[t] ** 2
            if ctrv[t]:
                px, py, yaw, v, w = x[t, 0], x[t, 1], x[t, 2], x[t, 3], x[t, 4]
                s0, c0 = math.sin(yaw), math.cos(yaw)
                s1, c1 = math.sin(yaw + w * d), math.cos(yaw + w * d)
                F[2, 4] = d
                if abs(w) > _EPS_W:
                    nx[t, 0] = px + v / w * (s1 - s0)
                    nx[t, 1] = py + v / w * (c0 - c1)
                    F[0, 2] = v / w * (c1 - c0)
                    F[0, 3] = (s1 - s0) / w
                    F[0, 4] = v / w**2 * (s0 - s1) + v * d * c1 / w
                    F[1, 2] = v / w * (s1 - s0)
                    F[1, 3] = (c0 - c1) / w
                    F[1, 4] = v / w**2 * (c1 - c0) + v * d * s1 / w
                else:
                    nx[t, 0] = px + v * d * c0 - 0.5 * v * w * d**2 * s0
                    nx[t, 1] = py + v * d * s0 + 0.5 * v * w * d**2 * c0
                    F[0, 2] = -v * d * s0 - 0.5 * v * w * d**2 * c0
                    F[0, 3] = d * c0 - 0.5 * w * d**2 * s0
                    F[0, 4] = -0.5 * v * d**2 * s0
                    F[1, 2] = v * d * c0 - 0.5 * v * w * d**2 * s0
                    F[1, 3] = d * s0 + 0.5 * w * d**2 * c0
                    F[1, 4] = 0.5 * v * d**2 * c0
                yq = (yaw + w * d + _PI) % _TWO_PI - _PI
                nx[t, 2] = yq
                nx[t, 3] = v
                nx[t, 4] = w
                # Q = G diag(accel^2, yaw_accel^2) G^T, G's non-zero entries written out
                g0, g1, g2, g3, g4 = 0.5 * d**2 * math.cos(yq), 0.5 * d**2 * math.sin(yq), 0.5 * d**2, d, d
                b2 = yaw_accel[t] ** 2
                Q[0, 0] = g0 * a2 * g0
                Q[0, 1] = Q[1, 0] = g0 * a2 * g1
                Q[0, 3] = Q[3, 0] = g0 * a2 * g3
                Q[1, 1] = g1 * a2 * g1
                Q[1, 3] = Q[3, 1] = g1 * a2 * g3
                Q[3, 3] = g3 * a2 * g3
                Q[2, 2] = g2 * b2 * g2
                Q[2, 4] = Q[4, 2] = g2 * b2 * g4
                Q[4, 4] = g4 * b2 * g4
                lat = 0.5 * d**2 * accel[t] * 0.3
                Q[0, 0] += (lat * math.sin(yq)) ** 2
                Q[1, 1] += (lat * math.cos(yq)) ** 2
            else:
                nx[t, 0] = x[t, 0] + x[t, 2] * d
                nx[t, 1] = x[t, 1] + x[t, 3] * d
                nx[t, 2] = x[t, 2]
                nx[t, 3] = x[t, 3]
                nx[t, 4] = (x[t, 4] + _PI) % _TWO_PI - _PI
                F[0, 2] = d
                F[1, 3] = d
                for p in range(2):
                    q = p + 2
                    Q[p, p] = d**4 / 4 * a2
                    Q[p, q] = d**3 / 2 * a2
                    Q[q, p] = Q[p, q]
                    Q[q, q] = d**2 * a2
                Q[4, 4] = yaw_accel[t] ** 2 * d
            for i in range(5):
                for j in range(5):
                    acc = 0.0
                    for k in range(5):
                        acc += F[i, k] * P[t, k, j]
                    FP[i, j] = acc
            for i in range(5):
                for j in range(5):
                    acc = 0.0
                    for k in range(5):
                        acc += FP[i, k] * F[j, k]
                    nP[t, i, j] = acc + Q[i, j]
            for i in range(5):
                for j in range(i + 1, 5):
                    m = 0.5 * (nP[t, i, j] + nP[t, j, i])
                    nP[t, i, j] = m
                    nP[t, j, i] = m
            lim = max_pos_std[t] ** 2
            if nP[t, 0, 0] > lim or nP[t, 1, 1] > lim:
                sc0 = math.sqrt(lim / nP[t, 0, 0]) if nP[t, 0, 0] > lim else 1.0
                sc1 = math.sqrt(lim / nP[t, 1, 1]) if nP[t, 1, 1] > lim else 1.0
                for i in range(5):
                    si = sc0 if i == 0 else (sc1 if i == 1 else 1.0)
                    for j in range(5):
                        sj = sc0 if j == 0 else (sc1 if j == 1 else 1.0)
                        nP[t, i, j] = nP[t, i, j] * (si * sj)

    @jit
    def ekf_update(x, P, ctrv, z, r_diag, nx, nP):
        # BoxEKF.update per row: z [T, 5] (NaN components skipped), R = diag(r_diag [T, 5])
        Hf = np.zeros((5, 5))
        hz = np.empty(5)
        idx = np.empty(5, np.int64)
        for t in range(x.shape[0]):
            for i in range(5):
                nx[t, i] = x[t, i]
                for j in range(5):
                    nP[t, i, j] = P[t, i, j]
            m = 0
            for i in range(5):
                if math.isfinite(z[t, i]):
                    idx[m] = i
                    m += 1
            if m == 0:
                continue
            for i in range(5):
                for j in range(5):
                    Hf[i, j] = 0.0
            if ctrv[t]:
                yaw, v = x[t, 2], x[t, 3]
                sy, cy = math.sin(yaw), math.cos(yaw)
                hz[0], hz[1], hz[2], hz[3], hz[4] = x[t, 0], x[t, 1], yaw, v * cy, v * sy
                Hf[0, 0] = Hf[1, 1] = Hf[2, 2] = 1.0
                Hf[3, 2], Hf[3, 3] = -v * sy, cy
                Hf[4, 2], Hf[4, 3] = v * cy, sy
                yi = 2
            else:
                hz[0], hz[1], hz[2], hz[3], hz[4] = x[t, 0], x[t, 1], x[t, 4], x[t, 2], x[t, 3]
                Hf[0, 0] = Hf[1, 1] = Hf[2, 4] = Hf[3, 2] = Hf[4, 3] = 1.0
                yi = 4
            H = np.empty((m, 5))
            y = np.empty(m)
            Rs = np.zeros((m, m))
            for a in range(m):
                k = idx[a]
                y[a] = z[t, k] - hz[k]
                if k == 2:
                    y[a] = (y[a] + _HALF_PI) % _PI - _HALF_PI
                Rs[a, a] = r_diag[t, k]
                for j in range(5):
                    H[a, j] = Hf[k, j]
            HP = np.empty((m, 5))
            for a in range(m):
                for j in range(5):
                    acc = 0.0
                    for k in range(5):
                        acc += H[a, k] * P[t, k, j]
                    HP[a, j] = acc
            S = np.empty((m, m))
            for a in range(m):
                for b in range(m):
                    acc = 0.0
                    for k in range(5):
                        acc += HP[a, k] * H[b, k]
                    S[a, b] = acc + Rs[a, b]
            # K^T = S^-1 HP: Gaussian elimination with partial pivoting on [S | HP]
            Kt = HP.copy()
            for c in range(m):
                piv = c
                for r in range(c + 1, m):
                    if abs(S[r, c]) > abs(S[piv, c]):
                        piv = r
                if piv != c:
                    for j in range(m):
                        S[c, j], S[piv, j] = S[piv, j], S[c, j]
                    for j in range(5):
                        Kt[c, j], Kt[piv, j] = Kt[piv, j], Kt[c, j]
                for r in range(c + 1, m):
                    f = S[r, c] / S[c, c]
                    for j in range(c, m):
                        S[r, j] -= f * S[c, j]
                    for j in range(5):
                        Kt[r, j] -= f * Kt[c, j]
            for c in range(m - 1, -1, -1):
                for j in range(5):
                    acc = Kt[c, j]
                    for k in range(c + 1, m):
                        acc -= S[c, k] * Kt[k, j]
                    Kt[c, j] = acc / S[c, c]
            for i in range(5):
                acc = 0.0
                for a in range(m):
                    acc += Kt[a, i] * y[a]
                nx[t, i] = x[t, i] + acc
            nx[t, yi] = (nx[t, yi] + _PI) % _TWO_PI - _PI
            IKH = np.empty((5, 5))
            for i in range(5):
                for j in range(5):
                    acc = 0.0
                    for a in range(m):
                        acc += Kt[a, i] * H[a, j]
                    IKH[i, j] = (1.0 if i == j else 0.0) - acc
            A = np.empty((5, 5))
            for i in range(5):
                for j in range(5):
                    acc = 0.0
                    for k in range(5):
                        acc += IKH[i, k] * P[t, k, j]
                    A[i, j] = acc
            for i in range(5):
                for j in range(5):
                    acc = 0.0
                    for k in range(5):
                        acc += A[i, k] * IKH[j, k]
                    acc2 = 0.0
                    for a in range(m):
                        acc2 += Kt[a, i] * Rs[a, a] * Kt[a, j]
                    nP[t, i, j] = acc + acc2
            for i in range(5):
                for j in range(i + 1, 5):
                    s = 0.5 * (nP[t, i, j] + nP[t, j, i])
                    nP[t, i, j] = s
                    nP[t, j, i] = s

    @jit
    def gate_cost(z_pred, hph, t_cls, t_veh, z, r_diag, d_cls, d_veh, gate, cost):
        # cost [T, D] (inf on entry): MultiObjectTracker.cost_matrix's pairs within the gate
        lim = gate * (1.0 + 1e-9)
        for t in range(z_pred.shape[0]):
            for d in range(z.shape[0]):
                if not (t_cls[t] == d_cls[d] or (t_veh[t] and d_veh[d])):
                    continue
                dx = z[d, 0] - z_pred[t, 0]
                dy = z[d, 1] - z_pred[t, 1]
                if not (dx * dx <= lim * (hph[t, 0, 0] + r_diag[d, 0])):
                    continue
                if not (dy * dy <= lim * (hph[t, 1, 1] + r_diag[d, 1])):
                    continue
                y0, y1, y2 = dx, dy, (z[d, 2] - z_pred[t, 2] + _HALF_PI) % _PI - _HALF_PI
                a = hph[t, 0, 0] + r_diag[d, 0]
                b, c = hph[t, 0, 1], hph[t, 0, 2]
                dd = hph[t, 1, 1] + r_diag[d, 1]
                e = hph[t, 1, 2]
                f = hph[t, 2, 2] + r_diag[d, 2]
                A, B, C = dd * f - e * e, c * e - b * f, b * e - c * dd
                D, E, Fq = a * f - c * c, b * c - a * e, a * dd - b * b
                det = a * A + b * B + c * C
                q = y0 * y0 * A + y1 * y1 * D + y2 * y2 * Fq + 2.0 * (y0 * y1 * B + y0 * y2 * C + y1 * y2 * E)
                if det == 0.0:
                    continue  # numpy: inf or NaN, never within the gate
                d2 = q / det
                if math.isfinite(d2) and d2 <= gate:
                    cost[t, d] = d2

    @jit
    def box_returns(counts, cx_all, cy_all, x, y, c, s, length, width, margin, x_min, y_min, res, out):
        # out[n] = returns under box n (cells whose centre is inside), -1 when no cell is inside;
        # the window: the box's axis-aligned extent padded by 1 um (any window holding the box's
        # cells gives the same count: the cell test decides)
        nx, ny = cx_all.shape[0], cy_all.shape[0]
        for n in range(x.shape[0]):
            hl = 0.5 * (length[n] if not length[n] < 0.1 else 0.1) + margin
            hw = 0.5 * (width[n] if not width[n] < 0.1 else 0.1) + margin
            cn, sn = c[n], s[n]
            if not (math.isfinite(hl) and math.isfinite(hw) and math.isfinite(x[n]) and math.isfinite(y[n])
                    and math.isfinite(cn) and math.isfinite(sn)):
                out[n] = -1  # numpy: no cell passes a NaN test
                continue
            ex = hl * abs(cn) + hw * abs(sn) + 1e-6
            ey = hl * abs(sn) + hw * abs(cn) + 1e-6
            i0 = max(0, math.floor((x[n] - ex - x_min) / res))
            i1 = min(nx, math.ceil((x[n] + ex - x_min) / res))
            j0 = max(0, math.floor((y[n] - ey - y_min) / res))
            j1 = min(ny, math.ceil((y[n] + ey - y_min) / res))
            total = 0
            anyin = False
            for i in range(i0, i1):
                cx = cx_all[i] - x[n]
                for j in range(j0, j1):
                    cy = cy_all[j] - y[n]
                    u = cn * cx + sn * cy
                    v = -sn * cx + cn * cy
                    if abs(u) <= hl and abs(v) <= hw:
                        anyin = True
                        total += counts[i, j]
            out[n] = total if anyin else -1

    @jit
    def shape_beyond(labels, sizes, cx_all, cy_all, x, y, c, s, length, width, reach, x_min, y_min, res, mark,
                     out):
        # out[n] = support.structure_beyond of box n (length/width as passed there), -1 for its None.
        # mark [len(sizes)]: scratch, all -1 on entry (label -> last box that hit it)
        nx, ny = cx_all.shape[0], cy_all.shape[0]
        for n in range(x.shape[0]):
            hl = 0.5 * (length[n] if not length[n] < 0.1 else 0.1)
            hw = 0.5 * (width[n] if not width[n] < 0.1 else 0.1)
            hlr, hwr = hl + reach, hw + reach
            cn, sn = c[n], s[n]
            if not (math.isfinite(hl) and math.isfinite(hw) and math.isfinite(x[n]) and math.isfinite(y[n])
                    and math.isfinite(cn) and math.isfinite(sn)):
                out[n] = -1
                continue
            # the window: the grown box's axis-aligned extent padded by 1 um (within _window's circle;
            # any window holding the grown box gives the same numbers: the cell tests decide)
            ex = hlr * abs(cn) + hwr * abs(sn) + 1e-6
            ey = hlr * abs(sn) + hwr * abs(cn) + 1e-6
            k0 = max(0, math.floor((x[n] - ex - x_min) / res))
            k1 = min(nx, math.ceil((x[n] + ex - x_min) / res))
            m0 = max(0, math.floor((y[n] - ey - y_min) / res))
            m1 = min(ny, math.ceil((y[n] + ey - y_min) / res))
            anyin = False
            total = 0  # cells of the regions hit by the box
            for i in range(k0, k1):
                cx = cx_all[i] - x[n]
                for j in range(m0, m1):
                    cy = cy_all[j] - y[n]
                    if abs(cn * cx + sn * cy) <= hl and abs(-sn * cx + cn * cy) <= hw:
                        anyin = True
                        lab = labels[i, j]
                        if lab != 0 and mark[lab] != n:
                            mark[lab] = n
                            total += sizes[lab]
            if not anyin:
                out[n] = -1
                continue
            if total == 0:
                out[n] = 0
                continue
            near = 0  # of those, cells within reach of the box
            for i in range(k0, k1):
                cx = cx_all[i] - x[n]
                for j in range(m0, m1):
                    lab = labels[i, j]
                    if lab != 0 and mark[lab] == n:
                        cy = cy_all[j] - y[n]
                        if abs(cn * cx + sn * cy) <= hlr and abs(-sn * cx + cn * cy) <= hwr:
                            near += 1
            out[n] = total - near

    @jit
    def track_outputs(x, P, ctrv, unobserved, pose_cov, twist_cov, vel):
        # MultiObjectTracker._states' covariances and velocity: pose_cov/twist_cov [n, 6, 6], vel [n, 2]
        Hv = np.empty((2, 5))
        HP = np.empty((2, 5))
        for t in range(x.shape[0]):
            for i in range(6):
                for j in range(6):
                    u = unobserved if i == j else 0.0
                    pose_cov[t, i, j] = u
                    twist_cov[t, i, j] = u
            yi = 2 if ctrv[t] else 4
            for a in range(3):
                ia = a if a < 2 else yi
                oa = a if a < 2 else 5
                for b in range(3):
                    ib = b if b < 2 else yi
                    ob = b if b < 2 else 5
                    pose_cov[t, oa, ob] = P[t, ia, ib]
            for i in range(2):
                for j in range(5):
                    Hv[i, j] = 0.0
            if ctrv[t]:
                yaw, v = x[t, 2], x[t, 3]
                sy, cy = math.sin(yaw), math.cos(yaw)
                vel[t, 0], vel[t, 1] = v * cy, v * sy
                Hv[0, 2], Hv[0, 3] = -v * sy, cy
                Hv[1, 2], Hv[1, 3] = v * cy, sy
                twist_cov[t, 5, 5] = P[t, 4, 4]
            else:
                vel[t, 0], vel[t, 1] = x[t, 2], x[t, 3]
                Hv[0, 2] = Hv[1, 3] = 1.0
            for i in range(2):
                for j in range(5):
                    acc = 0.0
                    for k in range(5):
                        acc += Hv[i, k] * P[t, k, j]
                    HP[i, j] = acc
            for i in range(2):
                for j in range(2):
                    acc = 0.0
                    for k in range(5):
                        acc += HP[i, k] * Hv[j, k]
                    twist_cov[t, i, j] = acc

    @jit
    def select(a, cls, n_classes, thr, det_thr, min_evidence, radius, veh0, veh1, keep):
        # detections._select_mask: candidates, then the greedy circle NMS (best score first, ties in
        # input order) over the candidates with a conflict; keep [n] bool (False on entry)
        n = a.shape[0]
        idx = np.empty(n, np.int64)
        r = np.empty(n)
        m = 0
        for i in range(n):
            known = cls[i] >= 0 and cls[i] <= n_classes
            ok = True
            for k in range(7):
                if not math.isfinite(a[i, k]):
                    ok = False
            if not ok or not min(a[i, 3], a[i, 4], a[i, 5]) > 0.0:
                continue
            if not a[i, 6] >= (thr[cls[i]] if known else det_thr):
                continue
            if math.isfinite(a[i, 7]) and a[i, 7] < min_evidence:
                continue
            idx[m] = i
            r[m] = radius[cls[i]] if known else 0.0
            m += 1
        if m == 0:
            return
        rmax = r[:m].max()
        busy = np.zeros(m, np.bool_)
        conflict = np.zeros((m, m), np.bool_)
        for p in range(m):
            ip = idx[p]
            for q in range(m):
                if p == q:
                    continue
                iq = idx[q]
                dx = a[ip, 0] - a[iq, 0]
                if not abs(dx) < rmax:
                    continue
                cp, cq = cls[ip], cls[iq]
                if not (cp == cq or ((cp == veh0 or cp == veh1) and (cq == veh0 or cq == veh1))):
                    continue
                rr = max(r[p], r[q])
                dy = a[ip, 1] - a[iq, 1]
                if abs(dy) < rr and math.hypot(dx, dy) < rr:
                    conflict[p, q] = True
                    busy[p] = True
        nb = 0
        for p in range(m):
            if not busy[p]:
                keep[idx[p]] = True
            else:
                nb += 1
        if nb == 0:
            return
        sub = np.empty(nb, np.int64)
        neg = np.empty(nb)
        k = 0
        for p in range(m):
            if busy[p]:
                sub[k] = p
                neg[k] = -a[idx[p], 6]
                k += 1
        blocked = np.zeros(m, np.bool_)
        for o in np.argsort(neg, kind="mergesort"):
            p = sub[o]
            if not blocked[p]:
                keep[idx[p]] = True
                for q in range(m):
                    if conflict[p, q]:
                        blocked[q] = True

    return {"select": select, "ekf_predict": ekf_predict, "ekf_update": ekf_update, "gate_cost": gate_cost,
            "box_returns": box_returns, "shape_beyond": shape_beyond, "track_outputs": track_outputs}


_failed = False


def _get(name: str):
    if _failed:
        return None
    ks = _kernels()
    return None if ks is None else ks[name]


def available() -> bool:
    return _get("ekf_predict") is not None


@functools.cache
def warm() -> bool:
    """Compile (or load from numba's cache) every kernel for the types the stage passes, before the
    first frame; False (numpy path from then on) where that fails."""
    global _failed
    if _kernels() is None:
        return False
    try:
        x, P = np.zeros((1, 5)), np.broadcast_to(np.eye(5), (1, 5, 5)).copy()
        one, ctrv = np.ones(1), np.ones(1, bool)
        predict(x, P, ctrv, 0.1, one, one, one, one)
        update(x, P, ctrv, np.zeros((1, 5)), one[:, None] * np.ones(5))
        update(x, P, ctrv, np.array([[0.0, 0.0, 0.0, np.nan, np.nan]]), np.ones((1, 5)))
        cost = np.full((1, 1), np.inf)
        gate_cost(x[:, :3].copy(), P[:, :3, :3].copy(), np.zeros(1, np.int64), ctrv, np.zeros((1, 3)),
                  np.ones((1, 3)), np.zeros(1, np.int64), ctrv, 11.0, cost)
        for dtype in (np.int32, np.int64):
            box_returns(np.zeros((2, 2), dtype), np.zeros(2), np.zeros(2), np.zeros(1), np.zeros(1), one, one,
                        one, one, 0.0, 0.0, 0.0, 0.5)
        shape_beyond(np.zeros((2, 2), np.int32), np.zeros(1, np.int64), np.zeros(2), np.zeros(2), np.zeros(1),
                     np.zeros(1), one, one, one, one, 1.0, 0.0, 0.0, 0.5)
        track_outputs(x, P, ctrv, 1.0)
        select(np.ones((2, 8)), np.array([1, 2]), 4, np.zeros(5), 0.0, 0.0, np.ones(5), 1, 2)
    except Exception as exc:  # noqa: BLE001 - any compile failure: fall back to numpy for good
        log.warning("tracking kernels unavailable (numba failed: %s); numpy path", exc)
        _failed = True
        return False
    return True


def predict(x, P, ctrv, dt, accel, yaw_accel, max_dt, max_pos_std):
    nx, nP = np.empty_like(x), np.empty_like(P)
    _get("ekf_predict")(x, P, ctrv, float(dt), accel, yaw_accel, max_dt, max_pos_std, nx, nP)
    return nx, nP


def update(x, P, ctrv, z, r_diag):
    nx, nP = np.empty_like(x), np.empty_like(P)
    _get("ekf_update")(x, P, ctrv, np.ascontiguousarray(z, np.float64), np.ascontiguousarray(r_diag, np.float64),
                       nx, nP)
    return nx, nP


def gate_cost(z_pred, hph, t_cls, t_veh, z, r_diag, d_cls, d_veh, gate, cost):
    _get("gate_cost")(z_pred, hph, t_cls, t_veh, z, r_diag, d_cls, d_veh, float(gate), cost)


def box_returns(counts, cx_all, cy_all, x, y, c, s, length, width, margin, x_min, y_min, res):
    """support.footprints_returns: [N] returns under the boxes (-1: no cell inside)."""
    out = np.empty(x.shape[0], np.int64)
    f8 = np.ascontiguousarray
    _get("box_returns")(f8(counts), cx_all, cy_all, f8(x, np.float64), f8(y, np.float64), f8(c, np.float64),
                        f8(s, np.float64), f8(length, np.float64), f8(width, np.float64), float(margin),
                        float(x_min), float(y_min), float(res), out)
    return out


def shape_beyond(labels, sizes, cx_all, cy_all, x, y, c, s, length, width, reach, x_min, y_min, res):
    """support.structure_beyond for N boxes: [N] cells beyond reach (-1: its None)."""
    out = np.empty(x.shape[0], np.int64)
    f8 = np.ascontiguousarray
    _get("shape_beyond")(f8(labels, np.int32), f8(sizes, np.int64), cx_all, cy_all, f8(x, np.float64),
                         f8(y, np.float64), f8(c, np.float64), f8(s, np.float64), f8(length, np.float64),
                         f8(width, np.float64), float(reach), float(x_min), float(y_min), float(res),
                         np.full(sizes.shape[0], -1, np.int64), out)
    return out


def track_outputs(x, P, ctrv, unobserved):
    """(pose_cov [n, 6, 6], twist_cov [n, 6, 6], velocity [n, 2]) of MultiObjectTracker._states."""
    n = x.shape[0]
    pose, twist, vel = np.empty((n, 6, 6)), np.empty((n, 6, 6)), np.empty((n, 2))
    _get("track_outputs")(x, P, ctrv, float(unobserved), pose, twist, vel)
    return pose, twist, vel


def select(a, cls, n_classes, thr, det_thr, min_evidence, radius, veh0, veh1):
    """The keep mask of detections._select_mask (same tests, same greedy order)."""
    keep = np.zeros(a.shape[0], bool)
    _get("select")(np.ascontiguousarray(a, np.float64), np.ascontiguousarray(cls, np.int64), int(n_classes),
                   np.ascontiguousarray(thr, np.float64), float(det_thr), float(min_evidence),
                   np.ascontiguousarray(radius, np.float64), int(veh0), int(veh1), keep)
    return keep
