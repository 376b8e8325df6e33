"""The 'mamba_ssm' backend of MambaCore: the stock mamba-ssm Triton kernels with BEV cells as batch.

Imported lazily (only this backend needs mamba-ssm; ``make setup-gpu`` installs it on a CUDA
machine). Limits of the stock kernels (see ../shared/notes/mamba-ssm-on-the-gpu-machine.md):
- cells are the batch dimension, which sits on a GPU grid axis (at most 65,535) and the chunk scan
  crashes near 40k cells with its default chunk_size: calls are split into at most
  ``cfg.max_cells_per_call`` cells and the scan uses chunk_size 16;
- ``selective_state_update`` wants the state cell-major [cells, nheads, headdim, d_state], so the
  cell-aligned [B, S, H, W] state is transposed in and out (two extra passes; the 'fused' backend
  avoids them);
- the per-step ``dt`` is passed already discretized (softplus, dt/dt_nominal scaling and clamp are
  done by MambaCore), so the kernels run with dt_softplus=False and no dt_bias.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch
from torch import Tensor

_OPS = None


def _ops():
    """(selective_state_update, mamba_chunk_scan_combined), imported once with a clear error."""
    global _OPS
    if _OPS is not None:
        return _OPS
    if "mamba_ssm" not in sys.modules and importlib.util.find_spec("mamba_ssm") is None:
        raise RuntimeError(
            "model.backend 'mamba_ssm' needs the mamba-ssm package on a CUDA machine: run `make setup-gpu` "
            "(scripts/setup_gpu.sh; fetch its source archive first with scripts/fetch_gpu_sources.sh), "
            "or use model.backend 'reference'"
        )
    if "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None:
        # A Triton-only install (setup_gpu.sh --no-cuda-ext): mamba_ssm/__init__ imports the compiled
        # selective-scan extension unconditionally although the Mamba-2 kernels used here are
        # Triton; an empty stand-in lets the package import (Mamba-1's CUDA scan stays unusable).
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    _OPS = (selective_state_update, mamba_chunk_scan_combined)
    return _OPS


def version() -> str | None:
    try:
        from importlib.metadata import version as v

        return v("mamba-ssm")
    except Exception:  # noqa: BLE001 - not installed is a normal answer here
        return None


def _cell_ranges(n: int, limit: int):
    for start in range(0, n, limit):
        yield start, min(n, start + limit)


def step(core, h: Tensor, z: Tensor, xs: Tensor, b: Tensor, c: Tensor, step_: Tensor) -> tuple[Tensor, Tensor]:
    """One state update with ``selective_state_update``.

    h [B, S, H, W]; z, xs [B, d_inner, H, W]; b, c [B, G*N, H, W]; step_ [B, nheads, H, W]
    -> y [B, d_inner, H, W] (gated), new h [B, S, H, W]."""
    selective_state_update, _ = _ops()
    if not h.is_cuda:
        raise RuntimeError("model.backend 'mamba_ssm' runs on a CUDA device; use model.device 'cuda'")
    bsz, _, hh, ww = h.shape
    nh, p, n, g = core.nheads, core.headdim, core.d_state, core.ngroups

    def cells(v: Tensor, *tail: int) -> Tensor:  # [B, C, H, W] -> [B*H*W, *tail] (a transposed copy)
        return v.reshape(bsz, -1, hh * ww).transpose(1, 2).reshape(bsz * hh * ww, *tail).contiguous()

    state = cells(h, nh, p, n)  # [N, nh, P, Ns], updated in place by the kernel
    x_c, z_c = cells(xs, nh, p), cells(z, nh, p)
    dt_c = cells(step_, nh)
    b_c, c_c = cells(b, g, n), cells(c, g, n)
    A = core.A().view(nh, 1, 1).expand(nh, p, n)
    D = core.D.float().view(nh, 1).expand(nh, p)
    # A zero dt_bias with stride 0 like A and dt: the kernel's tied-headdim fast path dereferences
    # dt_bias unconditionally (it fails on None); adding 0.0 leaves dt exact.
    zero_bias = torch.zeros((), device=h.device).expand(nh, p)
    y = torch.empty_like(x_c)
    for s, e in _cell_ranges(state.shape[0], core.cfg.max_cells_per_call):
        y[s:e] = selective_state_update(
            state[s:e], x_c[s:e], dt_c[s:e].unsqueeze(-1).expand(e - s, nh, p), A, b_c[s:e], c_c[s:e],
            D=D, z=z_c[s:e], dt_bias=zero_bias, dt_softplus=False,
        )
    y = y.view(bsz, hh * ww, nh * p).transpose(1, 2).reshape(bsz, nh * p, hh, ww)
    h_new = state.view(bsz, hh * ww, -1).transpose(1, 2).reshape(bsz, -1, hh, ww)
    return y, h_new


def sequence(core, x: Tensor, step_: Tensor, b: Tensor, c: Tensor, z: Tensor, h0: Tensor,
             chunk_size: int = 16) -> tuple[Tensor, Tensor]:
    """Parallel scan over T with ``mamba_chunk_scan_combined`` and explicit ``initial_states``.

    x, z [N, T, nh, P]; step_ [N, T, nh]; b, c [N, T, G, Ns]; h0 [N, nh, P, Ns]
    -> y [N, T, nh, P] (gated, D included), final state [N, nh, P, Ns]."""
    _, mamba_chunk_scan_combined = _ops()
    if not x.is_cuda:
        raise RuntimeError("model.backend 'mamba_ssm' runs on a CUDA device; use model.device 'cuda'")
    A = core.A()
    D = core.D.float()
    ys, finals = [], []
    for s, e in _cell_ranges(x.shape[0], core.cfg.max_cells_per_call):
        y, final = mamba_chunk_scan_combined(
            x[s:e].contiguous(), step_[s:e].contiguous(), A, b[s:e].contiguous(), c[s:e].contiguous(),
            chunk_size, D=D, z=z[s:e].contiguous(), initial_states=h0[s:e].contiguous(),
            return_final_states=True,
        )
        ys.append(y)
        finals.append(final)
    return torch.cat(ys, 0), torch.cat(finals, 0)
