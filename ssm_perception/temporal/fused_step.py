"""Fused GPU step: ego-motion warp of the previous SSM state + selective state update in one kernel.

Written by hand (Triton) because no library does this: the stock mamba-ssm step reads a state that
something else has already warped (grid_sample: one full read and write of the state) and wants it
cell-major, so the layout change costs two more passes. Here each program takes a block of cells
of one head, gathers each cell's previous state at its SE(2)-shifted source position straight from
the previous frame's cell-aligned tensor ([B, S, H, W], cells contiguous -> coalesced loads for
the common near-translation motion), updates it and writes the new state and the gated output:
the state is read once and written once, which is the bandwidth floor of the step.

Sampling matches temporal/warp.py: source (fi, fj) = affine(i, j) of the current cell index;
bilinear with edge clamping ('border') for sources inside the previous grid's extent, exactly zero
outside; 'nearest' rounds half to even; a cell-aligned motion (integer shift, multiple of 90
degrees) is sampled with 'nearest' so values move bit-exactly. The update is the one of
temporal/mamba.py (``MambaCore._ssm_step_reference``). Inference only (no backward).

Block shapes (cells per program x headdim rows per program) are autotuned per grid size on the
GPU. Measured on one H100 (results/bench_gpu_temporal.json, CUDA graph, default config, 2 KB of
state per cell): warp + update at 200x200 in 0.114 ms = 2.0x the bound of reading and writing the
state once at the measured 2.9 TB/s copy bandwidth (1.7x at 256x256); one program per head with
128 cells (the first version) took 0.25 ms eager at 200x200. The launch sweep
(scripts/gpu_fused_sweep.py, results/gpu_fused_sweep_h100.json: 77 configurations, all correct to
< 1e-4) found 512 cells x 1 row, 4 warps at 0.100 ms = 1.81x the bound (0.097 ms = 1.76x back to
back); the cache hints (PREV_EVICT, IN_EVICT, NEW_CACHE) and num_stages change it by < 3 %, noise
level. Its winners lead the autotuning list below.

Two kernels (``config["VARIANT"]``, per GPU model in fused_launch.json): "rows" (above; the
default and the autotuned one) and "cells" (a program per cell block and HEADS_PER heads loops over
the headdim rows, so B, C, step and the warp's taps are read and computed once per cell instead of
once per row; optionally persistent), both with LANES=1 (one cell per thread: a bilinear gather
instruction covers ~1 cache line instead of ~4). Why, and what the H200 sweep should show: README,
"Fused update kernel on the H200"; scripts/fused_static_check.py compiles any launch for sm_90
without a GPU and reports registers, layouts and load widths.

On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1 set before importing triton),
which the tests use to check it against the reference warp + step.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

try:  # Triton is optional: only this backend needs it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

_ALIGN_TOL = 1e-4  # same tolerance as temporal/warp.py: sources this close to centres are aligned
BLOCK_CELLS = 128
# Everything a fixed launch may set (``fused_warp_step(config=...)``): the kernel's block shape and
# cache hints, and Triton's launch options.
# VARIANT picks the kernel: "rows" (default; programs of BLOCK cells x P_PER headdim rows of one
# head) or "cells" (programs of BLOCK cells x HEADS_PER whole heads, optionally persistent: PERSIST
# programs per SM, 2-D tiles TILE_W cells wide, each head's rows split over RSPLIT programs); LANES=1
# gives every thread one cell (both kernels).
LAUNCH_KEYS = ("VARIANT", "BLOCK", "P_PER", "HEADS_PER", "LANES", "PERSIST", "TILE_W", "RSPLIT", "PREV_EVICT",
               "IN_EVICT", "NEW_CACHE", "num_warps", "num_stages")
VARIANTS = ("rows", "cells")


def available() -> bool:
    return triton is not None


def warp_params(T_prev_cur, grid, batch: int, mode: str = "bilinear") -> tuple[Tensor, bool]:
    """SE(2) motion -> (affine [B, 6] float32 on CPU, bilinear?) for ``fused_warp_step``.

    The affine maps a current cell index (i, j) to its fractional source index in the previous
    grid: fi = a0 i + a1 j + a2, fj = a3 i + a4 j + a5 (same geometry as warp.source_indices).
    A frame asks for the same motion's parameters several times (reset policy, health monitor,
    temporal step): for a numpy motion the last few results are kept (host torch ops, ~40 each);
    treat the returned tensor as read-only."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if grid is None:
        raise ValueError("warp_params needs the BevGrid the state lives on")
    key = None
    if isinstance(T_prev_cur, np.ndarray):
        key = (T_prev_cur.dtype.str, T_prev_cur.shape, T_prev_cur.tobytes(), grid, batch, mode)
        hit = _WARP_PARAMS.get(key)
        if hit is not None:
            return hit
    out = _warp_params(T_prev_cur, grid, batch, mode)
    if key is not None:
        if len(_WARP_PARAMS) >= 8:
            _WARP_PARAMS.pop(next(iter(_WARP_PARAMS)))
        _WARP_PARAMS[key] = out
    return out


