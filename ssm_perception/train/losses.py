"""Training losses for the BEV heads (occupancy, dynamics, velocity, object centres and boxes).

Every loss takes the heads dict of ``ssm_perception.heads`` and a targets dict built by
``ssm_perception.train.dataset``; all maths runs in fp32 even under autocast.

Targets (one frame, batched as [B, ...]):
    occupied [B,1,H,W] {0,1}   dynamic [B,1,H,W] {0,1} (occupied by a moving object)
    visible  [B,1,H,W] {0,1}   velocity [B,2,H,W] m/s over ground, base_link axes (valid where dynamic)
    center   [B,4,H,W] Gaussian heatmap per class (1 at the object's centre cell)
    box      [B,7,H,W] offset x,y [m], log l,w,h, sin yaw, cos yaw (valid where center_mask)
    center_mask [B,1,H,W] {0,1}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class LossWeights:
    occupancy: float = 1.0
    dynamic: float = 1.0
    velocity: float = 0.2
    center: float = 1.0
    box: float = 0.2
    # Relative weight of cell groups inside the occupancy BCE. Occluded cells are where memory
    # matters: the whole occluded region (free and occupied alike) gets more weight, which keeps the
    # probabilities calibrated. A weight on occupied cells (static/dynamic) is a class weight: it
    # biases P(occupied) upwards and costs calibration (ECE), so it stays small; moving cells are
    # rare (~0.3% of cells) and get a little.
    occ_static_pos: float = 1.0
    occ_dynamic_pos: float = 2.0
    occluded: float = 2.0


def occupancy_loss(logit: Tensor, tgt: dict[str, Tensor], w: LossWeights) -> Tensor:
    """Weighted BCE over all cells; weights by static/dynamic occupied vs free, and occluded."""
    occ, dyn, vis = tgt["occupied"], tgt["dynamic"], tgt["visible"]
    # weight: [B,1,H,W]; free = 1, static occupied, dynamic occupied; x occluded factor
    weight = 1.0 + occ * (1.0 - dyn) * (w.occ_static_pos - 1.0) + dyn * occ * (w.occ_dynamic_pos - 1.0)
    weight = weight * (1.0 + (1.0 - vis) * (w.occluded - 1.0))
    bce = F.binary_cross_entropy_with_logits(logit.float(), occ, reduction="none")
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)


def dynamic_loss(logit: Tensor, tgt: dict[str, Tensor]) -> Tensor:
    """BCE of P(dynamic | occupied), only on occupied cells (balanced moving vs static)."""
    occ, dyn = tgt["occupied"], tgt["dynamic"] * tgt["occupied"]
    bce = F.binary_cross_entropy_with_logits(logit.float(), dyn, reduction="none")
    pos, neg = occ * dyn, occ * (1.0 - dyn)
    # Mean over moving and static occupied cells separately: few movers among many walls.
    return 0.5 * ((bce * pos).sum() / pos.sum().clamp_min(1.0) + (bce * neg).sum() / neg.sum().clamp_min(1.0))


def velocity_loss(vel: Tensor, tgt: dict[str, Tensor]) -> Tensor:
    """Smooth L1 on (vx, vy) over dynamic occupied cells."""
    mask = tgt["dynamic"] * tgt["occupied"]  # [B,1,H,W]
    err = F.smooth_l1_loss(vel.float(), tgt["velocity"], reduction="none", beta=0.5).sum(1, keepdim=True)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def center_focal_loss(logit: Tensor, heat: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet focal loss (Zhou et al. 2019) on a Gaussian heatmap.

    Written here because the library focal losses (torchvision's sigmoid_focal_loss) are the
    RetinaNet form with hard labels; CenterNet down-weights negatives near a centre by (1-heat)^beta.
    Uses logsigmoid so that confident logits do not produce log(0).
    """
    logit = logit.float()
    log_p, log_1mp = F.logsigmoid(logit), F.logsigmoid(-logit)
    p = log_p.exp()
    pos = (heat >= 0.999).float()
    pos_term = -((1.0 - p) ** alpha) * log_p * pos
    neg_term = -((1.0 - heat) ** beta) * (p**alpha) * log_1mp * (1.0 - pos)
    return (pos_term.sum() + neg_term.sum()) / pos.sum().clamp_min(1.0)


def box_loss(heads: dict[str, Tensor], tgt: dict[str, Tensor]) -> Tensor:
    """L1 on centre offset, log size and (sin, cos) yaw at object centre cells."""
    mask = tgt["center_mask"]  # [B,1,H,W]
    pred = torch.cat([heads["box_offset"], heads["box_size"], heads["box_yaw"]], dim=1).float()  # [B,7,H,W]
    err = (pred - tgt["box"]).abs().sum(1, keepdim=True)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def total_loss(heads: dict[str, Tensor], tgt: dict[str, Tensor], w: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum and a dict of the detached parts (tensors: no GPU sync until logged)."""
    parts = {
        "occ": occupancy_loss(heads["occupancy_logit"], tgt, w),
        "dyn": dynamic_loss(heads["dynamic_logit"], tgt),
        "vel": velocity_loss(heads["velocity"], tgt),
        "ctr": center_focal_loss(heads["center_logit"], tgt["center"]),
        "box": box_loss(heads, tgt),
    }
    total = (
        w.occupancy * parts["occ"]
        + w.dynamic * parts["dyn"]
        + w.velocity * parts["vel"]
        + w.center * parts["ctr"]
        + w.box * parts["box"]
    )
    return total, {k: v.detach() for k, v in parts.items()}
