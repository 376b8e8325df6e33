"""The BEV perception model: stem -> temporal core -> heads, and its checkpoints.

    features [B, C_in, H, W] --stem--> [B, d_model, H, W] --core(state, dt)--> [B, C_out, H, W]
             --neck--> [B, C_out, H, W] --heads--> dict

The neck (``config.model.neck``, ssm_perception/neck.py) adds spatial context per frame; the
temporal state never passes through it, so it stays cell-aligned.

The core is chosen by ``config.model.kind``; 'logodds' is the training-free classical filter: no
stem, no learned heads (a fixed mapping from its log-odds to occupancy).

Checkpoints are weights-only safetensors files (never pickle: loading a checkpoint must not be able
to run code) with a JSON sidecar ``<file>.json`` holding the config, the caller's metadata, the
feature layout and the sha256 of the weights file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ssm_perception.bev.features import FEATURE_CHANNELS
from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import GridConfig, ModelConfig, PerceptionConfig
from ssm_perception.heads import BevHeads
from ssm_perception.neck import BevNeck
from ssm_perception.temporal.base import State, TemporalCore
from ssm_perception.temporal.baselines import (
    AttentionCore,
    ConvGRUCore,
    LogOddsCore,
    SingleFrameCore,
)
from ssm_perception.temporal.warp import warp_state
from ssm_perception.weights import (  # re-exported: the names callers import from here
    CHECKPOINT_FORMAT,
    CheckpointError,
    file_sha256,
    sidecar_path,
    verify_checkpoint,
)


def build_core(config: PerceptionConfig) -> TemporalCore:
    m = config.model
    if m.kind == "logodds":
        return LogOddsCore()
    if m.kind == "mamba":
        # Imported lazily: the Mamba core (temporal/mamba.py) may pull optional GPU kernels.
        from ssm_perception.temporal.mamba import MambaCore

        return MambaCore(m.d_model, m)
    if m.kind == "single":
        return SingleFrameCore(m.d_model, m.d_model)
    if m.kind == "convgru":
        return ConvGRUCore(m.d_model, m.d_model)
    if m.kind == "attention":
        return AttentionCore(m.d_model, m.d_model, history=m.attention_history)
    raise ValueError(f"unknown model.kind {m.kind!r}")


class BevPerceptionModel(nn.Module):
    def __init__(self, config: PerceptionConfig):
        super().__init__()
        self.config = config
        self.grid = BevGrid.from_config(config.grid)
        self.kind = config.model.kind
        self.in_channels = len(FEATURE_CHANNELS)
        d = config.model.d_model
        self.core = build_core(config)
        if self.kind == "logodds":
            self.stem = nn.Identity()
            self.neck = None
            self.heads = None
        else:
            # Two light convs: 3x3 gathers a little neighbourhood (sensor footprints span cells),
            # 1x1 mixes channels; GELU in between.
            self.stem = nn.Sequential(nn.Conv2d(self.in_channels, d, 3, padding=1), nn.GELU(), nn.Conv2d(d, d, 1))
            self.neck = BevNeck(self.core.out_channels) if config.model.neck == "unet" else None
            self.heads = BevHeads(self.core.out_channels)

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def init_state(self, batch: int = 1, device=None) -> State:
        return self.core.init_state(batch, self.grid.nx, self.grid.ny, device)

    def warp(self, state: State, T_prev_cur, mode: str = "bilinear") -> State:
        """Move the state into the current base_link frame (see temporal/warp.py)."""
        return warp_state(state, T_prev_cur, self.grid, mode)

    def _heads(self, y: Tensor) -> dict[str, Tensor]:
        if self.heads is None:
            return LogOddsCore.heads(y)
        return self.heads(y if self.neck is None else self.neck(y))

    def _check(self, features: Tensor) -> None:
        if features.dim() != 4 or features.shape[1:] != (self.in_channels, self.grid.nx, self.grid.ny):
            raise ValueError(
                f"features must be [B, {self.in_channels}, {self.grid.nx}, {self.grid.ny}], got {tuple(features.shape)}"
            )

    @staticmethod
    def _check_dt(dt: Tensor) -> None:
        if dt.device.type != "cpu":
            return  # reading it would make the host wait for the device: its producer checks it (the pipeline does)
        if not bool(torch.isfinite(dt).all()) or bool((dt <= 0).any()):
            raise ValueError(f"dt must be finite and > 0 (the caller skips or resets otherwise), got {dt.tolist()}")

    def step(
        self, features: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None
    ) -> tuple[dict[str, Tensor], State]:
        """features [B, C_in, H, W]; state already warped to this frame; dt [B] seconds > 0;
        reset_mask [B, H, W] bool. -> (heads dict, new state)."""
        self._check(features)
        dt = torch.as_tensor(dt, dtype=torch.float32, device=features.device).reshape(-1)
        self._check_dt(dt)
        y, state = self.core.step(self.stem(features), state, dt, reset_mask)
        return self._heads(y), state

    def warp_step(
        self, features: Tensor, prev_state: State, T_prev_cur, dt: Tensor, reset_mask: Tensor | None = None,
        out_state: State | None = None,
    ) -> tuple[dict[str, Tensor], State]:
        """``warp`` then ``step`` in one call (T_prev_cur None = no motion): the same numbers, but a
        core that can gather the warp inside its update does (Mamba: the fused kernel on the GPU,
        block-wise row gathers in CPU inference), which saves a pass over the state and the warped
        copy. ``out_state``: buffers for the new state (see MambaCore.warp_step; other cores ignore
        it). A streaming caller hands back the previous-but-one state, so no frame allocates a state."""
        if not hasattr(self.core, "warp_step"):  # only the Mamba core gathers the warp itself
            state = prev_state if T_prev_cur is None else self.warp(prev_state, T_prev_cur)
            return self.step(features, state, dt, reset_mask)
        self._check(features)
        dt = torch.as_tensor(dt, dtype=torch.float32, device=features.device).reshape(-1)
        self._check_dt(dt)
        y, state = self.core.warp_step(self.stem(features), prev_state, T_prev_cur, dt, reset_mask,
                                       grid=self.grid, out=out_state)
        return self._heads(y), state

    def forward(self, features: Tensor, state: State, dt: Tensor, reset_mask: Tensor | None = None):
        return self.step(features, state, dt, reset_mask)

    def forward_sequence(
        self, xs: Tensor, dts: Tensor, reset_masks: Tensor | None = None, state: State | None = None
    ) -> tuple[dict[str, Tensor], State]:
        """xs [T, B, C_in, H, W] (pre-warped), dts [T, B] -> ({head: [T, B, k, H, W]}, final state)."""
        t, b = xs.shape[:2]
        self._check(xs[0])
        dts = torch.as_tensor(dts, dtype=torch.float32, device=xs.device).reshape(t, b)
        self._check_dt(dts)
        e = self.stem(xs.flatten(0, 1)).unflatten(0, (t, b))  # the stem is per frame: run it once
        ys, state = self.core.forward_sequence(e, dts, reset_masks, state)
        out = self._heads(ys.flatten(0, 1))
        return {k: v.unflatten(0, (t, b)) for k, v in out.items()}, state


# ---------------------------------------------------------------------------------- checkpoints
# Sidecar, digests and trust (the package's pinned manifest) are checked without torch in weights.py.
def save_checkpoint(model: BevPerceptionModel, path: str | Path, metadata: dict | None = None) -> str:
    """Write ``path`` (safetensors weights) and ``path.json``; returns the sha256 of the weights."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except TypeError as exc:
        raise TypeError(f"checkpoint metadata must be JSON-serializable: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share storage (e.g. views of one parameter).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": CHECKPOINT_FORMAT, "kind": model.kind})
    digest = file_sha256(path)
    sidecar = {
        "format": CHECKPOINT_FORMAT,
        "kind": model.kind,
        "sha256": digest,
        "feature_channels": FEATURE_CHANNELS,
        "config": model.config.model_dump(),
        "metadata": metadata,
    }
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    return digest


