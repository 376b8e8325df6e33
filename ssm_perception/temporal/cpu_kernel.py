"""The Mamba state update of CPU inference as one compiled loop over cells (numba), warp included.

Why by hand: per cell the update is a [heads, headdim, d_state] block (4 x 16 x 8 for the default
model): decay times the warped previous state plus the outer product step * xs (x) B, read out
with C. In torch that is four broadcast passes over the whole state with an innermost dimension of
d_state = 8, plus the warp's row gather: ~35 ms per frame at 100 x 100 cells on one core, about 14
times the time of one copy of the 20 MiB state. No library fuses a bilinear row gather with this
update (the GPU has its own Triton kernel, temporal/fused_step.py); numba compiles the loop below,
which reads each previous row once per tap and writes each new row once.

Same arithmetic per element as ``MambaCore._ssm_step_cells`` (gather: sum of weight * row over the
taps in tap order, as embedding_bag; h' = h * decay + (step * xs) * B; y = sum_n h' C), except
that the read-out sums over d_state in index order (torch's reduction may pair terms differently),
so y and h' agree with the torch path to float32 rounding, not bit for bit (tests: 1e-5).

``available()`` is False where numba is not installed (or cannot compile); the caller then runs the
torch path. Compiled on first use and cached on disk (numba's cache), so only the first frame of a
fresh install pays the compilation (~2 s).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)


@functools.cache
def _kernel():
    """The compiled update, or None (numba missing or failing: the torch path runs instead)."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)
    def update(table, rows, wts, offsets, use_taps, reset, use_reset, decay, sx, b, c, out, y, heads_per_group):
        # table [cells, S] previous state rows; rows/wts/offsets: embedding_bag taps (bag i =
        # rows[offsets[i]:offsets[i + 1]]); reset [cells] bool; decay [cells, nh]; sx [cells, nh, P];
        # b, c [cells, G, N]; out [cells, nh, P, N] new state rows; y [cells, nh, P] read-out.
        cells, s = table.shape
        nh, p = sx.shape[1], sx.shape[2]
        n = b.shape[2]
        n_taps = rows.shape[0]
        src = np.empty(s, dtype=table.dtype)
        for i in range(cells):
            if use_taps:
                lo = offsets[i]
                hi = offsets[i + 1] if i + 1 < cells else n_taps
                for k in range(s):
                    src[k] = 0.0
                for t in range(lo, hi):
                    r = rows[t]
                    w = wts[t]
                    for k in range(s):
                        src[k] += w * table[r, k]
            else:
                for k in range(s):
                    src[k] = table[i, k]
            if use_reset and reset[i]:  # a reset cell starts from exactly 0 (also where it was NaN)
                for k in range(s):
                    src[k] = 0.0
            for h in range(nh):
                grp = h // heads_per_group
                d = decay[i, h]
                for q in range(p):
                    a = sx[i, h, q]
                    base = (h * p + q) * n
                    acc = np.float32(0.0)
                    for m in range(n):
                        v = src[base + m] * d + a * b[i, grp, m]
                        out[i, h, q, m] = v
                        acc += v * c[i, grp, m]
                    y[i, h, q] = acc

    return update


def available() -> bool:
    return not _failed and _kernel() is not None


def warm() -> bool:
    """Compile (or load from numba's cache) the update for what CPU inference passes (C-contiguous
    tensors; with and without the warp's taps and a reset), so that the first frame does not pay it
    (~1 s from the cache, ~3 s without). Returns whether the compiled update is available."""
    if _failed or _kernel() is None:
        return False
    import torch

    def z(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype)

    taps = (z(1, dtype=torch.int64), z(1), z(1, dtype=torch.int64))
    ok = True
    for t, r in ((taps, None), (None, z(1, dtype=torch.bool))):
        ok &= ssm_update(z(1, 8), t, r, z(1, 1), z(1, 1, 2), z(1, 1, 4), z(1, 1, 4), z(1, 1, 2, 4), z(1, 1, 2), 1)
    return bool(ok)


_failed: list[str] = []  # the reason, once a call failed: the torch path from then on


def ssm_update(table, taps, reset, decay, sx, b, c, out, y, heads_per_group: int) -> bool:
    """Run the compiled update on contiguous float32 CPU tensors (shapes as in ``update``); taps is
    warp.row_taps' (rows, weights, offsets) or None (no warp), reset a [cells] bool tensor or None.
    Returns False (nothing written) when the kernel is unavailable."""
    fn = None if _failed else _kernel()
    if fn is None:
        return False
    none_i = np.zeros(1, dtype=np.int64)
    rows, wts, offsets = (none_i, np.zeros(1, dtype=np.float32), none_i) if taps is None else \
        (t.numpy() for t in taps)
    rst = np.zeros(1, dtype=np.bool_) if reset is None else reset.numpy()
    out_a, y_a = out.numpy(), y.numpy()
    if not (out_a.flags.c_contiguous and y_a.flags.c_contiguous):
        return False  # written in place: the torch path handles other layouts
    # The inputs as C-contiguous arrays (copies only where a view is strided, e.g. the per-cell
    # step of an NCHW tensor, or an NCHW state on an episode's first frame): one compiled signature.
    rows, wts, offsets, rst = (np.ascontiguousarray(a) for a in (rows, wts, offsets, rst))
    inputs = [np.ascontiguousarray(t.numpy()) for t in (table, decay, sx, b, c)]
    try:
        fn(inputs[0], rows, wts, offsets, taps is not None, rst, reset is not None, *inputs[1:], out_a, y_a,
           int(heads_per_group))
    except Exception as exc:  # noqa: BLE001 - a compiler problem on this machine: the torch path from now on
        _failed.append(f"{type(exc).__name__}: {exc}")
        log.warning("compiled Mamba CPU update failed (%s); using the torch path", _failed[0])
        return False
    return True