_WARP_PARAMS: dict = {}


def _warp_params(T_prev_cur, grid, batch: int, mode: str) -> tuple[Tensor, bool]:
    from ssm_perception.temporal.warp import _as_se2_batch

    se2 = _as_se2_batch(T_prev_cur, batch)  # [B, 3] float64 (dx, dy, dyaw)
    c, s = torch.cos(se2[:, 2]), torch.sin(se2[:, 2])
    r, x0, y0 = grid.resolution, grid.x_min, grid.y_min
    # x = x0 + (i + .5) r; x' = c x - s y + dx; fi = (x' - x0) / r - .5   (and likewise for j)
    a2 = 0.5 * c - 0.5 * s + (c * x0 - s * y0 + se2[:, 0] - x0) / r - 0.5
    a5 = 0.5 * s + 0.5 * c + (s * x0 + c * y0 + se2[:, 1] - y0) / r - 0.5
    aff = torch.stack([c, -s, a2, s, c, a5], 1)  # float64 [B, 6]
    a = aff.numpy()  # (host numbers: decided in numpy, no tensor read)
    lin, off = a[:, [0, 1, 3, 4]], a[:, [2, 5]]
    aligned = bool((np.abs(lin - np.round(lin)) < 1e-9).all() and (np.abs(off - np.round(off)) < _ALIGN_TOL).all())
    if aligned:  # integer coefficients: every source is a cell centre -> move values exactly
        aff = aff.round()
    return aff.to(torch.float32), (mode == "bilinear" and not aligned)


