"""PASCAL VOC average precision, following the official devkit's ``voc_eval.py`` logic.

Per class, detections of all images are ranked by descending score; each is matched to the ground
truth box of its image and class with the highest IoU. IoU > 0.5 (strictly) with a non-difficult
box not matched before -> true positive; with one already matched -> false positive (duplicate);
with a *difficult* box -> ignored (neither TP nor FP); IoU <= 0.5 with every box -> false positive.
Recall counts non-difficult boxes only. AP is the area under the precision envelope:

- ``voc07``: the VOC2007 11-point metric (mean of the max precision at recall >= 0, 0.1, ..., 1);
- ``voc12``: the VOC2010+ all-point metric (exact area under the monotone precision envelope).

IoU convention: boxes are continuous 0-based pixel coordinates (``assd.data``: a VOC box
``xmin..xmax`` inclusive, 1-based, becomes ``x1 = xmin - 1, x2 = xmax``), so areas are plain
``(x2 - x1) * (y2 - y1)``. On the devkit's integer inclusive boxes this equals the devkit's "+1" IoU
exactly; no +1 is added here.

Ties in score are broken by image order, then by detection order within the image (stable sort);
the devkit's ``np.argsort(-confidence)`` leaves that order unspecified. Classes with no
non-difficult ground truth have no AP (left out of ``per_class`` and of the mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLD = 0.5


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from the cumulative ``recall``/``precision`` of the ranked detections (devkit ``voc_ap``)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        best = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
        return float(np.sum(best) / 11.0)  # (the devkit adds p / 11 in turn: equal to ~1e-16)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: max to the right
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU ``[n, m]`` of xyxy boxes ``[n, 4]`` and ``[m, 4]`` (continuous coordinates, float64)."""
    boxes, others = boxes.astype(np.float64), others.astype(np.float64)
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    other_area = np.prod(others[:, 2:] - others[:, :2], axis=1)
    union = area[:, None] + other_area[None, :] - intersection
    return intersection / np.maximum(union, np.finfo(np.float64).eps)


def match_image(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_difficult: np.ndarray) -> np.ndarray:
    """Outcome per detection of one image and class, detections in descending score order:
    1 = true positive, 0 = false positive, -1 = ignored (matched a difficult box)."""
    outcome = np.zeros(len(det_boxes), dtype=np.int8)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return outcome
    iou = box_iou(det_boxes, gt_boxes)
    best_gt, best_iou = iou.argmax(axis=1), iou.max(axis=1)
    matched = np.zeros(len(gt_boxes), dtype=bool)
    # Greedy in score order: whether a detection is TP depends on the ones ranked before it.
    for index, (gt, overlap) in enumerate(zip(best_gt, best_iou)):
        if overlap <= IOU_THRESHOLD:
            continue
        if gt_difficult[gt]:
            outcome[index] = -1
        elif not matched[gt]:
            matched[gt] = True
            outcome[index] = 1
    return outcome


def voc_average_precisions(detections: Sequence, annotations: Sequence, num_classes: int,
                           use_07_metric: bool) -> dict[int, float]:
    """AP per foreground label ``1..num_classes-1`` that has non-difficult ground truth.

    Args:
        detections: per image, an object with ``boxes [n, 4]`` (pixels), ``scores [n]``, ``labels [n]``.
        annotations: per image (same order), an object with ``boxes [m, 4]`` (pixels), ``labels [m]``,
            ``difficult [m]``.
    """
    scores = {label: [] for label in range(1, num_classes)}
    outcomes = {label: [] for label in range(1, num_classes)}
    positives = dict.fromkeys(range(1, num_classes), 0)
    for dets, gt in zip(detections, annotations, strict=True):
        gt_labels = np.asarray(gt.labels)
        gt_difficult = np.asarray(gt.difficult, dtype=bool)
        for label in np.unique(gt_labels[~gt_difficult]):
            positives[int(label)] += int(np.sum((gt_labels == label) & ~gt_difficult))
        det_labels = np.asarray(dets.labels)
        for label in np.unique(det_labels):
            if not 1 <= label < num_classes:
                raise ValueError(f"detection label {label} outside 1..{num_classes - 1}")
            mine = np.flatnonzero(det_labels == label)
            mine = mine[np.argsort(-np.asarray(dets.scores)[mine], kind="stable")]
            gt_mask = gt_labels == label
            outcome = match_image(np.asarray(dets.boxes)[mine], np.asarray(gt.boxes)[gt_mask], gt_difficult[gt_mask])
            scores[int(label)].append(np.asarray(dets.scores)[mine])
            outcomes[int(label)].append(outcome)
    average_precisions = {}
    for label in range(1, num_classes):
        if positives[label] == 0:
            continue
        if not scores[label]:
            average_precisions[label] = 0.0
            continue
        label_scores = np.concatenate(scores[label])
        label_outcomes = np.concatenate(outcomes[label])[np.argsort(-label_scores, kind="stable")]
        label_outcomes = label_outcomes[label_outcomes >= 0]  # difficult matches count nowhere
        tp = np.cumsum(label_outcomes == 1)
        fp = np.cumsum(label_outcomes == 0)
        recall = tp / positives[label]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        average_precisions[label] = voc_ap(recall, precision, use_07_metric)
    return average_precisions
