"""Mamba-2 style selective state space per BEV cell over time (the temporal core of the model).

Every BEV cell runs its own selective SSM over the frame sequence; cells share the weights, and a
depthwise 3x3 conv before and after the SSM block mixes neighbours a little (the SSM itself is
strictly per cell, so its state is cell-aligned and the generic ego-motion warp applies to it).

Per frame, per cell (shapes per cell; P = headdim, N = d_state, nheads = expand * d_model / P):

    u   = in_proj(x) ;  u = u + dwconv3x3(u)                       # [d_model]
    z, xs, B, C, dt_raw = split(mix_in(LayerNorm(u)))              # xs, B, C through SiLU
    step_h = min(softplus(dt_raw_h + dt_bias_h) * clamp(dt / dt_nominal, 0, DT_RATIO_MAX), STEP_MAX)
    h_h   <- exp(step_h * A_h) * h_h + step_h * xs_h (outer) B     # h_h [P, N], A_h = -exp(A_log_h) < 0
    y_h   = (h_h @ C + D_h * xs_h) * silu(z_h)                      # [P]
    u   = u + mix_out(RMSNorm(y)) ;  u = u + dwconv3x3(u) ;  out = LayerNorm(u)

``dt`` is the time since the previous frame in seconds and ``dt_nominal`` = 0.1 s (the 10 Hz rate
the model is trained at), so a frame twice as late decays the memory as much as two nominal frames
(exp(2 * step * A)): larger gaps forget more. The gap ratio and the step are clamped, so a huge or
infinite dt saturates to "forget almost everything" and never produces inf/NaN. Unlike Mamba the
block has no short causal conv1d over time: the state is then only the SSM state, which keeps it
small and cell-aligned (a conv window would add d_conv-1 past frames per cell that must be warped).

State: ``{'ssm': [B, nheads * headdim * d_state, H, W]}`` fp32, channels ordered (head, p, n).

Backends (``cfg.backend``), same parameters, same function:
- 'reference': pure PyTorch (CPU and GPU); ``forward_sequence`` is a chunked SSD-style scan.
- 'mamba_ssm': the stock Triton kernels of mamba-ssm (GPU; ``selective_state_update`` per step,
  ``mamba_chunk_scan_combined`` with ``initial_states`` per sequence), see temporal/mamba_kernels.py.
- 'fused': one Triton kernel per step that also gathers the ego-motion-warped previous state,
  see temporal/fused_step.py (inference only).
Agreement (results/gpu_parity.json, H100, 200x200, fp32 without TF32): 'mamba_ssm' and 'fused'
steps match 'reference' to ~1e-6; a bilinear-warped step to ~1e-4 (warp coordinates rounded in
fp32, the same size as the fp32 reference's own distance from float64); the stock chunk scan
(forward_sequence on 'mamba_ssm') to ~3e-3, because its matrix products run in TF32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_perception.config import ModelConfig
from ssm_perception.temporal import cpu_kernel
from ssm_perception.temporal.base import (
    State,
    TemporalCore,
    apply_reset,
    check_input,
    zeros_state,
)
from ssm_perception.temporal.warp import empty_rows, gather_rows, is_cell_rows, row_taps

DT_NOMINAL = 0.1  # [s] frame period the discretization is calibrated to
DT_RATIO_MAX = 50.0  # gaps beyond 5 s count as 5 s (all memory is gone long before that)
STEP_MAX = 10.0  # cap of the per-head step: exp(-10 * A) is below 5e-5 for every A <= -1
CELL_BLOCK = 1024  # cells per block of the CPU step (2 MiB of state at 2 KB per cell: cache-sized)
SCAN_CHUNK = 16  # time chunk of the parallel scan (the stock kernels want 8-16 for short sequences)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each cell of a [B, C, H, W] tensor (no permute needed)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def rms_norm_channels(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm over dim 1 of [B, C, ...]."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + eps) * weight.view(shape)


def segsum(a: Tensor) -> Tensor:
    """a [..., T] -> [..., T, T] with out[i, j] = sum_{k=j+1..i} a_k for i >= j, -inf above.

    Built from a masked cumsum instead of cumsum differences, so a -inf entry (a reset) gives
    -inf for the segments that cross it and never inf - inf = NaN."""
    t = a.shape[-1]
    a = a.unsqueeze(-1).expand(*a.shape, t)  # [..., T(k), T(j)]
    strict = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~strict, 0.0)
    out = torch.cumsum(a, dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=a.device))
    return out.masked_fill(~lower, -math.inf)


def ssd_scan(x: Tensor, log_a: Tensor, b: Tensor, c: Tensor, h0: Tensor, chunk: int = SCAN_CHUNK):
    """Chunked parallel form of h_t = exp(log_a_t) h_{t-1} + x_t (outer) b_t, y_t = h_t c_t.

    x [N, T, nh, P] (already scaled by the step), log_a [N, T, nh] (-inf = reset before the step),
    b, c [N, T, nh, Ns], h0 [N, nh, P, Ns] -> y [N, T, nh, P], final state [N, nh, P, Ns].
    Quadratic inside chunks of ``chunk`` frames, a recurrence over chunk states between them
    (the SSD "minimal" algorithm of Mamba-2, written out here for the per-cell layout)."""
    n, t, nh, p = x.shape
    k = -(-t // chunk)
    pad = k * chunk - t
    if pad:  # padded steps: decay 1, no input -> the state passes through unchanged
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, 0, 0, pad))
        c = F.pad(c, (0, 0, 0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
    x = x.view(n, k, chunk, nh, p)
    b = b.view(n, k, chunk, nh, -1)
    c = c.view(n, k, chunk, nh, -1)
    a = log_a.view(n, k, chunk, nh).permute(0, 3, 1, 2)  # [N, nh, K, L]
    a_cum = torch.cumsum(a, -1)
    decay = torch.exp(segsum(a))  # [N, nh, K, L(l), L(s)]
    # 1. inside each chunk: y_l += sum_{s<=l} (c_l . b_s) decay(l, s) x_s
    cb = torch.einsum("nklhd,nkshd->nhkls", c, b)
    y = torch.einsum("nhkls,nkshp->nklhp", cb * decay, x)
    # 2. each chunk's own contribution to the state at its end
    states = torch.einsum("nklhd,nhkl,nklhp->nkhpd", b, decay[..., -1, :], x)
    # 3. carry states across chunks, starting from h0
    states = torch.cat([h0.unsqueeze(1), states], 1)  # [N, K+1, nh, P, Ns]
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # [N, nh, K+1, K+1]
    states = torch.einsum("nhzc,nchpd->nzhpd", chunk_decay, states)
    start, final = states[:, :-1], states[:, -1]
    # 4. the state entering each chunk, decayed to each position, read out with c
    y = y + torch.einsum("nklhd,nkhpd,nhkl->nklhp", c, start, torch.exp(a_cum))
    return y.reshape(n, k * chunk, nh, p)[:, :t], final


class MambaCore(TemporalCore):
    """Selective SSM per BEV cell (see the module docstring). out_channels = cfg.d_model.

    The 'reference' backend. ``MambaCore(in_channels, cfg)`` builds the class of ``cfg.backend``
    (`MambaSsmCore`, `FusedMambaCore`: same parameters, so any checkpoint loads into any of them):
    the backend is chosen once, when the model is built, and no step branches on its name."""

    backend = "reference"

    def __new__(cls, in_channels: int = 0, cfg: ModelConfig | None = None):
        chosen = cls
        if cls is MambaCore:
            name = (cfg or ModelConfig()).backend
            if name not in BACKENDS:
                raise ValueError(f"unknown model.backend {name!r}; one of {sorted(BACKENDS)}")
            chosen = BACKENDS[name]
        return super().__new__(chosen)

    def __init__(self, in_channels: int, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.in_channels = in_channels
        self.out_channels = d_model = cfg.d_model
        self.d_inner = d_inner = cfg.expand * d_model
        if d_inner % cfg.headdim:
            raise ValueError(f"model.expand * model.d_model ({d_inner}) must be divisible by model.headdim ({cfg.headdim})")
        self.headdim = cfg.headdim
        self.d_state = cfg.d_state
        self.nheads = d_inner // cfg.headdim
        self.ngroups = 1  # B and C shared by all heads, as in Mamba-2's default

        self.in_proj = nn.Conv2d(in_channels, d_model, 1)
        self.dw_pre = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model)
        self.norm = ChannelLayerNorm(d_model)
        # z, xs, B, C, dt_raw
        self.mix_in = nn.Conv2d(d_model, 2 * d_inner + 2 * self.ngroups * self.d_state + self.nheads, 1, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        # Mamba's dt init: step ~ log-uniform in [1e-3, 1e-1] at the nominal rate; dt_bias = softplus^-1.
        step0 = torch.exp(torch.empty(self.nheads).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(step0 + torch.log(-torch.expm1(-step0)))
        self.gate_norm_weight = nn.Parameter(torch.ones(d_inner))
        self.mix_out = nn.Conv2d(d_inner, d_model, 1, bias=False)
        self.dw_post = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model)
        self.norm_out = ChannelLayerNorm(d_model)

    # ------------------------------------------------------------------ sizes
    @property
    def state_channels(self) -> int:
        return self.nheads * self.headdim * self.d_state

    def state_bytes_per_cell(self) -> int:
        return 4 * self.state_channels

    def init_state(self, batch: int, height: int, width: int, device=None) -> State:
        return zeros_state({"ssm": self.state_channels}, batch, height, width, device)

    # ------------------------------------------------------------------ shared pieces
    def _pre(self, x: Tensor) -> Tensor:
        u = self.in_proj(x)
        return u + self.dw_pre(u)  # u [B, d_model, H, W]

    def _project(self, u: Tensor, dt: Tensor):
        """u [B, d_model, H, W], dt [B] -> z, xs [B, d_inner, H, W]; b, c [B, G*N, H, W];
        step [B, nheads, H, W] (already dt-scaled and clamped)."""
        proj = self.mix_in(self.norm(u))
        gn = self.ngroups * self.d_state
        z, xbc, dt_raw = torch.split(proj, [self.d_inner, self.d_inner + 2 * gn, self.nheads], 1)
        xs, b, c = torch.split(F.silu(xbc), [self.d_inner, gn, gn], 1)
        step = F.softplus(dt_raw + self.dt_bias.view(1, -1, 1, 1)) * self.dt_ratio(dt).view(-1, 1, 1, 1)
        return z, xs, b, c, step.clamp(max=STEP_MAX)

    @staticmethod
    def dt_ratio(dt: Tensor) -> Tensor:
        """dt [B] seconds -> dt / dt_nominal, clamped to [0, DT_RATIO_MAX]; NaN counts as 0 (no update)."""
        dt = torch.as_tensor(dt, dtype=torch.float32)
        return torch.nan_to_num(dt / DT_NOMINAL, nan=0.0, posinf=DT_RATIO_MAX).clamp(0.0, DT_RATIO_MAX)

    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())  # [nheads], < 0

    def _post(self, u: Tensor, y: Tensor) -> Tensor:
        """u [B, d_model, H, W] residual stream, y [B, d_inner, H, W] gated SSM output -> [B, d_model, H, W]."""
        u = u + self.mix_out(rms_norm_channels(y, self.gate_norm_weight))
        u = u + self.dw_post(u)
        return self.norm_out(u)

    # ------------------------------------------------------------------ streaming
    def step(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None,
             out: State | None = None) -> tuple[Tensor, State]:
        """``out``: optional buffers for the new state (see ``warp_step``)."""
        check_input(self, x)
        dt = torch.as_tensor(dt, device=x.device).reshape(-1).expand(x.shape[0])
        if self._use_cells(state["ssm"], x, *self.parameters()):
            h = state["ssm"]
            if reset_mask is None:
                return self._step_cells(x, h, dt, out=out)
            # The reset goes into the block loop (as after a warp): no reset copy of the state.
            reset = self._reset_rows(reset_mask, h)
            return self._step_cells(x, h, dt, taps=None, reset=reset, out=out)
        state = apply_reset(state, reset_mask)
        u = self._pre(x)
        z, xs, b, c, step = self._project(u, dt)
        y, h = self._ssm_step(state["ssm"], z, xs, b, c, step)
        return self._post(u, y), {"ssm": h}

    def _use_cells(self, *tensors: Tensor) -> bool:
        """Whether the CPU cell-row step applies (reference backend in CPU inference)."""
        return self._cpu_inference(*tensors)

    def _ssm_step(self, h: Tensor, z, xs, b, c, step) -> tuple[Tensor, Tensor]:
        return self._ssm_step_reference(h, z, xs, b, c, step)

    def _ssm_step_reference(self, h: Tensor, z, xs, b, c, step) -> tuple[Tensor, Tensor]:
        """One state update in the cell-aligned layout. h [B, S, H, W] -> y [B, d_inner, H, W], h'."""
        if self._cpu_inference(h, z, xs, b, c, step):
            return self._ssm_step_cells(h, z, xs, b, c, step)
        bsz, _, hh, ww = h.shape
        nh, p, n, g = self.nheads, self.headdim, self.d_state, self.ngroups
        h = h.view(bsz, g, nh // g, p, n, hh, ww)
        step = step.view(bsz, g, nh // g, 1, 1, hh, ww)
        decay = torch.exp(step * self.A().view(1, g, nh // g, 1, 1, 1, 1))
        xs_h = xs.view(bsz, g, nh // g, p, 1, hh, ww)
        b = b.view(bsz, g, 1, 1, n, hh, ww)
        c = c.view(bsz, g, 1, 1, n, hh, ww)
        h_new = h * decay
        h_new.addcmul_(step * xs_h, b)  # + step * xs (outer) B, in place on the fresh tensor
        y = (h_new * c).sum(4) + self.D.view(1, g, nh // g, 1, 1, 1) * xs_h.squeeze(4)
        y = y.reshape(bsz, self.d_inner, hh, ww) * F.silu(z)
        return y, h_new.view(bsz, -1, hh, ww)

    @staticmethod
    def _cpu_inference(*tensors: Tensor) -> bool:
        """CPU and no autograd graph to build: the cell-row form applies (it writes into buffers)."""
        return tensors[0].device.type == "cpu" and not (
            torch.is_grad_enabled() and any(t.requires_grad for t in tensors))

    @staticmethod
    def _reset_rows(reset_mask: Tensor, h: Tensor) -> Tensor:
        """reset_mask [B, H, W] -> [B*H*W] bool in the cell-row order of h [B, S, H, W]."""
        if reset_mask.shape != (h.shape[0], *h.shape[-2:]):
            raise ValueError(f"reset_mask {tuple(reset_mask.shape)} does not match state {tuple(h.shape)}")
        return reset_mask.reshape(-1).bool()

    @staticmethod
    def _out_rows(out: State | None, h: Tensor) -> Tensor | None:
        """The caller's buffer for the new state as cell rows [B*H*W, S], or None to allocate.
        It must have h's shape and dtype, be a channels-last CPU tensor (what this path returns,
        so the previous-but-one state can be handed back) and must not overlap h: the update
        reads h (at warped rows) while it writes the buffer."""
        if out is None:
            return None
        o = out.get("ssm")
        if o is None or o.shape != h.shape or o.dtype != h.dtype or o.device != h.device or not is_cell_rows(o):
            raise ValueError(f"out['ssm'] must be a channels-last {h.dtype} tensor of shape {tuple(h.shape)} on "
                             f"{h.device}, got {None if o is None else (tuple(o.shape), o.dtype, o.device)}")
        lo, hi = h.data_ptr(), h.data_ptr() + h.numel() * h.element_size()
        olo, ohi = o.data_ptr(), o.data_ptr() + o.numel() * o.element_size()
        if olo < hi and lo < ohi:
            raise ValueError("out['ssm'] overlaps the state it is computed from; pass the previous-but-one state")
        return o.permute(0, 2, 3, 1).reshape(-1, o.shape[1])  # a view: o is channels-last

    def _ssm_step_cells(self, h: Tensor, z, xs, b, c, step, taps=None, reset: Tensor | None = None,
                        out: State | None = None) -> tuple[Tensor, Tensor]:
        """The same update for CPU inference, cell by cell: each cell's state is one contiguous row
        (the state is stored channels-last on CPU; an NCHW state is transposed once here), and the
        cells are processed in blocks of CELL_BLOCK so that the temporaries stay in cache and no
        state-sized temporary is allocated (a fresh 32 MiB tensor costs ~10 ms of page faults).
        Returns h' channels-last. Same arithmetic per element as the cell-aligned form.

        ``taps`` (warp.row_taps): h is the previous frame's state and each block's rows are
        gathered (ego-motion warp) right before their update; ``reset`` [B*H*W] bool then clears
        those cells after the warp (or without taps, straight away), before the update, as
        apply_reset does. ``out``: write h' into these buffers instead of a fresh tensor (see
        ``_out_rows``); with a buffer handed back every frame the step allocates nothing state-sized."""
        bsz, s, hh, ww = h.shape
        nh, p, n, g = self.nheads, self.headdim, self.d_state, self.ngroups
        hg = nh // g
        cells = bsz * hh * ww

        def rows(v: Tensor) -> Tensor:  # [B, C, H, W] -> [cells, C]
            return v.permute(0, 2, 3, 1).reshape(cells, v.shape[1])

        h_rows = rows(h).view(cells, g, hg, p, n)
        step_r = rows(step).view(cells, g, hg, 1, 1)  # [cells, g, hg, 1, 1]
        decay = torch.exp(step_r * self.A().view(1, g, hg, 1, 1))
        xs_r = rows(xs).view(cells, g, hg, p, 1)
        sx = step_r * xs_r  # [cells, g, hg, p, 1]
        b_r = rows(b).view(cells, g, 1, 1, n)
        c_r = rows(c).view(cells, g, 1, 1, n)
        out_rows = self._out_rows(out, h)
        h_new = (empty_rows(cells, s, h.dtype) if out_rows is None else out_rows).view(cells, g, hg, p, n)
        y_r = torch.empty(cells, g, hg, p, dtype=h.dtype)
        if h.dtype == torch.float32 and cpu_kernel.ssm_update(
                h_rows.reshape(cells, s), taps, reset, decay.view(cells, nh), sx.view(cells, nh, p),
                b_r.reshape(cells, g, n).contiguous(), c_r.reshape(cells, g, n).contiguous(),
                h_new.view(cells, nh, p, n), y_r.view(cells, nh, p), hg):
            return self._finish_cells(y_r, xs_r, z, h_new, bsz, hh, ww, s)  # the compiled loop (cpu_kernel.py)
        tmp = torch.empty(min(CELL_BLOCK, cells), g, hg, p, n, dtype=h.dtype)
        if taps is not None:
            table = h_rows.view(cells, s)
        for i in range(0, cells, CELL_BLOCK):
            blk = slice(i, i + CELL_BLOCK)
            hn = h_new[blk]
            if taps is None:
                src = h_rows[blk]
                if reset is not None:  # where(), not a product: a non-finite cell becomes exactly 0
                    src = torch.where(reset[blk].view(-1, 1, 1, 1, 1), 0.0, src)
            else:
                src = gather_rows(table, taps, i, min(i + CELL_BLOCK, cells)).view(-1, g, hg, p, n)
                if reset is not None:  # masked_fill, not a product: a non-finite cell becomes exactly 0
                    src.masked_fill_(reset[blk].view(-1, 1, 1, 1, 1), 0.0)
            torch.mul(src, decay[blk], out=hn)
            hn.addcmul_(sx[blk], b_r[blk])  # + step * xs (outer) B
            t = tmp[: hn.shape[0]]
            torch.mul(hn, c_r[blk], out=t)
            torch.sum(t, -1, out=y_r[blk])  # h' C
        return self._finish_cells(y_r, xs_r, z, h_new, bsz, hh, ww, s)

    def _finish_cells(self, y_r: Tensor, xs_r: Tensor, z: Tensor, h_new: Tensor, bsz: int, hh: int, ww: int,
                      s: int) -> tuple[Tensor, Tensor]:
        """The read-out's skip term and gate, and the new state as [B, S, H, W] channels-last."""
        g, hg = self.ngroups, self.nheads // self.ngroups
        y_r += self.D.view(1, g, hg, 1) * xs_r.squeeze(-1)  # + D xs (not addcmul: same rounding as the reference)
        y = y_r.view(bsz, hh, ww, self.d_inner).permute(0, 3, 1, 2)  # [B, d_inner, H, W] channels-last
        if not z.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous()  # one small transpose: the gate then runs in z's layout
        return y * F.silu(z), h_new.view(bsz, hh, ww, s).permute(0, 3, 1, 2)

    def _step_cells(self, x: Tensor, h: Tensor, dt: Tensor, taps=None, reset: Tensor | None = None,
                    out: State | None = None) -> tuple[Tensor, State]:
        """CPU inference step around ``_ssm_step_cells``. The activations stay NCHW: running them
        channels-last too saved a few ms but changes the convolutions' rounding (heads ~3e-5 off
        after the neck), while this way the outputs are bit-equal to the cell-aligned form."""
        u = self._pre(x)
        z, xs, b, c, step = self._project(u, dt)
        y, h_new = self._ssm_step_cells(h, z, xs, b, c, step, taps, reset, out)
        return self._post(u, y), {"ssm": h_new}

    def warp_step(self, x: Tensor, prev_state: State, T_prev_cur, dt: Tensor, reset_mask: Tensor | None = None,
                  grid=None, mode: str = "bilinear", out: State | None = None) -> tuple[Tensor, State]:
        """Warp the previous frame's state into the current frame and step, in one call.

        T_prev_cur and grid as for temporal.warp.warp_state (None = no motion). The 'fused' backend
        gathers the warped state inside its kernel (one pass over the state), and so does the
        reference backend in CPU inference (block by block); otherwise warp_state, then ``step``.
        ``out`` (CPU reference inference only, ignored elsewhere): buffers the new state is written
        into, typically the previous-but-one state handed back by a streaming caller; the returned
        state then *is* ``out``, so the caller must not keep using what it handed back."""
        dt = torch.as_tensor(dt, device=x.device).reshape(-1).expand(x.shape[0])
        if T_prev_cur is not None:
            if self._use_cells(prev_state["ssm"], *self.parameters()):
                return self._warp_step_cells(x, prev_state, T_prev_cur, dt, reset_mask, grid, mode, out)
            from ssm_perception.temporal.warp import warp_state

            prev_state = warp_state(prev_state, T_prev_cur, grid, mode)
        return self.step(x, prev_state, dt, reset_mask, out)

    def _warp_step_cells(self, x: Tensor, prev_state: State, T_prev_cur, dt: Tensor, reset_mask: Tensor | None,
                         grid, mode: str, out: State | None = None) -> tuple[Tensor, State]:
        """CPU inference: warp_state + step with the warp gathered block by block inside the
        update, so the warped state is never materialised (one state-sized allocation and one
        pass over the state instead of two). Same numbers as warp_state followed by ``step``."""
        check_input(self, x)
        h = prev_state["ssm"]
        if grid is None or h.dim() != 4 or h.shape[-2:] != grid.shape or h.shape[0] != x.shape[0]:
            raise ValueError(f"state {tuple(h.shape)} does not match the batch and the grid "
                             f"{None if grid is None else grid.shape}")
        if reset_mask is not None and reset_mask.shape != (h.shape[0], *h.shape[-2:]):
            raise ValueError(f"reset_mask {tuple(reset_mask.shape)} does not match state {tuple(h.shape)}")
        taps = row_taps(T_prev_cur, grid, h.shape[0], mode, h.dtype, h.device)
        reset = None if reset_mask is None else reset_mask.reshape(-1).bool()
        return self._step_cells(x, h, dt, taps, reset, out)

    def _check_inference(self, name: str) -> None:
        if torch.is_grad_enabled() and any(q.requires_grad for q in self.parameters()):
            raise RuntimeError(
                f"model.backend {name!r}: the streaming step is inference-only (no gradients); call it under "
                "torch.no_grad() / torch.inference_mode(), or train with backend 'reference' or with "
                "forward_sequence on 'mamba_ssm'"
            )

    # ------------------------------------------------------------------ parallel over time
    def _has_scan(self, has_resets: bool) -> bool:
        """Whether ``forward_sequence`` has a parallel form here (else it steps)."""
        return True

    def _scan(self, cells, step, x_in, b, c, z, h0, reset_masks) -> tuple[Tensor, Tensor]:
        """The chunked SSD scan over [cell, time]: y [N, T, nh, P], final h [N, nh, P, N_state]."""
        nh, n, g = self.nheads, self.d_state, self.ngroups
        p = self.headdim
        step_c = cells(step, nh)  # [N, T, nh]
        t = step_c.shape[1]
        log_a = step_c * self.A()
        if reset_masks is not None:  # reset before the update at t == decay 0 at t (first frame: h0 already cleared)
            r = reset_masks.reshape(t, -1).permute(1, 0).clone()
            r[:, 0] = False
            log_a = torch.where(r.unsqueeze(-1), torch.full((), -math.inf, device=log_a.device), log_a)
        x_c = cells(x_in, nh, p)
        b_c = cells(b, g, n).repeat_interleave(nh // g, dim=2)
        c_c = cells(c, g, n).repeat_interleave(nh // g, dim=2)
        y, h_final = ssd_scan(x_c * step_c.unsqueeze(-1), log_a, b_c, c_c, h0)
        return (y + self.D.view(1, 1, nh, 1) * x_c) * F.silu(cells(z, nh, p)), h_final

    def forward_sequence(self, xs: Tensor, dts: Tensor, reset_masks: Tensor | None = None,
                         state: State | None = None) -> tuple[Tensor, State]:
        """xs [T, B, C_in, H, W], dts [T, B] -> ys [T, B, d_model, H, W], final state.

        Equals T calls of ``step`` (fp32: max abs difference ~1e-5 on outputs, see the tests).
        The 'fused' backend has no parallel form and steps; 'mamba_ssm' steps when resets occur
        inside the sequence (the stock chunk scan cannot reset single cells mid-sequence)."""
        t, bsz, cin, hh, ww = xs.shape
        if cin != self.in_channels:
            raise ValueError(f"MambaCore: expected xs [T, B, {self.in_channels}, H, W], got {tuple(xs.shape)}")
        if state is None:
            state = self.init_state(bsz, hh, ww, xs.device)
        has_resets = reset_masks is not None and bool(reset_masks.any())
        if not self._has_scan(has_resets):
            return TemporalCore.forward_sequence(self, xs, dts, reset_masks, state)
        dts = torch.as_tensor(dts, device=xs.device).reshape(t, -1).expand(t, bsz)
        u = self._pre(xs.reshape(t * bsz, cin, hh, ww))
        z, x_in, b, c, step = self._project(u, dts.reshape(t * bsz))
        nh, p, n = self.nheads, self.headdim, self.d_state

        def cells(v: Tensor, *tail: int) -> Tensor:  # [T*B, C, H, W] -> [B*H*W, T, *tail]
            return v.view(t, bsz, -1, hh * ww).permute(1, 3, 0, 2).reshape(bsz * hh * ww, t, *tail)

        h0 = state["ssm"].view(bsz, nh, p, n, hh * ww).permute(0, 4, 1, 2, 3).reshape(-1, nh, p, n)
        if reset_masks is not None:
            h0 = torch.where(reset_masks[0].reshape(-1, 1, 1, 1), torch.zeros((), device=h0.device), h0)
        y, h_final = self._scan(cells, step, x_in, b, c, z, h0, reset_masks if has_resets else None)
        # y [N, T, nh, P] -> [T*B, d_inner, H, W]
        y = y.reshape(bsz, hh * ww, t, self.d_inner).permute(2, 0, 3, 1).reshape(t * bsz, self.d_inner, hh, ww)
        out = self._post(u, y).view(t, bsz, self.out_channels, hh, ww)
        h_final = h_final.reshape(bsz, hh * ww, -1).permute(0, 2, 1).reshape(bsz, -1, hh, ww)
        return out, {"ssm": h_final.contiguous()}


class MambaSsmCore(MambaCore):
    """'mamba_ssm': the stock mamba-ssm Triton kernels (temporal/mamba_kernels.py), GPU inference;
    ``forward_sequence`` with the stock chunk scan (steps when cells reset inside the sequence)."""

    backend = "mamba_ssm"

    def _use_cells(self, *tensors: Tensor) -> bool:
        return False

    def _ssm_step(self, h: Tensor, z, xs, b, c, step) -> tuple[Tensor, Tensor]:
        self._check_inference("mamba_ssm")
        from ssm_perception.temporal import mamba_kernels

        return mamba_kernels.step(self, h, z, xs, b, c, step)

    def _has_scan(self, has_resets: bool) -> bool:
        return not has_resets  # the stock chunk scan cannot reset single cells mid-sequence

    def _scan(self, cells, step, x_in, b, c, z, h0, reset_masks) -> tuple[Tensor, Tensor]:
        from ssm_perception.temporal import mamba_kernels

        nh, p, n, g = self.nheads, self.headdim, self.d_state, self.ngroups
        return mamba_kernels.sequence(self, cells(x_in, nh, p), cells(step, nh), cells(b, g, n), cells(c, g, n),
                                      cells(z, nh, p), h0)


class FusedMambaCore(MambaCore):
    """'fused': one Triton kernel per step that also gathers the ego-motion-warped previous state
    (temporal/fused_step.py); inference only, no parallel form (``forward_sequence`` steps)."""

    backend = "fused"

    def step(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None,
             out: State | None = None) -> tuple[Tensor, State]:
        return self.warp_step(x, state, None, dt, reset_mask)

    def warp_step(self, x: Tensor, prev_state: State, T_prev_cur, dt: Tensor, reset_mask: Tensor | None = None,
                  grid=None, mode: str = "bilinear", out: State | None = None) -> tuple[Tensor, State]:
        """See MambaCore.warp_step: here the kernel gathers the warped state (one pass over it)."""
        dt = torch.as_tensor(dt, device=x.device).reshape(-1).expand(x.shape[0])
        check_input(self, x)
        self._check_inference("fused")
        from ssm_perception.temporal import fused_step

        u = self._pre(x)
        z, xs, b, c, step = self._project(u, dt)
        warp = None if T_prev_cur is None else fused_step.warp_params(T_prev_cur, grid, x.shape[0], mode)
        y, h = fused_step.fused_warp_step(prev_state["ssm"], z, xs, b, c, step, self.A(), self.D.float(),
                                          self.nheads, self.headdim, self.d_state, self.ngroups, warp, reset_mask)
        return self._post(u, y), {"ssm": h}

    def _has_scan(self, has_resets: bool) -> bool:
        return False

    def static_warp_step(self, x: Tensor, prev: Tensor, affine: Tensor, bilinear: bool, dt: Tensor,
                         reset_mask: Tensor, out: Tensor) -> Tensor:
        """The 'fused' warp + step with every input already on the device and the new state
        written into ``out`` (must not alias ``prev``): no host value is read and nothing depends
        on the motion's value on the host, so a CUDA graph can capture it (pipeline_graph.py).
        affine [B, 6] float32 from ``fused_step.warp_params`` (identity = no motion), dt [B],
        reset_mask [B, H, W] bool (all False = none). Returns the block output [B, d_model, H, W]."""
        check_input(self, x)
        self._check_inference("fused")
        from ssm_perception.temporal import fused_step

        u = self._pre(x)
        z, xs, b, c, step = self._project(u, dt)
        y_buf = torch.empty(x.shape[0], self.d_inner, *x.shape[-2:], device=x.device, dtype=torch.float32)
        y, _ = fused_step.fused_warp_step(prev, z, xs, b, c, step, self.A(), self.D.float(), self.nheads,
                                          self.headdim, self.d_state, self.ngroups, (affine, bilinear), reset_mask,
                                          out=(y_buf, out))
        return self._post(u, y)


BACKENDS: dict[str, type[MambaCore]] = {"reference": MambaCore, "mamba_ssm": MambaSsmCore, "fused": FusedMambaCore}
