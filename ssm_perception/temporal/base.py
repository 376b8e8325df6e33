"""The temporal-core protocol: the contract between the BEV model, the Mamba core, the baselines
and the pipeline.

A core keeps a *state* per BEV cell. Every state tensor is cell-aligned ``[B, C_k, H, W]`` fp32 so
that one generic warp (temporal/warp.py) can move any core's memory into the current base_link
frame, and one generic reset (``apply_reset``) can clear cells. The initial state is all zeros:
cells entering the grid after a warp are filled with zeros == the initial state, and a reset
sets cells back to exactly zero.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

State = dict[str, Tensor]  # every tensor is cell-aligned [B, C_k, H, W], fp32


def zeros_state(
    shapes: dict[str, int], batch: int, height: int, width: int, device=None
) -> State:
    """All-zero state: ``{name: zeros[B, C_k, H, W]}`` for ``shapes = {name: C_k}``."""
    return {
        k: torch.zeros(batch, c, height, width, dtype=torch.float32, device=device)
        for k, c in shapes.items()
    }


def apply_reset(state: State, reset_mask: Tensor | None) -> State:
    """Cells where ``reset_mask`` [B, H, W] (bool) is True go back to exactly zero (the initial state).

    ``None`` leaves the state unchanged. Returns a new dict; the input tensors are not modified.
    """
    if reset_mask is None:
        return dict(state)
    keep = (~reset_mask.bool()).unsqueeze(1)  # [B, 1, H, W]
    out: State = {}
    for k, v in state.items():
        if v.shape[0] != keep.shape[0] or v.shape[-2:] != keep.shape[-2:]:
            raise ValueError(
                f"reset_mask {tuple(reset_mask.shape)} does not match state[{k!r}] {tuple(v.shape)}"
            )
        # where() rather than multiply: a non-finite value in a reset cell must become exactly 0.
        out[k] = torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device))
    return out


class TemporalCore(torch.nn.Module, abc.ABC):
    """Abstract temporal core. Subclasses set ``in_channels``/``out_channels`` in ``__init__`` and
    implement ``init_state`` and ``step``; ``forward_sequence`` defaults to T calls of ``step``."""

    in_channels: int  # features per cell coming in
    out_channels: int  # features per cell going to the heads

    @abc.abstractmethod
    def init_state(self, batch: int, height: int, width: int, device=None) -> State:
        """MUST be all zeros: the warp fills cells entering the grid with zeros == the initial
        state, and a reset (whole or masked) sets cells back to exactly zero."""

    @abc.abstractmethod
    def step(
        self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x [B, C_in, H, W]; dt [B] seconds since the previous step (checked > 0 by the caller);
        reset_mask [B, H, W] bool: those cells are set to the initial state BEFORE the update
        (use ``apply_reset``). Returns y [B, C_out, H, W] and the new state. The state passed in
        is already warped to the current frame."""

    def forward_sequence(
        self,
        xs: Tensor,
        dts: Tensor,
        reset_masks: Tensor | None = None,
        state: State | None = None,
    ) -> tuple[Tensor, State]:
        """xs [T, B, C_in, H, W], dts [T, B] -> ys [T, B, C_out, H, W], final state.

        No ego-motion inside. The default is exactly T calls of ``step``; cores with a parallel
        form override it and must match ``step`` within a stated fp32 tolerance."""
        t, b, _, h, w = xs.shape
        if state is None:
            state = self.init_state(b, h, w, xs.device)
        ys = []
        for i in range(t):
            mask = None if reset_masks is None else reset_masks[i]
            y, state = self.step(xs[i], state, dts[i], mask)
            ys.append(y)
        return torch.stack(ys, 0), state

    def forward(self, x: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None):
        return self.step(x, state, dt, reset_mask)


def check_input(core: TemporalCore, x: Tensor) -> None:
    """Clear error for a wrong feature tensor (shared by the concrete cores)."""
    if x.dim() != 4 or x.shape[1] != core.in_channels:
        raise ValueError(
            f"{type(core).__name__}: expected x [B, {core.in_channels}, H, W], got {tuple(x.shape)}"
        )
