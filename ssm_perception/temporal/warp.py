"""Ego-motion warp: resample the previous cell-aligned state into the current base_link frame.

The state lives on an ego-centred grid, so when the vehicle moves, every cell's memory must move
the opposite way. Only the planar part (x, y, yaw) of the motion is used (the BEV grid is 2D).
A current cell centre p_cur maps to p_prev = T_prev_cur @ p_cur in the previous frame; the
previous state is sampled there with torch grid_sample. Cells whose source lies outside the
previous grid get exactly zero (== the initial state, see temporal/base.py).

Exactness: when every source point falls on a cell centre (integer-cell shifts, 90-degree turns
of a centred grid) the bilinear mode samples with 'nearest', so values move bit-exactly instead
of picking up ~1e-6 weights from float32 round-off in grid_sample's un-normalization.

Two samplers, identical values (bit-for-bit in the tests): channels-last CPU tensors (the Mamba
state on CPU, see temporal/mamba.py) are gathered as cell rows, [B*H*W, C], with grid_sample's own
four bilinear taps and weights through ``F.embedding_bag(mode='sum')``: one pass that reads whole
contiguous cells (2 KB for the default state) instead of 512 separate channel planes, ~3-4x faster
than grid_sample at 128x128 on 2 cores. Every other tensor (NCHW, CUDA) goes through grid_sample.
The output keeps the input's memory format.

Bilinear (default) diffuses memory a little on every non-aligned step but keeps its position:
driving a 2 m circle in 72 steps moves a blob's centroid by < 0.1 m (it blurs: peak error 0.56
for a sigma = 3 cell blob). 'nearest' keeps values sharp but drifts by up to half a cell per step
(> 1 m over the same circle), so it is only the right choice for cell-aligned motion.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssm_perception.bev.device import upload
from ssm_perception.bev.grid import BevGrid
from ssm_perception.geometry import invert_transform, se2_from_se3
from ssm_perception.temporal.base import State

# Source points within this fraction of a cell of a cell centre count as cell-aligned.
_ALIGN_TOL = 1e-4
_HUGE_PAGE = 1 << 21  # bytes (x86-64 / arm64 transparent huge page)
_MADV_HUGEPAGE = 14  # linux/mman.h
_BLOCK_BYTES = 1 << 21  # rows per gather block: ~2 MiB of output, cache-sized


@functools.cache
def _madvise():
    """libc's madvise, or None off Linux/glibc (then tensors keep the default page size)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def empty_rows(rows: int, channels: int, dtype=torch.float32) -> Tensor:
    """torch.empty([rows, channels]) on the CPU, asked to be backed by transparent huge pages.

    Why: glibc maps every block of >= 32 MiB freshly (the state is 32 MiB at 128x128), so a new
    state-sized tensor is first written in 4 KiB pages: ~8k page faults, 10-16 ms on the 2-core
    machine, more than the arithmetic of the step. madvise(MADV_HUGEPAGE) before the first write
    lets Linux fault it in 2 MiB pages (~4 ms). torch only does this for the whole process, at
    start-up (THP_MEM_ALLOC_ENABLE), hence the ctypes call here. A hint: where the kernel has
    THP off or no huge page at hand, the tensor simply keeps 4 KiB pages; values never change."""
    out = torch.empty(rows, channels, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    madvise = _madvise() if nbytes >= 2 * _HUGE_PAGE else None
    if madvise is not None:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE  # whole huge pages inside the block
        stop = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if stop > start:
            madvise(start, stop - start, _MADV_HUGEPAGE)  # a failure (EINVAL without THP) is harmless
    return out


def se2_between(T_odom_base_prev, T_odom_base_cur) -> tuple[float, float, float]:
    """Motion of the current base_link expressed in the previous base_link, planar part:
    T_prev_cur = inv(T_odom_base_prev) @ T_odom_base_cur -> (dx, dy, dyaw)."""
    t_prev = np.asarray(T_odom_base_prev, dtype=np.float64)
    t_cur = np.asarray(T_odom_base_cur, dtype=np.float64)
    if t_prev.shape != (4, 4) or t_cur.shape != (4, 4):
        raise ValueError("se2_between expects two 4x4 transforms")
    return se2_from_se3(invert_transform(t_prev) @ t_cur)


def _as_se2_batch(T_prev_cur, batch: int) -> Tensor:
    """Accepts (dx, dy, dyaw), a 4x4, [B, 4, 4], or [B, 3] -> float64 [B, 3] (dx, dy, dyaw).
    A frame converts the same numpy motion several times (reset policy, health monitor, temporal
    step): the last few results are kept; treat the returned tensor as read-only."""
    if not isinstance(T_prev_cur, np.ndarray):
        return _se2_batch(T_prev_cur, batch)
    key = (T_prev_cur.dtype.str, T_prev_cur.shape, T_prev_cur.tobytes(), batch)
    hit = _SE2.get(key)
    if hit is None:
        hit = _se2_batch(T_prev_cur, batch)
        if len(_SE2) >= 8:
            _SE2.pop(next(iter(_SE2)))
        _SE2[key] = hit
    return hit


_SE2: dict = {}


def _se2_batch(T_prev_cur, batch: int) -> Tensor:
    if isinstance(T_prev_cur, tuple | list) and len(T_prev_cur) == 3 and np.ndim(T_prev_cur[0]) == 0:
        se2 = torch.tensor([T_prev_cur], dtype=torch.float64)
    else:
        t = torch.as_tensor(np.asarray(T_prev_cur.cpu() if isinstance(T_prev_cur, Tensor) else T_prev_cur),
                            dtype=torch.float64)
        if t.shape == (4, 4):
            t = t.unsqueeze(0)
        if t.dim() == 3 and t.shape[1:] == (4, 4):
            se2 = torch.stack([t[:, 0, 3], t[:, 1, 3], torch.atan2(t[:, 1, 0], t[:, 0, 0])], 1)
        elif t.dim() == 2 and t.shape[1] == 3:
            se2 = t
        else:
            raise ValueError(f"T_prev_cur must be (dx, dy, dyaw), 4x4, [B,4,4] or [B,3]; got {tuple(t.shape)}")
    if not np.isfinite(se2.numpy()).all():  # (host numbers: checked in numpy, nothing dispatched)
        raise ValueError("T_prev_cur is not finite")
    if se2.shape[0] == 1 and batch > 1:
        se2 = se2.expand(batch, 3)
    if se2.shape[0] != batch:
        raise ValueError(f"T_prev_cur has {se2.shape[0]} poses for a batch of {batch}")
    return se2


@functools.lru_cache(maxsize=8)
def _cell_centres64(grid: BevGrid, device: torch.device) -> tuple[Tensor, Tensor]:
    """float64 [H, W] x and y of the current cell centres on ``device`` (made once per grid and device)."""
    ii = torch.arange(grid.nx, dtype=torch.float64, device=device)
    jj = torch.arange(grid.ny, dtype=torch.float64, device=device)
    gi, gj = torch.meshgrid(ii, jj, indexing="ij")
    return grid.x_min + (gi + 0.5) * grid.resolution, grid.y_min + (gj + 0.5) * grid.resolution


def source_indices(T_prev_cur, grid: BevGrid, batch: int = 1, device=None) -> Tensor:
    """Fractional (i, j) in the previous grid of every current cell centre: float64 [B, H, W, 2],
    computed on ``device`` (None: the CPU; only the three motion numbers go up)."""
    se2 = _as_se2_batch(T_prev_cur, batch)
    dev = torch.device("cpu") if device is None else torch.device(device)
    return _source_from_motion(upload(se2.contiguous(), dev), grid)


def _source_from_motion(se2: Tensor, grid: BevGrid) -> Tensor:
    """Fractional (i, j) in the previous grid of every current cell centre [B, H, W, 2], from the
    motion (dx, dy, dyaw) [B, 3] float64 on its device (pure tensor arithmetic: graph-capturable)."""
    x, y = _cell_centres64(grid, se2.device)  # [H, W] current cell centres
    c = torch.cos(se2[:, 2]).view(-1, 1, 1)
    s = torch.sin(se2[:, 2]).view(-1, 1, 1)
    xp = c * x - s * y + se2[:, 0].view(-1, 1, 1)  # [B, H, W] in the previous frame
    yp = s * x + c * y + se2[:, 1].view(-1, 1, 1)
    fi = (xp - grid.x_min) / grid.resolution - 0.5
    fj = (yp - grid.y_min) / grid.resolution - 0.5
    return torch.stack([fi, fj], -1)


def sampling_grid(T_prev_cur, grid: BevGrid, batch: int = 1, mode: str = "bilinear",
                  dtype=torch.float32, device=None, on_device: bool | None = None, graphs=None) -> tuple[Tensor, str]:
    """The grid_sample grid [B, H, W, 2] for a motion, and the mode to sample with.

    Outside handling is folded into the grid so a warp is one grid_sample pass (memory traffic
    is the cost on CPU): sources inside the previous grid's extent are clamped to the edge cell
    centres (no fade at the half-cell rim), sources outside are sent far off the grid where
    padding_mode='zeros' returns exactly 0. ``on_device`` None: the device way off the CPU (below);
    True on the CPU runs that way there (tests). ``graphs`` (a CUDA pipeline's GraphCache): the
    device way replays as a CUDA graph (only the three motion numbers go up)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    h, w = grid.shape
    dev = torch.device("cpu") if device is None else torch.device(device)
    # Off the CPU the grid is computed on the device (a host float64 grid of every cell cost ~1 ms
    # per warp, and its upload); whether the motion is cell-aligned is then decided on the host from
    # the motion's affine (fused_step.warp_params: the same criterion up to ~1e-7 of a cell).
    on_device = dev.type != "cpu" if on_device is None else on_device
    if on_device:
        se2, aligned = motion_for_grid(T_prev_cur, grid, batch, mode)
        se2 = upload(se2, dev)
        fn = functools.partial(_grid_from_motion, grid=grid, nearest=aligned, dtype=dtype)
        g = fn(se2) if graphs is None else graphs.run("warp_grid", (grid, aligned, dtype), fn, se2)
        return g, "nearest" if aligned else mode
    src = source_indices(T_prev_cur, grid, batch)  # [B, H, W, 2] float64 (i, j)
    if mode == "nearest" or bool((np.abs(src.numpy() - np.round(src.numpy())) < _ALIGN_TOL).all()):  # host
        src, mode = src.round(), "nearest"
    return upload(_grid_from_source(src, h, w).to(dtype=dtype), device), mode


def motion_for_grid(T_prev_cur, grid: BevGrid, batch: int = 1, mode: str = "bilinear") -> tuple[Tensor, bool]:
    """The host half of ``sampling_grid``'s device way: (the motion (dx, dy, dyaw) [B, 3] float64 on the
    host, contiguous; whether the grid is the nearest one: mode 'nearest', or a cell-aligned motion as
    fused_step.warp_params decides it). ``grid_from_motion`` on the device builds the grid from them."""
    from ssm_perception.temporal.fused_step import warp_params

    aligned = mode == "nearest" or not warp_params(T_prev_cur, grid, batch)[1]
    return _as_se2_batch(T_prev_cur, batch).contiguous(), aligned


def grid_from_motion(se2: Tensor, *, grid: BevGrid, nearest: bool, dtype) -> Tensor:
    """``sampling_grid``'s device way from ``motion_for_grid``'s motion on the device (pure tensor
    arithmetic, graph-capturable; sample with mode 'nearest' when ``nearest``)."""
    return _grid_from_motion(se2, grid=grid, nearest=nearest, dtype=dtype)


def _grid_from_motion(se2: Tensor, *, grid: BevGrid, nearest: bool, dtype) -> Tensor:
    """``sampling_grid`` from the motion (dx, dy, dyaw) [B, 3] float64 on its device: a pure tensor
    function (a CUDA graph), the arithmetic of ``source_indices``."""
    src = _source_from_motion(se2, grid)
    if nearest:
        src = src.round()
    return _grid_from_source(src, *grid.shape).to(dtype=dtype)


def _grid_from_source(src: Tensor, h: int, w: int) -> Tensor:
    fi, fj = src[..., 0], src[..., 1]
    inside = (fi > -0.5) & (fi < h - 0.5) & (fj > -0.5) & (fj < w - 0.5)
    far = -8.0  # cells, off the grid: bilinear taps at -8/-7 are both padding zeros
    fi = torch.where(inside, fi.clamp(0.0, h - 1.0), far)
    fj = torch.where(inside, fj.clamp(0.0, w - 1.0), far)
    # grid_sample (align_corners=False): last dim is (u along W, v along H) in [-1, 1].
    return torch.stack([(2.0 * fj + 1.0) / w - 1.0, (2.0 * fi + 1.0) / h - 1.0], -1)


def is_cell_rows(x: Tensor) -> bool:
    """True when x [B, C, H, W] is stored channels-last on the CPU (each cell's C values contiguous)."""
    return (x.device.type == "cpu" and x.shape[1] > 1 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def grid_taps(g: Tensor, mode: str, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """grid_sample's taps of a sampling grid g [B, H, W, 2] as bags of rows of a cell-major
    [B*H*W, C] table, for ``F.embedding_bag``: (rows [T] int64, weights [T], offsets [B*H*W] int64).

    Only taps inside the grid enter a bag (grid_sample's zero padding never reads outside, so a
    non-finite edge cell cannot leak through a zero weight), and a cell with no tap inside gets an
    empty bag, which embedding_bag returns as exactly zero. The arithmetic is grid_sample's own
    (align_corners=False): the un-normalization (g + 1) * size / 2 - 0.5 rounded once to g's
    dtype as its fused multiply-add does (float64 holds the product exactly), floor, then the
    same bilinear weights, so the values agree with grid_sample to the last bits of the sum."""
    b = g.shape[0]
    g64 = (g + 1.0).double()  # the +1 is rounded in g's dtype first, as in the kernel
    fj = (g64[..., 0] * (width / 2) - 0.5).to(g.dtype).reshape(b, -1)  # [B, H*W] along W
    fi = (g64[..., 1] * (height / 2) - 0.5).to(g.dtype).reshape(b, -1)  # along H
    if mode == "nearest":  # grid_sample rounds half to even, as torch.round does
        corners = [(fi.round(), fj.round(), torch.ones_like(fi))]
    else:
        i0, j0 = fi.floor(), fj.floor()
        di, dj = fi - i0, fj - j0
        corners = [(i0, j0, (1 - di) * (1 - dj)), (i0, j0 + 1, (1 - di) * dj),
                   (i0 + 1, j0, di * (1 - dj)), (i0 + 1, j0 + 1, di * dj)]
    base = (torch.arange(b, device=g.device) * (height * width)).view(b, 1)
    rows = torch.stack([base + ci.long() * width + cj.long() for ci, cj, _ in corners], -1)  # [B, H*W, K]
    wts = torch.stack([wk for *_, wk in corners], -1)
    inside = torch.stack([(ci >= 0) & (ci <= height - 1) & (cj >= 0) & (cj <= width - 1)
                          for ci, cj, _ in corners], -1)
    counts = inside.sum(-1).reshape(-1)  # taps per output cell, 0..K
    offsets = torch.cumsum(counts, 0) - counts
    return rows[inside], wts[inside], offsets  # boolean indexing keeps the cells' (and taps') order


def _gather(x: Tensor, taps: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Resample a channels-last x [B, C, H, W] with precomputed taps: each output cell is the
    weighted sum of its bag of input cells. embedding_bag does exactly that over table rows in one
    multithreaded pass (no library resamples cell-major rows with given taps; this is the closest
    fused primitive, so nothing here is hand-written beyond the taps)."""
    b, c, h, w = x.shape
    rows, wts, offsets = taps
    n = b * h * w
    table = x.permute(0, 2, 3, 1).reshape(n, c)  # [B*H*W, C], a view: x is channels-last
    if x.requires_grad and torch.is_grad_enabled():  # autograd: one differentiable call
        out = F.embedding_bag(rows, table, offsets, mode="sum", per_sample_weights=wts)  # [B*H*W, C]
    else:  # inference: cache-sized blocks into a huge-page output (see empty_rows)
        out = empty_rows(n, c, x.dtype)
        step = max(1, _BLOCK_BYTES // (c * x.element_size()))
        for i in range(0, n, step):
            out[i : i + step] = gather_rows(table, taps, i, min(i + step, n))
    return out.view(b, h, w, c).permute(0, 3, 1, 2)  # [B, C, H, W], channels-last


def row_taps(T_prev_cur, grid: BevGrid, batch: int = 1, mode: str = "bilinear", dtype=torch.float32,
             device=None) -> tuple[Tensor, Tensor, Tensor]:
    """The taps of a motion for ``gather_rows`` (the same taps warp_state gathers channels-last
    tensors with)."""
    g, mode = sampling_grid(T_prev_cur, grid, batch, mode, dtype, device)
    return grid_taps(g, mode, *grid.shape)


def gather_rows(table: Tensor, taps: tuple[Tensor, Tensor, Tensor], start: int, stop: int) -> Tensor:
    """Warped rows start..stop-1 (current cells, batch-major) of a cell-major table [B*H*W, C]:
    the same numbers as rows of warp_state's output, for a caller that consumes a block at a time."""
    rows, wts, offsets = taps
    lo = int(offsets[start])
    hi = int(offsets[stop]) if stop < offsets.numel() else rows.numel()
    return F.embedding_bag(rows[lo:hi], table, offsets[start:stop] - lo, mode="sum", per_sample_weights=wts[lo:hi])


class _Sampler:
    """One motion's sampling for any number of tensors: grid_sample, or row gathers with the
    same taps for channels-last CPU tensors (the taps are computed once, on first use)."""

    def __init__(self, g: Tensor, mode: str, height: int, width: int):
        self.g, self.mode, self.shape = g, mode, (height, width)
        self._taps = None

    def __call__(self, x: Tensor) -> Tensor:
        if is_cell_rows(x):
            if self._taps is None:
                self._taps = grid_taps(self.g, self.mode, *self.shape)
            return _gather(x, self._taps)
        return F.grid_sample(x, self.g, mode=self.mode, padding_mode="zeros", align_corners=False)


def warp_tensor(x: Tensor, T_prev_cur, grid: BevGrid, mode: str = "bilinear", graphs=None) -> Tensor:
    """Resample one cell-aligned tensor x [B, C, H, W] into the current frame (``graphs``: see
    ``sampling_grid``)."""
    b, _, h, w = x.shape
    if (h, w) != grid.shape:
        raise ValueError(f"tensor grid {h}x{w} does not match BevGrid {grid.nx}x{grid.ny}")
    g, mode = sampling_grid(T_prev_cur, grid, b, mode, x.dtype, x.device, graphs=graphs)
    return _Sampler(g, mode, h, w)(x)


def warp_state(state: State, T_prev_cur, grid: BevGrid, mode: str = "bilinear") -> State:
    """Warp every tensor of a state (all [B, C_k, H, W]) with the same motion.

    T_prev_cur: (dx, dy, dyaw) from ``se2_between``, a 4x4 transform, or per-batch [B, 4, 4] / [B, 3].
    The sampling grid is built once; each tensor is resampled in one pass (channels-last CPU
    tensors fastest: row gathers, see the module docstring)."""
    if not state:
        return {}
    first = next(iter(state.values()))
    for k, v in state.items():
        if v.dim() != 4 or v.shape[-2:] != grid.shape or v.shape[0] != first.shape[0]:
            raise ValueError(f"state[{k!r}] {tuple(v.shape)} is not [B, C, {grid.nx}, {grid.ny}]")
    g, mode = sampling_grid(T_prev_cur, grid, first.shape[0], mode, first.dtype, first.device)
    sample = _Sampler(g, mode, *grid.shape)
    return {k: sample(v) for k, v in state.items()}