if triton is not None:

    @triton.jit
    def _round_half_even(f):
        r = tl.floor(f + 0.5)
        tie = (r - f) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(tie & odd, r - 1.0, r)

    @triton.jit
    def _source_index(aff_ptr, bi, fi_, fj_):
        """Cell (fi_, fj_) of the current grid -> its fractional index (along H, along W) in the previous
        state, through batch item bi's affine (warp_params)."""
        a0 = tl.load(aff_ptr + bi * 6 + 0)
        a1 = tl.load(aff_ptr + bi * 6 + 1)
        a2 = tl.load(aff_ptr + bi * 6 + 2)
        a3 = tl.load(aff_ptr + bi * 6 + 3)
        a4 = tl.load(aff_ptr + bi * 6 + 4)
        a5 = tl.load(aff_ptr + bi * 6 + 5)
        return a0 * fi_ + a1 * fj_ + a2, a3 * fi_ + a4 * fj_ + a5

    @triton.jit
    def _bilinear_taps(fi, fj, m, H, W):
        """The four bilinear taps of a fractional source index: weights, masks (zeros outside the grid,
        'border' inside its extent, as grid_sample) and flat source cells."""
        hf = H * 1.0
        wf = W * 1.0
        inside = m & (fi > -0.5) & (fi < hf - 0.5) & (fj > -0.5) & (fj < wf - 0.5)
        fi = tl.minimum(tl.maximum(fi, 0.0), hf - 1.0)
        fj = tl.minimum(tl.maximum(fj, 0.0), wf - 1.0)
        i0f = tl.floor(fi)
        j0f = tl.floor(fj)
        wi1 = fi - i0f
        wj1 = fj - j0f
        i0 = i0f.to(tl.int32)
        j0 = j0f.to(tl.int32)
        ok_i1 = (i0 + 1) < H
        ok_j1 = (j0 + 1) < W
        src00 = i0 * W + j0
        src10 = src00 + W
        return ((1.0 - wi1) * (1.0 - wj1), (1.0 - wi1) * wj1, wi1 * (1.0 - wj1), wi1 * wj1,
                inside, inside & ok_j1, inside & ok_i1, inside & ok_i1 & ok_j1,
                src00, src00 + 1, src10, src10 + 1)

    @triton.jit
    def _nearest_tap(fi, fj, m, H, W):
        """(flat source cell, inside the grid) of the nearest cell, rounding half to even as torch."""
        ri = _round_half_even(fi)
        rj = _round_half_even(fj)
        inside = m & (ri > -0.5) & (ri < H * 1.0 - 0.5) & (rj > -0.5) & (rj < W * 1.0 - 0.5)
        return tl.where(inside, ri.to(tl.int32) * W + rj.to(tl.int32), 0), inside

    @triton.jit
    def _fused_warp_step_kernel(
        prev_ptr, new_ptr, y_ptr, x_ptr, z_ptr, b_ptr, c_ptr, step_ptr, a_ptr, d_ptr, aff_ptr, reset_ptr,
        H, W, HW,
        s_prev_b, s_new_b, s_y_b, s_x_b, s_z_b, s_b_b, s_c_b, s_step_b,
        NHEADS: tl.constexpr, HEADDIM: tl.constexpr, DSTATE: tl.constexpr, NGROUPS: tl.constexpr,
        WARP: tl.constexpr, BILINEAR: tl.constexpr, HAS_RESET: tl.constexpr, BLOCK: tl.constexpr,
        P_PER: tl.constexpr, PREV_EVICT: tl.constexpr = "", IN_EVICT: tl.constexpr = "",
        NEW_CACHE: tl.constexpr = "", LANES: tl.constexpr = 0,
    ):
        # PREV_EVICT: L2 eviction hint of the previous-state loads (read once: "evict_first" may keep
        # the re-read inputs cached); IN_EVICT: the same for step/B/C/x/z, which every (head, p)
        # program of a cell block reads again ("evict_last"); NEW_CACHE: PTX cache operator of the
        # new-state stores (".cs" = streaming). "" = Triton's default; swept by scripts/gpu_fused_sweep.py.
        pid = tl.program_id(0)
        # axis 1 = (head, slice of P_PER of its headdim rows): more, smaller programs keep more
        # loads in flight than one program looping over the whole head
        n_slices = (HEADDIM + P_PER - 1) // P_PER
        h = tl.program_id(1) // n_slices
        p0 = (tl.program_id(1) % n_slices) * P_PER
        bi = tl.program_id(2).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)  # cell index i * W + j
        if LANES:  # one cell per thread, consecutive lanes = consecutive cells (see _cells_kernel)
            offs = tl.max_contiguous(offs, 1)
        m = offs < HW
        n = tl.arange(0, DSTATE)
        g = h // (NHEADS // NGROUPS)
        head_ch = h * HEADDIM * DSTATE  # first state channel of this head

        step = tl.load(step_ptr + bi * s_step_b + h * HW + offs, mask=m, other=0.0, eviction_policy=IN_EVICT)
        a = tl.load(a_ptr + h)
        dd = tl.load(d_ptr + h)
        decay = tl.exp(step * a)
        bt = tl.load(b_ptr + bi * s_b_b + (g * DSTATE + n[None, :]) * HW + offs[:, None], mask=m[:, None], other=0.0,
                     eviction_policy=IN_EVICT)
        ct = tl.load(c_ptr + bi * s_c_b + (g * DSTATE + n[None, :]) * HW + offs[:, None], mask=m[:, None], other=0.0,
                     eviction_policy=IN_EVICT)

        if WARP:
            fi_ = (offs // W).to(tl.float32)
            fj_ = (offs % W).to(tl.float32)
            fi, fj = _source_index(aff_ptr, bi, fi_, fj_)
            if BILINEAR:
                w00, w01, w10, w11, m00, m01, m10, m11, src00, src01, src10, src11 = _bilinear_taps(fi, fj, m, H, W)
            else:
                src, inside = _nearest_tap(fi, fj, m, H, W)
        if HAS_RESET:
            rst = tl.load(reset_ptr + bi * HW + offs, mask=m, other=0) != 0

        prev_base = prev_ptr + bi * s_prev_b + head_ch * HW
        new_base = new_ptr + bi * s_new_b + head_ch * HW
        for pp in tl.static_range(P_PER):
            p = p0 + pp
            mp = m & (p < HEADDIM)
            ch = ((p * DSTATE + n) * HW)[None, :]  # [1, N] channel offsets inside this head
            if WARP:
                if BILINEAR:
                    old = w00[:, None] * tl.load(prev_base + ch + src00[:, None], mask=(m00 & mp)[:, None], other=0.0,
                                                 eviction_policy=PREV_EVICT)
                    old += w01[:, None] * tl.load(prev_base + ch + src01[:, None], mask=(m01 & mp)[:, None], other=0.0,
                                                  eviction_policy=PREV_EVICT)
                    old += w10[:, None] * tl.load(prev_base + ch + src10[:, None], mask=(m10 & mp)[:, None], other=0.0,
                                                  eviction_policy=PREV_EVICT)
                    old += w11[:, None] * tl.load(prev_base + ch + src11[:, None], mask=(m11 & mp)[:, None], other=0.0,
                                                  eviction_policy=PREV_EVICT)
                else:
                    old = tl.load(prev_base + ch + src[:, None], mask=(inside & mp)[:, None], other=0.0,
                                  eviction_policy=PREV_EVICT)
            else:
                old = tl.load(prev_base + ch + offs[:, None], mask=mp[:, None], other=0.0, eviction_policy=PREV_EVICT)
            if HAS_RESET:
                old = tl.where(rst[:, None], 0.0, old)
            xp = tl.load(x_ptr + bi * s_x_b + (h * HEADDIM + p) * HW + offs, mask=mp, other=0.0, eviction_policy=IN_EVICT)
            new = old * decay[:, None] + (step * xp)[:, None] * bt
            tl.store(new_base + ch + offs[:, None], new, mask=mp[:, None], cache_modifier=NEW_CACHE)
            yp = tl.sum(new * ct, axis=1) + dd * xp
            zp = tl.load(z_ptr + bi * s_z_b + (h * HEADDIM + p) * HW + offs, mask=mp, other=0.0, eviction_policy=IN_EVICT)
            yp = yp * zp * tl.sigmoid(zp)
            tl.store(y_ptr + bi * s_y_b + (h * HEADDIM + p) * HW + offs, yp, mask=mp)

    @triton.jit
    def _fused_cells_kernel(
        prev_ptr, new_ptr, y_ptr, x_ptr, z_ptr, b_ptr, c_ptr, step_ptr, a_ptr, d_ptr, aff_ptr, reset_ptr,
        H, W, HW,
        s_prev_b, s_new_b, s_y_b, s_x_b, s_z_b, s_b_b, s_c_b, s_step_b, nprog,
        NHEADS: tl.constexpr, HEADDIM: tl.constexpr, DSTATE: tl.constexpr, NGROUPS: tl.constexpr,
        WARP: tl.constexpr, BILINEAR: tl.constexpr, HAS_RESET: tl.constexpr, BLOCK: tl.constexpr,
        P_PER: tl.constexpr, HEADS_PER: tl.constexpr = 1, LANES: tl.constexpr = 0, TILE_W: tl.constexpr = 0,
        RSPLIT: tl.constexpr = 1, NITER: tl.constexpr = 1,
        PREV_EVICT: tl.constexpr = "", IN_EVICT: tl.constexpr = "", NEW_CACHE: tl.constexpr = "",
    ):
        # Variant "cells": a program owns a block of cells and HEADS_PER heads (all their headdim rows,
        # P_PER rows per iteration of a loop that is not unrolled) instead of one headdim row. What the
        # "rows" kernel repeats in each of its NHEADS*HEADDIM/P_PER programs per cell block is done once
        # here: the warp's source indices and bilinear weights, the loads of B and C (64 B per cell that
        # the rows kernel re-reads 64 times at P_PER 1, as many bytes from L2 as the state itself) and of
        # step. Axis 0 (nprog programs) may be smaller than the number of cell blocks (persistent
        # launch: each program then strides over the blocks). LANES=1 tells the compiler that no cell run is contiguous,
        # which makes it give every thread one cell (consecutive lanes = consecutive cells) instead of
        # 4 consecutive cells loaded by 4 scalar loads whose lanes lie 16 B apart: one gather
        # instruction then spans ~1 cache line instead of ~4. TILE_W > 0: blocks are 2-D tiles of
        # BLOCK // TILE_W grid rows x TILE_W columns instead of BLOCK consecutive cells, so the
        # bilinear taps of the next row (src10, src11) are mostly the same lines as the taps of the
        # tile's next row (L1 hits instead of L2 reads), and no integer division by W per cell.
        # RSPLIT > 1 splits each head's rows over RSPLIT programs (more, shorter programs: a smaller
        # last wave; B, C and step are then read RSPLIT times per head).
        h_first = (tl.program_id(1) // RSPLIT) * HEADS_PER
        p_first = (tl.program_id(1) % RSPLIT) * (HEADDIM // RSPLIT)  # RSPLIT divides HEADDIM (checked)
        bi = tl.program_id(2).to(tl.int64)
        g = h_first // (NHEADS // NGROUPS)  # HEADS_PER divides NHEADS // NGROUPS (checked by the caller)
        n = tl.arange(0, DSTATE)
        for it in tl.range(0, NITER):  # NITER = ceil(cell blocks / nprog); past the last block all is masked
            blk = tl.program_id(0) + it * nprog
            if TILE_W > 0:  # a tile of BLOCK // TILE_W rows x TILE_W columns of cells
                n_tj = tl.cdiv(W, TILE_W)
                ci = (blk // n_tj) * (BLOCK // TILE_W) + tl.arange(0, BLOCK) // TILE_W
                cj = (blk % n_tj) * TILE_W + tl.arange(0, BLOCK) % TILE_W
                m = (ci < H) & (cj < W)
                offs = ci * W + cj
            else:  # BLOCK consecutive cells (row-major)
                offs = blk * BLOCK + tl.arange(0, BLOCK)
                m = offs < HW
                ci = offs // W
                cj = offs % W
            if LANES:
                offs = tl.max_contiguous(offs, 1)
            bt = tl.load(b_ptr + bi * s_b_b + (g * DSTATE + n[None, :]) * HW + offs[:, None], mask=m[:, None],
                         other=0.0, eviction_policy=IN_EVICT)
            ct = tl.load(c_ptr + bi * s_c_b + (g * DSTATE + n[None, :]) * HW + offs[:, None], mask=m[:, None],
                         other=0.0, eviction_policy=IN_EVICT)
            if WARP:
                fi_ = ci.to(tl.float32)
                fj_ = cj.to(tl.float32)
                fi, fj = _source_index(aff_ptr, bi, fi_, fj_)
                if BILINEAR:
                    w00, w01, w10, w11, m00, m01, m10, m11, src00, src01, src10, src11 = _bilinear_taps(fi, fj, m, H, W)
                else:
                    src, inside = _nearest_tap(fi, fj, m, H, W)
            if HAS_RESET:
                rst = tl.load(reset_ptr + bi * HW + offs, mask=m, other=0) != 0
            for hh in tl.static_range(HEADS_PER):
                h = h_first + hh
                step = tl.load(step_ptr + bi * s_step_b + h * HW + offs, mask=m, other=0.0,
                               eviction_policy=IN_EVICT)
                a = tl.load(a_ptr + h)
                dd = tl.load(d_ptr + h)
                decay = tl.exp(step * a)
                prev_base = prev_ptr + bi * s_prev_b + h * HEADDIM * DSTATE * HW
                new_base = new_ptr + bi * s_new_b + h * HEADDIM * DSTATE * HW
                for p0 in tl.range(0, HEADDIM // RSPLIT, P_PER):
                    for pp in tl.static_range(P_PER):
                        p = p_first + p0 + pp
                        mp = m & (p0 + pp < HEADDIM // RSPLIT)
                        ch = ((p * DSTATE + n) * HW)[None, :]
                        if WARP:
                            if BILINEAR:
                                old = w00[:, None] * tl.load(prev_base + ch + src00[:, None], mask=(m00 & mp)[:, None],
                                                             other=0.0, eviction_policy=PREV_EVICT)
                                old += w01[:, None] * tl.load(prev_base + ch + src01[:, None],
                                                              mask=(m01 & mp)[:, None], other=0.0,
                                                              eviction_policy=PREV_EVICT)
                                old += w10[:, None] * tl.load(prev_base + ch + src10[:, None],
                                                              mask=(m10 & mp)[:, None], other=0.0,
                                                              eviction_policy=PREV_EVICT)
                                old += w11[:, None] * tl.load(prev_base + ch + src11[:, None],
                                                              mask=(m11 & mp)[:, None], other=0.0,
                                                              eviction_policy=PREV_EVICT)
                            else:
                                old = tl.load(prev_base + ch + src[:, None], mask=(inside & mp)[:, None], other=0.0,
                                              eviction_policy=PREV_EVICT)
                        else:
                            old = tl.load(prev_base + ch + offs[:, None], mask=mp[:, None], other=0.0,
                                          eviction_policy=PREV_EVICT)
                        if HAS_RESET:
                            old = tl.where(rst[:, None], 0.0, old)
                        xp = tl.load(x_ptr + bi * s_x_b + (h * HEADDIM + p) * HW + offs, mask=mp, other=0.0,
                                     eviction_policy=IN_EVICT)
                        new = old * decay[:, None] + (step * xp)[:, None] * bt
                        tl.store(new_base + ch + offs[:, None], new, mask=mp[:, None], cache_modifier=NEW_CACHE)
                        yp = tl.sum(new * ct, axis=1) + dd * xp
                        zp = tl.load(z_ptr + bi * s_z_b + (h * HEADDIM + p) * HW + offs, mask=mp, other=0.0,
                                     eviction_policy=IN_EVICT)
                        yp = yp * zp * tl.sigmoid(zp)
                        tl.store(y_ptr + bi * s_y_b + (h * HEADDIM + p) * HW + offs, yp, mask=mp)

    # Block shapes are picked per problem size on the GPU (the kernel writes only its outputs, so
    # the autotuner's repeated launches are harmless); the interpreter uses one fixed shape.
    # (BLOCK, P_PER, num_warps, num_stages): the fastest shapes of the H100 sweep at 200x200
    # (results/gpu_fused_sweep_h100.json: 512/1/4 0.100 ms = 1.81x the bound, 256/1/2, 512/1/2,
    # 128/1/2 within 7 % of it) first, then wider ones for other model sizes and grids (64/1/2 won
    # at 256x256, 256/4/4 and one program per head suit a larger headdim).
    # The tail adds shapes with more bytes in flight per program and fewer re-reads of step/B/C
    # (P_PER > 1, 8 warps) for GPUs with more memory bandwidth per SM than the H100 (H200: the H100
    # winner reached only 2.53x of its bound there); a GPU model with a measured winner in
    # fused_launch.json skips autotuning altogether.
    _CONFIGS = [
        triton.Config({"BLOCK": b, "P_PER": pp}, num_warps=w, num_stages=st)
        for b, pp, w, st in ((512, 1, 4, 1), (256, 1, 2, 3), (512, 1, 2, 3), (128, 1, 2, 3), (256, 1, 4, 3),
                             (64, 1, 2, 3), (128, 1, 4, 3), (256, 4, 4, 3), (256, 2, 8, 3), (128, 16, 4, 3),
                             (1024, 1, 8, 1), (512, 2, 8, 1), (512, 4, 8, 1), (256, 8, 8, 1), (1024, 2, 8, 1))
    ]
    _fused_warp_step_autotuned = triton.autotune(
        configs=_CONFIGS, key=["HW", "NHEADS", "HEADDIM", "DSTATE", "NGROUPS", "WARP", "BILINEAR", "HAS_RESET"]
    )(_fused_warp_step_kernel)


LAUNCH_TABLE = Path(__file__).with_name("fused_launch.json")
_device_launch: dict = {}  # device index -> (device name, fixed config or None)


def launch_table() -> dict:
    """{device-name prefix: entry} from fused_launch.json (empty if unreadable)."""
    try:
        return json.loads(LAUNCH_TABLE.read_text()).get("devices", {})
    except (OSError, ValueError):
        return {}


def device_launch(device: torch.device) -> tuple[str, dict | None]:
    """(GPU name, the fixed launch measured for this GPU model, or None: autotune). Looked up once
    per device; the longest matching name prefix wins. SSM_PERCEPTION_FUSED_AUTOTUNE=1 ignores the table."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _device_launch:
        name = torch.cuda.get_device_name(idx)
        entry = None
        if os.environ.get("SSM_PERCEPTION_FUSED_AUTOTUNE") != "1":
            matches = [k for k in launch_table() if name.startswith(k)]
            if matches:
                entry = dict(launch_table()[max(matches, key=len)]["config"])
        _device_launch[idx] = (name, entry)
    return _device_launch[idx]


_last_launch: dict = {}


def best_config() -> str | None:
    """The launch used last (for benchmark records): the per-GPU table's entry, or what the
    autotuner picked."""
    if _last_launch.get("fixed") is not None:
        return f"fixed for {_last_launch['device']}: {_last_launch['fixed']}"
    if triton is None or getattr(_fused_warp_step_autotuned, "best_config", None) is None:
        return None
    return str(_fused_warp_step_autotuned.best_config)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _cell_aligned(t: Tensor) -> Tensor:
    """The kernel wants channel stride H*W and cell stride 1 (any batch stride): channel slices of
    a contiguous [B, C, H, W] tensor already are; anything else is made contiguous."""
    _, _, hh, ww = t.shape
    if t.stride(3) == 1 and t.stride(2) == ww and t.stride(1) == hh * ww and t.dtype == torch.float32:
        return t
    return t.float().contiguous()


def fused_warp_step(h_prev: Tensor, z: Tensor, xs: Tensor, b: Tensor, c: Tensor, step: Tensor, A: Tensor,
                    D: Tensor, nheads: int, headdim: int, d_state: int, ngroups: int,
                    warp: tuple[Tensor, bool] | None = None, reset_mask: Tensor | None = None,
                    out: tuple[Tensor, Tensor] | None = None, config: dict | None = None) -> tuple[Tensor, Tensor]:
    """One fused step. h_prev [B, S, H, W] is the previous frame's state (not yet warped when
    ``warp`` = (affine [B, 6], bilinear) from ``warp_params`` is given; None = no motion);
    z, xs [B, nheads*headdim, H, W]; b, c [B, ngroups*d_state, H, W]; step [B, nheads, H, W];
    A, D [nheads]; reset_mask [B, H, W] bool in the current frame (cleared before the update).
    Returns y [B, nheads*headdim, H, W] (gated) and the new state [B, S, H, W].
    ``out`` = (y, h_new) preallocated buffers (CUDA graphs); h_new must not alias h_prev.
    ``config`` fixes the launch instead of autotuning it (the interpreter always uses a fixed one):
    {"BLOCK": cells per program, "P_PER": headdim rows per program} and optionally the kernel's
    cache hints ("PREV_EVICT", "IN_EVICT", "NEW_CACHE") and Triton's "num_warps" / "num_stages"
    (see LAUNCH_KEYS; scripts/gpu_fused_sweep.py sweeps them)."""
    if triton is None:
        raise RuntimeError("model.backend 'fused' needs the 'triton' package (pip install triton)")
    if not h_prev.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("model.backend 'fused' runs on a CUDA device (or on CPU under TRITON_INTERPRET=1)")
    if d_state & (d_state - 1):
        raise ValueError(f"model.backend 'fused' needs d_state to be a power of two, got {d_state}")
    bsz, s, hh, ww = h_prev.shape
    if s != nheads * headdim * d_state:
        raise ValueError(f"state has {s} channels, expected nheads*headdim*d_state = {nheads * headdim * d_state}")
    hw = hh * ww
    dev = h_prev.device
    h_prev = _cell_aligned(h_prev)
    z, xs, b, c, step = (_cell_aligned(t) for t in (z, xs, b, c, step))
    if out is None:
        y = torch.empty(bsz, nheads * headdim, hh, ww, device=dev, dtype=torch.float32)
        h_new = torch.empty_like(h_prev, memory_format=torch.contiguous_format)
    else:
        y, h_new = out
    if warp is None:
        aff, bilinear = torch.zeros(bsz, 6, device=dev), False
    else:
        aff, bilinear = warp
        if aff.device != dev:  # a host affine (eager step): pinned, asynchronous (a pageable copy waits for the stream)
            from ssm_perception.bev.device import upload

            aff = upload(aff.to(torch.float32).contiguous(), dev)
        aff = aff.to(dtype=torch.float32).reshape(bsz, 6).contiguous()
    reset = None if reset_mask is None else reset_mask.to(device=dev).reshape(bsz, hw).to(torch.uint8).contiguous()
    args = (
        h_prev, h_new, y, xs, z, b, c, step, A.float().contiguous(), D.float().contiguous(), aff,
        reset if reset is not None else aff,
        hh, ww, hw,
        h_prev.stride(0), h_new.stride(0), y.stride(0), xs.stride(0), z.stride(0), b.stride(0), c.stride(0),
        step.stride(0),
    )
    meta = {"NHEADS": nheads, "HEADDIM": headdim, "DSTATE": d_state, "NGROUPS": ngroups,
            "WARP": warp is not None, "BILINEAR": bool(bilinear), "HAS_RESET": reset is not None}
    if config is None and dev.type == "cuda":
        name, fixed = device_launch(dev)
        _last_launch.update(device=name, fixed=fixed)
        config = fixed  # None: autotune (a GPU model without a measured winner)
    if config is not None or os.environ.get("TRITON_INTERPRET") == "1":
        cfg = {"BLOCK": BLOCK_CELLS, "P_PER": headdim, **(config or {})}
        unknown = set(cfg) - set(LAUNCH_KEYS)
        if unknown:
            raise ValueError(f"unknown fused-step config keys {sorted(unknown)}; known: {list(LAUNCH_KEYS)}")
        variant = cfg.pop("VARIANT", "rows")
        if variant == "rows":
            extra = {"HEADS_PER", "PERSIST", "TILE_W", "RSPLIT"} & set(cfg)
            if extra:
                raise ValueError(f"fused-step config keys {sorted(extra)} need VARIANT 'cells'")
            grid = (math.ceil(hw / cfg["BLOCK"]), nheads * math.ceil(headdim / cfg["P_PER"]), bsz)
            _fused_warp_step_kernel[grid](*args, **meta, **cfg)
        elif variant == "cells":
            hp = cfg.setdefault("HEADS_PER", 1)
            if hp < 1 or (nheads // ngroups) % hp:
                raise ValueError(f"HEADS_PER must divide the heads per group ({nheads // ngroups}), got {hp}")
            persist = cfg.pop("PERSIST", 0)
            rsplit = cfg.setdefault("RSPLIT", 1)
            if rsplit < 1 or headdim % rsplit:
                raise ValueError(f"RSPLIT must divide headdim ({headdim}), got {rsplit}")
            tile_w = cfg.get("TILE_W", 0)
            if tile_w:
                if tile_w & (tile_w - 1) or cfg["BLOCK"] % tile_w:
                    raise ValueError(f"TILE_W must be a power of two dividing BLOCK, got {tile_w}")
                nblocks = math.ceil(hh / (cfg["BLOCK"] // tile_w)) * math.ceil(ww / tile_w)
            else:
                nblocks = math.ceil(hw / cfg["BLOCK"])
            nprog = nblocks
            if persist:  # about PERSIST programs per SM in all: each strides over the cell blocks
                sms = _sm_count(dev.index if dev.index is not None else torch.cuda.current_device()) \
                    if dev.type == "cuda" else 2
                nprog = min(nblocks, max(1, math.ceil(persist * sms / (nheads // hp * rsplit * bsz))))
            _fused_cells_kernel[(nprog, nheads // hp * rsplit, bsz)](*args, nprog, **meta, **cfg,
                                                               NITER=math.ceil(nblocks / nprog))
        else:
            raise ValueError(f"unknown fused-step VARIANT {variant!r}; known: {list(VARIANTS)}")
    else:
        def grid(cfg):
            return (triton.cdiv(hw, cfg["BLOCK"]), nheads * triton.cdiv(headdim, cfg["P_PER"]), bsz)

        _fused_warp_step_autotuned[grid](*args, **meta)
    return y, h_new
