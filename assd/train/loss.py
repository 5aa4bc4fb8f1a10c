"""SSD's MultiBox loss ("the same loss functions as SSD", paper section 4).

    L = (L_conf + alpha * L_loc) / N,   N = number of positive priors in the batch

* ``L_loc``: Smooth-L1 (beta 1) between the predicted offsets and the matched gt encoded against the
  priors with variances (0.1, 0.2), summed over positive priors.
* ``L_conf``: cross-entropy over all positives plus the hardest negatives: per image, the
  ``neg_pos_ratio * num_pos`` background priors with the highest background loss (3:1).

Everything is computed in float32 (also under autocast) and vectorized over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from assd.models.box_coding import encode
from assd.train.matching import match_priors, pad_targets


def hard_negative_mask(background_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: float = 3.0
                       ) -> torch.Tensor:
    """The negatives to train on: per image, the ``ratio * num_pos`` non-positive priors with the largest
    loss (all of them when there are fewer).

    Args:
        background_loss: ``[B, A]`` cross-entropy of every prior against class 0.
        positive: ``[B, A]`` bool.

    Returns:
        ``[B, A]`` bool, disjoint from ``positive``.
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = torch.minimum((neg_pos_ratio * num_pos).long(), positive.shape[1] - num_pos)
    mining_loss = background_loss.detach().masked_fill(positive, float("-inf"))
    order = mining_loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)  # rank[b, a]: position of prior a in the descending order
    return rank < num_neg


class MultiBoxLoss(nn.Module):
    """Match, encode and score one batch. ``forward(loc, conf, targets)`` -> dict of scalar tensors:
    ``loss`` (to backpropagate), ``loc_loss`` and ``conf_loss`` (both already divided by N) and
    ``num_pos`` (N, float).

    Args:
        priors_cxcywh: ``[A, 4]`` the model's priors (normalized).
        variances: box-coding variances, ``cfg.variances``.
        iou_threshold: minimum IoU for a positive match (0.5).
        neg_pos_ratio: hard negatives per positive (3).
        loc_weight: alpha, the weight of the localization term (1).
    """

    def __init__(self, priors_cxcywh: torch.Tensor, variances: Sequence[float], iou_threshold: float = 0.5,
                 neg_pos_ratio: float = 3.0, loc_weight: float = 1.0):
        super().__init__()
        self.register_buffer("priors_cxcywh", priors_cxcywh.detach().float().clone(), persistent=False)
        self.variances = tuple(float(v) for v in variances)
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.loc_weight = loc_weight

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``loc [B, A, 4]`` encoded offsets, ``conf [B, A, C]`` logits, ``targets`` per-image dicts
        (``boxes`` xyxy normalized, ``labels``)."""
        loc, conf = loc.float(), conf.float()
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, device=loc.device)
        matched_boxes, labels = match_priors(gt_boxes, gt_labels, gt_mask, self.priors_cxcywh,
                                             self.iou_threshold)
        positive = labels > 0
        num_pos = positive.sum().float()
        normalizer = num_pos.clamp(min=1.0)

        loc_targets = encode(matched_boxes, self.priors_cxcywh, self.variances)
        loc_per_prior = F.smooth_l1_loss(loc, loc_targets, reduction="none", beta=1.0).sum(dim=-1)
        loc_loss = (loc_per_prior * positive).sum() / normalizer

        batch, num_priors, num_classes = conf.shape
        ce = F.cross_entropy(conf.reshape(-1, num_classes), labels.reshape(-1), reduction="none")
        ce = ce.reshape(batch, num_priors)
        negative = hard_negative_mask(ce, positive, self.neg_pos_ratio)  # CE of a negative = its bg loss
        conf_loss = (ce * (positive | negative)).sum() / normalizer

        return {"loss": conf_loss + self.loc_weight * loc_loss, "loc_loss": loc_loss, "conf_loss": conf_loss,
                "num_pos": num_pos}
