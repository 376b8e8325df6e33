"""TrainConfig: the training YAML = a PerceptionConfig section (grid, model) + training fields.

    perception: {grid: {...}, model: {kind: mamba, ...}}   # same schema as the node's config
    data: {presets: [...], train_seeds: {start: 0, count: 48}, val_seeds: {start: 100000, count: 6}, ...}
    optim: {lr: 2.0e-3, batch_size: 4, tbptt: 8, ...}
    run: {max_steps: 2000, max_minutes: 7, checkpoint_every: 200, ...}

Train and validation seeds must be disjoint (checked), and both are written into the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ssm_perception.config import PerceptionConfig, validate_yaml


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SeedRange(_Section):
    start: int = Field(0, ge=0)
    count: int = Field(1, ge=0)

    def seeds(self) -> list[int]:
        return list(range(self.start, self.start + self.count))


class DataConfig(_Section):
    presets: list[str] = Field(default_factory=lambda: ["urban", "highway", "parking", "adversity_mix"])
    train_seeds: SeedRange = SeedRange(start=0, count=32)
    val_seeds: SeedRange = SeedRange(start=100_000, count=4)
    duration_s: float = Field(30.0, gt=0, description="simulated seconds per sequence")
    val_duration_s: float = Field(30.0, gt=0)
    cache_dir: str = Field("out/train_cache", description="empty = keep sequences in memory only")
    compress_cache: bool = Field(False, description="store the cached features zstd-compressed (~20-50x smaller, "
                                                    "~2 ms per frame to read): needed for hours of driving on "
                                                    "one disk (uncompressed: ~2.9 MB per frame)")
    workers: int = Field(0, ge=0, description="generator processes; 0 = in the training process")
    min_ready: int = Field(0, ge=0, description="sequences needed before training starts; 0 = all")

    @model_validator(mode="after")
    def _disjoint(self) -> DataConfig:
        overlap = set(self.train_seeds.seeds()) & set(self.val_seeds.seeds())
        if overlap:
            raise ValueError(f"train and validation seeds overlap: {sorted(overlap)[:5]}...")
        if not self.presets:
            raise ValueError("data.presets is empty")
        return self


class OptimConfig(_Section):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    batch_size: int = Field(4, ge=1, description="sequences per step (per process under DDP)")
    tbptt: int = Field(8, ge=1, description="frames per truncated-BPTT window")
    grad_clip: float = Field(1.0, gt=0)
    reset_prob: float = Field(0.1, ge=0, le=1, description="chance a window starts from a zero state")
    partial_reset_prob: float = Field(0.05, ge=0, le=1, description="chance per step of a random masked reset")
    amp: bool = Field(True, description="bf16 autocast on CUDA (parameters and state stay fp32)")


class LossConfig(_Section):
    occupancy: float = 1.0
    dynamic: float = 1.0
    velocity: float = 0.2
    center: float = 1.0
    box: float = 0.2
    occ_static_pos: float = Field(1.0, gt=0)
    occ_dynamic_pos: float = Field(2.0, gt=0)
    occluded: float = Field(2.0, gt=0)


class RunConfig(_Section):
    seed: int = 0
    max_steps: int = Field(1000, ge=0)
    max_minutes: float = Field(0.0, ge=0, description="wall-clock budget for the training loop; 0 = none")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    val_frames: int = Field(0, ge=0, description="frames per validation sequence; 0 = all")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    init_weights: str = Field("", description="warm start: a checkpoint (.safetensors + .json sidecar) of the "
                                              "same model section; fresh optimizer and schedule; '' = random")


class TrainConfig(_Section):
    perception: PerceptionConfig = PerceptionConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    run: RunConfig = RunConfig()

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return validate_yaml(path, cls.model_validate)
