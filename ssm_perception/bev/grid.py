"""The ego-centred BEV grid in base_link: metric <-> cell index.

Layout [C, H, W]: H (index i) runs along +x (forward), W (index j) along +y (left).
Cell (i, j) has its centre at x = x_min + (i + 0.5) * res, y = y_min + (j + 0.5) * res.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssm_perception.bev.device import constant
from ssm_perception.config import GridConfig


@dataclass(frozen=True)
class BevGrid:
    nx: int  # cells along x == H
    ny: int  # cells along y == W
    resolution: float
    x_min: float
    y_min: float
    z_min: float = -2.5
    z_max: float = 3.5

    @classmethod
    def from_config(cls, cfg: GridConfig) -> BevGrid:
        return cls(cfg.nx, cfg.ny, float(cfg.resolution), cfg.x_min, cfg.y_min, cfg.z_min, cfg.z_max)

    @classmethod
    def square(cls, cells: int, resolution: float = 0.5) -> BevGrid:
        """Ego-centred ``cells`` x ``cells`` grid (benchmarks and tests)."""
        half = cells * resolution / 2.0
        return cls(cells, cells, resolution, -half, -half)

    @property
    def shape(self) -> tuple[int, int]:
        return self.nx, self.ny

    @property
    def num_cells(self) -> int:
        return self.nx * self.ny

    @property
    def x_max(self) -> float:
        return self.x_min + self.nx * self.resolution

    @property
    def y_max(self) -> float:
        return self.y_min + self.ny * self.resolution

    # ------------------------------------------------------------------ metric <-> index
    def metric_to_index(self, xy: Tensor) -> Tensor:
        """[N, 2] metric (x, y) -> [N, 2] integer (i, j) (floor; may be outside the grid)."""
        origin = constant((self.x_min, self.y_min), xy.dtype, xy.device)  # cached per device: no upload per call
        return torch.floor((xy - origin) / self.resolution).long()

    def index_to_metric(self, ij: Tensor) -> Tensor:
        """[N, 2] (i, j) -> [N, 2] metric cell centres (float32)."""
        origin = torch.tensor([self.x_min, self.y_min], dtype=torch.float32, device=ij.device)
        return origin + (ij.float() + 0.5) * self.resolution

    def cell_centers(self, device=None) -> Tensor:
        """[2, H, W] metric (x, y) of every cell centre."""
        xs = self.x_min + (torch.arange(self.nx, device=device, dtype=torch.float32) + 0.5) * self.resolution
        ys = self.y_min + (torch.arange(self.ny, device=device, dtype=torch.float32) + 0.5) * self.resolution
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        return torch.stack([gx, gy], 0)

    def points_to_cells(self, xy: Tensor) -> tuple[Tensor, Tensor]:
        """[N, 2] metric points -> (flat_idx [N] long = i * W + j, valid [N] bool).

        Non-finite or out-of-grid points are invalid; their flat_idx is 0 (safe to index with,
        but must be masked out by ``valid``)."""
        finite = torch.isfinite(xy[:, 0]) & torch.isfinite(xy[:, 1])  # per column: cheaper than .all(1) on the CPU
        xy0 = torch.where(finite.unsqueeze(1), xy, torch.zeros((), dtype=xy.dtype, device=xy.device))
        # Clamp before floor->long: far-away points must not overflow the integer conversion.
        lim = 4.0 * max(self.nx, self.ny) * self.resolution + abs(self.x_min) + abs(self.y_min)
        ij = self.metric_to_index(xy0.clamp(-lim, lim))
        valid = finite & (ij[:, 0] >= 0) & (ij[:, 0] < self.nx) & (ij[:, 1] >= 0) & (ij[:, 1] < self.ny)
        flat = torch.where(valid, ij[:, 0] * self.ny + ij[:, 1], torch.zeros_like(ij[:, 0]))
        return flat, valid
