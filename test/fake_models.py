"""Test doubles of BevPerceptionModel shared by the pipeline tests."""

import torch
from torch import nn

from ssm_perception.heads import HEAD_CHANNELS
from ssm_perception.model import BevPerceptionModel
from ssm_perception.temporal.warp import warp_state


class PeaksModel(nn.Module):
    """Car centre peaks at the cells (i, j) in ``peaks`` and nothing else; the state counts frames.
    ``occupancy_logit``: added everywhere (e.g. 5.0 so the detections' occupancy gate passes)."""

    kind = "fake"

    def __init__(self, config, occupancy_logit: float = 0.0):
        super().__init__()
        self.grid = BevPerceptionModel(config).grid
        self.peaks: list[tuple[int, int]] = []
        self.occupancy_logit = occupancy_logit
        self.w = nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return torch.device("cpu")

    def init_state(self, batch=1, device=None):
        return {"h": torch.zeros(batch, 1, *self.grid.shape)}

    def warp(self, state, T_prev_cur, mode="bilinear"):
        return warp_state(state, T_prev_cur, self.grid, mode)

    def step(self, x, state, dt, reset_mask=None):
        b, _, h, w = x.shape
        out = {k: torch.zeros(b, c, h, w) for k, c in HEAD_CHANNELS.items()}
        out["center_logit"] -= 20.0
        out["occupancy_logit"] += self.occupancy_logit
        out["box_yaw"][:, 1] = 1.0
        out["box_size"] += torch.log(torch.tensor([4.5, 1.9, 1.6])).view(1, 3, 1, 1)
        for i, j in self.peaks:
            out["center_logit"][0, 0, i, j] = 5.0  # a car
        return out, {"h": state["h"] + 1}