def load_checkpoint(
    path: str | Path,
    expected_sha256: str | None = None,
    map_location: str | torch.device = "cpu",
    expected_kind: str | None = None,
    grid: GridConfig | None = None,
    backend: str | None = None,
    allow_untrusted: bool = False,
    expected_model: ModelConfig | None = None,
) -> tuple[BevPerceptionModel, dict]:
    """Rebuild the model from ``path`` + ``path.json``. First the checks of weights.verify_checkpoint:
    the sha256 against the sidecar, ``expected_sha256`` if given, and the package's pinned manifest
    (weights not pinned there load only with ``allow_untrusted``, with a warning); the kind; the
    architecture fields of ``expected_model`` (the configured model section). Then the feature layout
    and every tensor's shape.
    ``grid``: run the weights on another grid extent. The model is convolutional and per cell, so
    any size works, but the resolution must be the trained one (features are per cell area).
    ``backend``: the Mamba backend to run the weights with (a runtime choice, same parameters;
    None = the one recorded at training, normally 'reference').
    Returns (model in eval mode on map_location, metadata). Raises CheckpointError."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    info, config, _ = verify_checkpoint(path, allow_untrusted=allow_untrusted, expected_sha256=expected_sha256,
                                        expected_kind=expected_kind, expected_model=expected_model, grid=grid)
    kind = info.get("kind")
    if info.get("feature_channels") != FEATURE_CHANNELS:
        raise CheckpointError(f"{path}: trained on BEV features {info.get('feature_channels')}, "
                              f"this build encodes {FEATURE_CHANNELS}")
    try:
        with safe_open(str(path), framework="pt") as f:
            file_kind = (f.metadata() or {}).get("kind")
        tensors = load_file(str(path), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    if file_kind != kind:
        raise CheckpointError(f"{path}: weights are kind {file_kind!r} but the sidecar says {kind!r}")
    if grid is not None:
        config.grid = grid.model_copy()
    if backend is not None:
        config.model.backend = backend
    try:
        model = BevPerceptionModel(config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build the model its sidecar describes: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: parameters do not match model kind {kind!r}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if tensors[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match the config: {wrong[:5]}")
    model.load_state_dict(tensors, strict=True)
    model.to(map_location).eval()
    return model, dict(info.get("metadata", {}))
