"""Per-cell decoders from the temporal core's output to occupancy, motion and objects.

Output dict (shapes [B, k, H, W], all in base_link):
    occupancy_logit [B,1]  P(occupied)
    dynamic_logit   [B,1]  P(dynamic | occupied)
    velocity        [B,2]  over-ground (vx, vy) [m/s]
    center_logit    [B,4]  object-centre heatmap for car, truck, cyclist, pedestrian (class k+1)
    box_offset      [B,2]  object centre minus cell centre (x, y) [m]
    box_size        [B,3]  log(length, width, height) [m]
    box_yaw         [B,2]  (sin, cos) of yaw, unit length
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_CHANNELS: dict[str, int] = {
    "occupancy_logit": 1,
    "dynamic_logit": 1,
    "velocity": 2,
    "center_logit": 4,
    "box_offset": 2,
    "box_size": 3,
    "box_yaw": 2,
}
NUM_OBJECT_CLASSES = 4  # car, truck, cyclist, pedestrian

# Centre heatmaps are sparse: start them at a low prior (CenterNet's focal-loss init) so the
# first training steps are not dominated by false positives.
_CENTER_PRIOR = 0.01
# A typical car (4.5 x 1.9 x 1.6 m) as the size prior.
_SIZE_PRIOR = (4.5, 1.9, 1.6)


class BevHeads(nn.Module):
    """A shared trunk conv + GELU and one 1x1 conv for all head outputs.

    The trunk is 1x1 by default: the stem and the core already mix space, and on the 2-core CPU
    target a 3x3 conv at 128x128 costs ~10 ms; ``kernel=3`` gives the heads their own context."""

    def __init__(self, in_channels: int, hidden: int = 32, kernel: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.trunk = nn.Sequential(nn.Conv2d(in_channels, hidden, kernel, padding=kernel // 2), nn.GELU())
        self.out = nn.Conv2d(hidden, sum(HEAD_CHANNELS.values()), 1)
        self._init_priors()

    def _init_priors(self) -> None:
        with torch.no_grad():
            bias = self.out.bias
            bias.zero_()
            start = 0
            for name, c in HEAD_CHANNELS.items():
                if name == "center_logit":
                    bias[start : start + c] = float(torch.logit(torch.tensor(_CENTER_PRIOR)))
                elif name == "box_size":
                    bias[start : start + c] = torch.log(torch.tensor(_SIZE_PRIOR))
                start += c

    def forward(self, y: Tensor) -> dict[str, Tensor]:
        # y: [B, C, H, W] -> raw: [B, sum(HEAD_CHANNELS), H, W]
        raw = self.out(self.trunk(y))
        out = dict(zip(HEAD_CHANNELS, torch.split(raw, list(HEAD_CHANNELS.values()), 1), strict=True))
        # (sin, cos) normalised to the unit circle; eps keeps the gradient finite at (0, 0).
        out["box_yaw"] = F.normalize(out["box_yaw"], dim=1, eps=1e-6)
        return out


def occupancy_probabilities(out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(p_occupied [B, H, W], p_dynamic [B, H, W]) with p_dynamic = P(occupied) * P(dynamic | occupied)."""
    p_occ = torch.sigmoid(out["occupancy_logit"][:, 0])
    p_dyn = p_occ * torch.sigmoid(out["dynamic_logit"][:, 0])
    return p_occ, p_dyn
