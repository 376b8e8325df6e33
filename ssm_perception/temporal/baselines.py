"""Baseline temporal cores behind the same TemporalCore protocol as the Mamba core.

- LogOddsCore: the classical per-cell Bayes occupancy filter (log-odds, clamped, dt-aware decay of
  unobserved cells toward unknown, faster decay for dynamic evidence). Training-free; it reads
  the raw BEV feature channels and its output can be mapped straight to occupancy
  (``LogOddsCore.heads``).
- SingleFrameCore: no memory (empty state): what the heads can do from one frame.
- ConvGRUCore: a convolutional GRU with dt as an input.
- AttentionCore: keeps the last K frames per cell and attends over them: memory grows linearly
  with K by design (the contrast to the SSM's constant-size state).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_perception.bev.features import FEATURE_CHANNELS, channel_index
from ssm_perception.heads import HEAD_CHANNELS
from ssm_perception.temporal.base import (
    State,
    TemporalCore,
    apply_reset,
    check_input,
    zeros_state,
)


def _dt4(dt: Tensor, x: Tensor) -> Tensor:
    """dt [B] (or scalar) -> [B, 1, 1, 1] on x's device/dtype."""
    return torch.as_tensor(dt, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)


class LogOddsCore(TemporalCore):
    """Per-cell binary Bayes filter on LiDAR hit / free-space evidence (Autoware/nav2 style).

    state 'logodds' [B,1,H,W]: occupancy log-odds, 0 = unknown (== the initial state).
    state 'dynamic' [B,1,H,W]: dynamic evidence >= 0 (a hit where the map was confidently free,
                               or a radar detection moving over ground); cleared by a free ray.
    Unobserved cells decay toward 0 with time constant ``tau_static`` (dt-aware: exp(-dt/tau));
    dynamic evidence decays with the shorter ``tau_dynamic``.
    Output y [B, 2, H, W] = (logodds, dynamic); ``heads(y)`` maps it to the heads dict.
    """

    def __init__(
        self,
        l_hit: float = 0.85,  # log-odds of P(occ | hit) = 0.7
        l_free: float = -0.4,  # log-odds of P(occ | free ray) = 0.4
        l_min: float = -2.0,
        l_max: float = 3.5,
        tau_static: float = 5.0,
        tau_dynamic: float = 0.5,
        free_threshold: float = -1.0,  # below: "confidently free" for the dynamic test
        dynamic_gain: float = 2.0,
        radar_speed_threshold: float = 1.0,  # m/s over ground
        dynamic_max: float = 4.0,
    ):
        super().__init__()
        self.in_channels = len(FEATURE_CHANNELS)
        self.out_channels = 2
        self.l_hit, self.l_free, self.l_min, self.l_max = l_hit, l_free, l_min, l_max
        self.tau_static, self.tau_dynamic = tau_static, tau_dynamic
        self.free_threshold, self.dynamic_gain, self.dynamic_max = free_threshold, dynamic_gain, dynamic_max
        from ssm_perception.bev.radar import VELOCITY_SCALE

        self.radar_vr_threshold = radar_speed_threshold / VELOCITY_SCALE
        self._hit = channel_index("lidar_nonground")
        self._free = channel_index("lidar_free")
        self._radar_count = channel_index("radar_log_count")
        self._radar_vr = channel_index("radar_vr")

    def init_state(self, batch: int, height: int, width: int, device=None) -> State:
        return zeros_state({"logodds": 1, "dynamic": 1}, batch, height, width, device)

    def step(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None) -> tuple[Tensor, State]:
        check_input(self, x)
        state = apply_reset(state, reset_mask)
        l, d = state["logodds"], state["dynamic"]  # [B, 1, H, W]
        dt4 = _dt4(dt, x)
        hit = (x[:, self._hit : self._hit + 1] > 0).to(x.dtype)
        free = (x[:, self._free : self._free + 1] > 0.5).to(x.dtype) * (1 - hit)
        observed = torch.maximum(hit, free)
        # Decay toward unknown only where nothing was observed: exp(-dt / tau) is exact for any rate.
        l = torch.where(observed > 0, l, l * torch.exp(-dt4 / self.tau_static))
        was_free = (l < self.free_threshold).to(x.dtype)
        l = (l + self.l_hit * hit + self.l_free * free).clamp(self.l_min, self.l_max)
        radar_moving = (x[:, self._radar_count : self._radar_count + 1] > 0) & (
            x[:, self._radar_vr : self._radar_vr + 1].abs() > self.radar_vr_threshold
        )
        evidence = hit * was_free + radar_moving.to(x.dtype)
        d = (d * torch.exp(-dt4 / self.tau_dynamic) + self.dynamic_gain * evidence).clamp(0.0, self.dynamic_max)
        d = d * (1 - free)  # a free ray through the cell: whatever moved there has left
        return torch.cat([l, d], 1), {"logodds": l, "dynamic": d}

    @staticmethod
    def heads(y: Tensor) -> dict[str, Tensor]:
        """Fixed (training-free) mapping of y [B, 2, H, W] to the heads dict: occupancy from the
        log-odds; P(dynamic | occupied) = sigmoid(evidence - 2); no velocity and no objects
        (velocity/box zeros, centre heatmap at logit -20)."""
        b, _, h, w = y.shape
        out = {k: y.new_zeros(b, c, h, w) for k, c in HEAD_CHANNELS.items()}
        out["occupancy_logit"] = y[:, 0:1]
        out["dynamic_logit"] = y[:, 1:2] - 2.0
        out["center_logit"] = torch.full_like(out["center_logit"], -20.0)
        out["box_yaw"][:, 1] = 1.0  # (sin, cos) = (0, 1): unit length like the learned head
        return out


