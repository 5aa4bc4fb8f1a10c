"""Detections <-> COCO results JSON: a list of ``{"image_id", "category_id", "bbox", "score"}``.

``bbox`` is ``[x, y, w, h]`` in pixels. For a COCO dataset ``image_id`` is the COCO image id and
``category_id`` the COCO category id; for any other dataset (VOC, synthetic) ``image_id`` is the
dataset's id (VOC: the image's file stem) and ``category_id`` the class name.

A model whose labels are category ids of their own (``Conventions.label_ids``: torchvision's COCO
model has 91 slots, COCO datasets 80 contiguous labels) is matched to a COCO dataset by id
(``dataset_label_table``); its detections are translated to the dataset's labels before they are
written or scored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from assd.errors import UserError
from assd.runtime.postprocess import Detections
from assd.utils import atomic_write_text


def _short(value) -> float:
    """The float32 ``value`` as the shortest Python float that reads back to the same float32."""
    return float(str(np.float32(value)))


def _plain(image_id):
    return image_id.item() if isinstance(image_id, np.generic) else image_id


def category_of_label(dataset) -> list:
    """``category_id`` per label - 1: COCO category ids for COCO datasets, class names otherwise."""
    if getattr(dataset, "coco_category_ids", None):
        return [int(c) for c in dataset.coco_category_ids]
    return list(dataset.class_names)


def dataset_label_table(model_cfg, dataset) -> np.ndarray | None:
    """How a model whose labels carry category ids (``conventions.label_ids``, e.g. torchvision's 91
    COCO slots with "N/A" gaps) maps onto a COCO dataset's contiguous labels: ``table[model label]`` is
    the dataset label of the same category id, 0 for ids the dataset lacks. ``None`` when no
    translation applies (the same class names, no label ids, or not a COCO dataset)."""
    label_ids = model_cfg.conventions.label_ids
    category_ids = getattr(dataset, "coco_category_ids", None)
    if not label_ids or not category_ids or tuple(model_cfg.class_names) == tuple(dataset.class_names):
        return None
    label_of = {int(category): label for label, category in enumerate(category_ids, start=1)}
    table = np.zeros(model_cfg.num_classes, np.int64)
    for label, category in enumerate(label_ids, start=1):
        table[label] = label_of.get(int(category), 0)
    return table


def label_ids_cover(model_cfg, dataset) -> bool:
    """Whether ``dataset_label_table`` gives every dataset category a model label of the same name."""
    table = dataset_label_table(model_cfg, dataset)
    if table is None:
        return False
    name_of = {int(table[label]): name for label, name in enumerate(model_cfg.class_names, start=1) if table[label]}
    return all(name_of.get(label) == name for label, name in enumerate(dataset.class_names, start=1))


def to_coco_results(detections: Sequence[Detections], dataset) -> list[dict]:
    """COCO results records of per-image detections in pixels (aligned with the dataset's indices)."""
    categories = category_of_label(dataset)
    records = []
    for image_id, dets in zip(dataset.image_ids, detections, strict=True):
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
            x1, y1, x2, y2 = (_short(v) for v in box)
            records.append({"image_id": _plain(image_id), "category_id": categories[int(label) - 1],
                            "bbox": [x1, y1, _short(x2 - x1), _short(y2 - y1)], "score": _short(score)})
    return records


def save_coco_results(path: str | os.PathLike, detections: Sequence[Detections], dataset) -> None:
    """Write ``to_coco_results`` to ``path`` atomically (compact JSON)."""
    atomic_write_text(path, json.dumps(to_coco_results(detections, dataset)))


def _finite(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {what} is {value!r}, not a finite number: fix the detections file")
    return float(value)


def from_coco_results(records, dataset, source: str = "detections") -> list[Detections]:
    """Per-image ``Detections`` in pixels (aligned with the dataset's indices) from COCO results records.

    ``records`` may also be ``{"detections": [...], ...}`` (as ``assd predict`` writes). Raises
    ``UserError`` (naming ``source``) for records that are not well-formed, image ids not in the
    dataset and categories the dataset does not have. Images without records get no detections.
    """
    if isinstance(records, dict) and "detections" in records:
        records = records["detections"]
    if not isinstance(records, list):
        raise UserError(f"{source}: expected a JSON list of COCO results records, got {type(records).__name__}")
    index_of = {_plain(image_id): index for index, image_id in enumerate(dataset.image_ids)}
    label_of = {category: label for label, category in enumerate(category_of_label(dataset), start=1)}
    columns = [([], [], []) for _ in range(len(dataset))]
    for position, record in enumerate(records):
        where = f"{source}: record {position}"
        if not isinstance(record, dict):
            raise UserError(f"{where}: not an object with image_id, category_id, bbox and score")
        image_id, category = record.get("image_id"), record.get("category_id")
        if isinstance(image_id, (list, dict)) or image_id not in index_of:
            kind = "file stem" if isinstance(next(iter(index_of), None), str) else "image id"
            raise UserError(f"{where}: image_id {image_id!r} is not in {getattr(dataset, 'source', 'the dataset')} "
                            f"(expected a {kind} of its images): evaluate against the data the detections are for")
        if isinstance(category, (list, dict)) or category not in label_of:
            kind = "COCO category id" if getattr(dataset, "coco_category_ids", None) else "class name"
            raise UserError(f"{where}: category_id {category!r} is not a {kind} of this dataset "
                            f"(e.g. {list(label_of)[:3]}): use the dataset's categories")
        bbox = record.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise UserError(f"{where}: 'bbox' is {bbox!r}, not [x, y, w, h]: fix the detections file")
        x, y, w, h = (_finite(v, "a bbox value", where) for v in bbox)
        if w < 0 or h < 0:
            raise UserError(f"{where}: bbox {bbox} has a negative width or height: fix the detections file")
        boxes, scores, labels = columns[index_of[image_id]]
        boxes.append((x, y, x + w, y + h))
        scores.append(_finite(record.get("score"), "'score'", where))
        labels.append(label_of[category])
    detections = []
    for boxes, scores, labels in columns:
        dets = Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels, np.int64))
        detections.append(dets.select(np.argsort(-dets.scores, kind="stable")))
    return detections


def load_coco_results(path: str | os.PathLike, dataset) -> list[Detections]:
    """``from_coco_results`` of a JSON file; one-line ``UserError`` for a missing or malformed file."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: detections file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}): give a COCO results list "
                        "[{image_id, category_id, bbox, score}, ...]") from None
    return from_coco_results(records, dataset, source=str(path))
