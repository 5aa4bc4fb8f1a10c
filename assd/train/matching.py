"""Prior-to-ground-truth matching as in SSD, vectorized over the batch.

Targets of a batch (a list of per-image dicts) are padded to ``[B, Gmax, 4]`` with a validity mask,
then every prior is matched to the ground truth box it overlaps most:

1. IoU of every (image, gt, prior) triple: ``[B, Gmax, A]`` (one ``torchvision.ops.box_iou`` call on
   the flattened ``[B*Gmax, 4]`` boxes, since the priors are shared by all images).
2. Each prior takes its best gt; it is positive when that IoU is >= the threshold (0.5).
3. Each gt's best prior is forced to it (positive even below the threshold), so no object goes
   unmatched. When two gts share a best prior, one of them wins (SSD: the later one).

No Python loop over images or objects: the same code runs on CPU and GPU without host syncs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from assd.models.box_coding import cxcywh_to_xyxy

FORCED_MATCH_IOU = 2.0  # larger than any IoU: marks a gt's best prior as positive whatever its overlap


def pad_targets(targets: Sequence[dict], device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-image targets into padded tensors.

    Args:
        targets: per image ``{"boxes": float [n_i, 4] xyxy normalized, "labels": int64 [n_i] in 1..C-1}``.

    Returns:
        ``gt_boxes [B, G, 4]`` (zeros where padded), ``gt_labels [B, G]`` int64 (0 where padded) and
        ``gt_mask [B, G]`` bool (True for real objects), with ``G = max(1, max_i n_i)``.
    """
    batch = len(targets)
    gmax = max([1] + [int(t["labels"].numel()) for t in targets])
    gt_boxes = torch.zeros(batch, gmax, 4, dtype=torch.float32)
    gt_labels = torch.zeros(batch, gmax, dtype=torch.int64)
    gt_mask = torch.zeros(batch, gmax, dtype=torch.bool)
    for index, target in enumerate(targets):  # cheap host-side copy; the matching itself is batched
        count = int(target["labels"].numel())
        gt_boxes[index, :count] = target["boxes"].reshape(-1, 4).float()
        gt_labels[index, :count] = target["labels"].reshape(-1).long()
        gt_mask[index, :count] = True
    return gt_boxes.to(device), gt_labels.to(device), gt_mask.to(device)


def match_priors(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_mask: torch.Tensor,
                 priors_cxcywh: torch.Tensor, iou_threshold: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match every prior of every image to a ground truth box.

    Args:
        gt_boxes: ``[B, G, 4]`` xyxy normalized; gt_labels: ``[B, G]`` int64 in 1..C-1;
        gt_mask: ``[B, G]`` bool, False for padding; priors_cxcywh: ``[A, 4]`` normalized.

    Returns:
        ``matched_boxes [B, A, 4]`` xyxy (the matched gt of every prior; meaningful for positives only)
        and ``matched_labels [B, A]`` int64 (0 = background, else the matched gt's label).
    """
    batch, gmax = gt_labels.shape
    num_priors = priors_cxcywh.shape[0]
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh.float())
    iou = box_iou(gt_boxes.reshape(-1, 4).float(), priors_xyxy).reshape(batch, gmax, num_priors)
    iou = iou.masked_fill(~gt_mask.unsqueeze(-1), -1.0)  # padding never wins a prior

    best_gt_iou, best_gt_index = iou.max(dim=1)  # [B, A]: each prior's best gt
    best_prior_index = iou.argmax(dim=2)  # [B, G]: each gt's best prior
    # Force gt g onto its best prior. Padded gts scatter into a spare column A that is cut off after.
    target_column = torch.where(gt_mask, best_prior_index, torch.full_like(best_prior_index, num_priors))
    gt_range = torch.arange(gmax, device=gt_labels.device).expand(batch, gmax)
    spare = torch.zeros(batch, 1, dtype=best_gt_index.dtype, device=best_gt_index.device)
    best_gt_index = torch.cat([best_gt_index, spare], dim=1).scatter(1, target_column, gt_range)[:, :num_priors]
    spare_iou = torch.zeros(batch, 1, dtype=best_gt_iou.dtype, device=best_gt_iou.device)
    forced = torch.full(target_column.shape, FORCED_MATCH_IOU, dtype=best_gt_iou.dtype, device=best_gt_iou.device)
    best_gt_iou = torch.cat([best_gt_iou, spare_iou], dim=1).scatter(1, target_column, forced)[:, :num_priors]

    matched_labels = gt_labels.gather(1, best_gt_index)
    matched_labels = matched_labels.masked_fill(best_gt_iou < iou_threshold, 0)
    matched_boxes = gt_boxes.gather(1, best_gt_index.unsqueeze(-1).expand(batch, num_priors, 4))
    return matched_boxes, matched_labels
