"""BEV neck: spatial context for the heads, per frame, between the temporal core and the heads.

The temporal core is per cell (plus 3x3 depthwise mixing), so a head at one cell sees about
+-3 cells (1.5 m at 0.5 m). That is too little to put a centre on a 4.5 m car or to infer that
the cells behind a seen wall belong to a building. The neck is a small U-Net: three stride-2
levels (receptive field ~ +-30 cells = 15 m at 0.5 m) merged back by upsampling + lateral
additions, as BEV detectors' necks do. It never touches the temporal state, so the state stays
cell-aligned and warpable; it only shapes what the heads read.

    y [B, C, H, W] -> d1 [B, c1, H/2, W/2] -> d2 [B, c2, H/4, W/4] -> d3 [B, c2, H/8, W/8]
    u2 = up(d3) + d2 -> u1 = up(conv(u2)) + lat(d1) -> out = y + conv(up(conv(u1)))  [B, C, H, W]

Any grid size works: each upsampling goes to the exact size of its skip connection.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GELU())


class BevNeck(nn.Module):
    """Residual U-Net over the BEV: output has the input's channels and size."""

    def __init__(self, channels: int, widths: tuple[int, int] | None = None):
        super().__init__()
        # Wider at coarser levels (cheap there): 48 and 64 for the default 32 channels.
        c1, c2 = widths or (max(3 * channels // 2, 8), max(2 * channels, 8))
        self.down1 = nn.Sequential(_conv(channels, c1, 2), _conv(c1, c1))
        self.down2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))
        self.down3 = nn.Sequential(_conv(c2, c2, 2), _conv(c2, c2))
        self.up2 = _conv(c2, c1)
        self.lat1 = nn.Conv2d(c1, c1, 1)
        self.up1 = _conv(c1, channels)
        self.out = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as the identity: y + 0
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, y: Tensor) -> Tensor:
        # y: [B, C, H, W]
        d1 = self.down1(y)  # [B, c1, H/2, W/2]
        d2 = self.down2(d1)  # [B, c2, H/4, W/4]
        d3 = self.down3(d2)  # [B, c2, H/8, W/8]
        u2 = self._up(d3, d2) + d2
        u1 = self._up(self.up2(u2), d1) + self.lat1(d1)  # [B, c1, H/2, W/2]
        return y + self.out(self._up(self.up1(u1), y))