class SingleFrameCore(TemporalCore):
    """No memory: y = GELU(conv1x1(x)); the state is empty ({})."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def init_state(self, batch: int, height: int, width: int, device=None) -> State:
        return {}

    def step(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None) -> tuple[Tensor, State]:
        check_input(self, x)
        return F.gelu(self.proj(x)), {}


class ConvGRUCore(TemporalCore):
    """Convolutional GRU (3x3 gates) over the BEV; log(dt) enters as an extra input plane so the
    update can depend on the frame gap. state 'h' [B, hidden, H, W]; y = h."""

    def __init__(self, in_channels: int, hidden: int = 32, kernel: int = 3):
        super().__init__()
        self.in_channels, self.out_channels, self.hidden = in_channels, hidden, hidden
        pad = kernel // 2
        self.gates = nn.Conv2d(in_channels + 1 + hidden, 2 * hidden, kernel, padding=pad)
        self.cand = nn.Conv2d(in_channels + 1 + hidden, hidden, kernel, padding=pad)
        with torch.no_grad():  # start biased toward keeping memory (update gate mostly closed)
            self.gates.bias[:hidden].fill_(-1.0)

    def init_state(self, batch: int, height: int, width: int, device=None) -> State:
        return zeros_state({"h": self.hidden}, batch, height, width, device)

    def step(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None) -> tuple[Tensor, State]:
        check_input(self, x)
        h = apply_reset(state, reset_mask)["h"]
        b, _, hh, ww = x.shape
        ldt = torch.log(_dt4(dt, x).clamp_min(1e-3)).expand(b, 1, hh, ww)
        xin = torch.cat([x, ldt], 1)
        z, r = torch.sigmoid(self.gates(torch.cat([xin, h], 1))).chunk(2, 1)
        n = torch.tanh(self.cand(torch.cat([xin, r * h], 1)))
        h = (1 - z) * h + z * n
        return h, {"h": h}


class AttentionCore(TemporalCore):
    """Temporal attention over the last K frames of each cell.

    state 'mem'   [B, K*D, H, W]: projected features of the last K frames (slot 0 = newest)
    state 'valid' [B, K, H, W]:   1 where the slot holds a frame (0 = empty, the initial state)
    state 'age'   [B, K, H, W]:   seconds since that frame
    The current frame always attends to itself, so a cell without history is well defined.
    Memory per cell is (K*D + 2K) floats: linear in K, by design.

    Single-head dot-product attention, key_i = W_k [m_i; log(1 + age_i)] + b_k, value_i = W_v m_i
    + b_v, computed without materialising keys/values per slot: q . key_i = (W_k^T q) . [m_i; la_i]
    + q . b_k (the last term is the same for every slot and cancels in the softmax), and
    sum_i a_i value_i = W_v (sum_i a_i m_i) + b_v because the weights sum to 1. Same function,
    O(K*D) per cell instead of O(K*D*Dk), no [B, H, W, K, D] permutes.
    """

    def __init__(self, in_channels: int, dim: int = 32, history: int = 8, key_dim: int = 16):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, dim
        self.dim, self.history, self.key_dim = dim, history, key_dim
        self.inp = nn.Conv2d(in_channels, dim, 1)
        self.q = nn.Conv2d(dim, key_dim, 1)
        self.k = nn.Linear(dim + 1, key_dim)  # +1: log(1 + age) so recency can be weighed
        self.v = nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)

    def init_state(self, batch: int, height: int, width: int, device=None) -> State:
        k = self.history
        return zeros_state({"mem": k * self.dim, "valid": k, "age": k}, batch, height, width, device)

    def step(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None) -> tuple[Tensor, State]:
        check_input(self, x)
        state = apply_reset(state, reset_mask)
        b, _, h, w = x.shape
        k, d = self.history, self.dim
        e = self.inp(x)  # [B, D, H, W]
        age = state["age"] + _dt4(dt, x) * (state["valid"] > 0)  # [B, K, H, W]
        # Candidates: the current frame (slot -1 of age 0) + the K remembered frames.
        cand = torch.cat([e.unsqueeze(1), state["mem"].view(b, k, d, h, w)], 1)  # [B, K+1, D, H, W]
        ages = torch.cat([torch.zeros_like(age[:, :1]), age], 1)  # [B, K+1, H, W]
        valid = torch.cat([torch.ones_like(age[:, :1]), state["valid"]], 1)  # [B, K+1, H, W]
        q = self.q(e)  # [B, Dk, H, W]
        qk = torch.einsum("kc,bkhw->bchw", self.k.weight, q) / math.sqrt(self.key_dim)  # [B, D+1, H, W]
        logits = (cand * qk[:, None, :d]).sum(2) + qk[:, None, d] * torch.log1p(ages)  # [B, K+1, H, W]
        # Warped 'valid' is fractional at the grid rim: use it as a soft log-weight.
        logits = logits + torch.log(valid.clamp(1e-6, 1.0))
        attn = torch.softmax(logits, 1)
        ctx = (attn.unsqueeze(2) * cand).sum(1)  # [B, D, H, W]
        y = e + self.out(self.v(ctx))
        # Push the current frame into slot 0, drop the oldest.
        new_mem = cand[:, :k].reshape(b, k * d, h, w)
        new_valid = valid[:, :k]
        new_age = ages[:, :k]
        return y, {"mem": new_mem, "valid": new_valid, "age": new_age}
