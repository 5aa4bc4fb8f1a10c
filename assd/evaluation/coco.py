"""COCO box AP through pycocotools (``COCOeval``, iouType ``bbox``), its prints captured.

For a COCO dataset the ground truth is the dataset's own instances json (its segmentation areas decide
small/medium/large, its ``iscrowd`` regions are ignore regions) restricted to the dataset's images, and
labels map back to category ids through ``dataset.coco_category_ids``. Any other dataset (VOC,
synthetic) is turned into an in-memory COCO ground truth: box areas, image ids ``1..N`` in dataset
order, category ids = labels, and difficult objects as ``iscrowd`` regions (so, as in the VOC metric,
a detection on them is neither TP nor FP).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from assd.errors import UserError

# COCOeval.stats order (summarize()).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def ground_truth(dataset) -> tuple[COCO, list, list[int]]:
    """``(COCO ground truth, COCO image id per dataset index, COCO category id per label - 1)``."""
    if getattr(dataset, "coco_annotation_file", None) and getattr(dataset, "coco_category_ids", None):
        try:
            with _quiet():
                coco = COCO(str(dataset.coco_annotation_file))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            raise UserError(f"{dataset.coco_annotation_file}: cannot read COCO ground truth ({exc})") from None
        return coco, list(dataset.image_ids), list(dataset.coco_category_ids)
    images, annotations = [], []
    for index in range(len(dataset)):
        gt = dataset.annotation(index)
        images.append({"id": index + 1, "width": int(gt.width), "height": int(gt.height)})
        crowd = getattr(gt, "crowd", None)
        ignore = np.asarray(gt.difficult, bool) | (np.asarray(crowd, bool) if crowd is not None else False)
        for box, label, crowd in zip(np.asarray(gt.boxes, np.float64), gt.labels, ignore):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(label),
                                "bbox": [box[0], box[1], width, height], "area": width * height,
                                "iscrowd": int(crowd)})
    categories = [{"id": label, "name": name} for label, name in enumerate(dataset.class_names, start=1)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with _quiet():
        coco.createIndex()
    return coco, [index + 1 for index in range(len(dataset))], list(range(1, len(dataset.class_names) + 1))


def _results(coco_gt: COCO, records: list[dict]) -> COCO:
    if records:
        with _quiet():
            return coco_gt.loadRes(records)
    empty = COCO()  # loadRes refuses an empty list; no detections is a valid (zero) result
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": list(coco_gt.dataset["categories"])}
    with _quiet():
        empty.createIndex()
    return empty


def coco_evaluate(detections: Sequence, dataset) -> tuple[dict[int, float], dict[str, float], str]:
    """COCO metrics of per-image detections (pixels, aligned with the dataset's indices).

    Returns:
        ``(AP@[.5:.95] per label with ground truth, {"AP", "AP50", ..., "ARl"}, pycocotools' summary)``.
    """
    coco_gt, image_ids, category_ids = ground_truth(dataset)
    records = []
    for image_id, dets in zip(image_ids, detections, strict=True):
        for box, score, label in zip(np.asarray(dets.boxes, np.float64), dets.scores, dets.labels):
            records.append({"image_id": image_id, "category_id": category_ids[int(label) - 1],
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)})
    coco_dt = _results(coco_gt, records)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.imgIds = list(image_ids)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
    # precision [T iou thresholds, R recalls, K categories, A areas, M maxDets]; area "all", maxDets 100.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    column_of = {category: k for k, category in enumerate(evaluator.params.catIds)}
    per_label = {}
    for label, category in enumerate(category_ids, start=1):
        values = precision[:, :, column_of[category]] if category in column_of else np.array([-1.0])
        values = values[values > -1]
        if values.size:
            per_label[label] = float(values.mean())
    lines = [line for line in summary.getvalue().splitlines() if line.lstrip().startswith("Average")]
    return per_label, stats, "\n".join(lines)
