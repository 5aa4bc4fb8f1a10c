"""Box formats and the SSD box coding with variances.

The network's ``loc`` output holds offsets relative to the priors (cx, cy, w, h), scaled by the
variances (0.1, 0.2):  t_xy = (g_xy - p_xy) / (v0 * p_wh),  t_wh = log(g_wh / p_wh) / v1.
Functions broadcast over leading dimensions and work for float tensors on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x1, y1, x2, y2)."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> ``[..., 4]`` (cx, cy, w, h)."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], dim=-1)


def encode(gt_xyxy: torch.Tensor, priors_cxcywh: torch.Tensor, variances: Sequence[float]) -> torch.Tensor:
    """Regression targets ``[..., A, 4]`` for matched ground truth boxes ``[..., A, 4]`` (xyxy)."""
    gt = xyxy_to_cxcywh(gt_xyxy)
    offset_xy = (gt[..., :2] - priors_cxcywh[..., :2]) / (variances[0] * priors_cxcywh[..., 2:])
    gt_wh = gt[..., 2:].clamp(min=1e-12)
    offset_wh = torch.log(gt_wh / priors_cxcywh[..., 2:]) / variances[1]
    return torch.cat([offset_xy, offset_wh], dim=-1)


def decode(loc: torch.Tensor, priors_cxcywh: torch.Tensor, variances: Sequence[float],
           max_exponent: float | None = None) -> torch.Tensor:
    """Boxes ``[..., A, 4]`` xyxy (normalized) from offsets ``loc [..., A, 4]`` and priors ``[A, 4]``.

    ``max_exponent`` caps ``loc_wh * variances[1]`` before ``exp`` (torchvision's ``bbox_xform_clip``,
    log(1000/16)); ``None``: no cap."""
    center = priors_cxcywh[..., :2] + loc[..., :2] * variances[0] * priors_cxcywh[..., 2:]
    exponent = loc[..., 2:] * variances[1]
    if max_exponent is not None:
        exponent = exponent.clamp(max=max_exponent)
    size = priors_cxcywh[..., 2:] * torch.exp(exponent)
    return torch.cat([center - size / 2, center + size / 2], dim=-1)
