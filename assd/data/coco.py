"""COCO from an official ``instances_*.json`` and its image folder, read with pycocotools.

Category ids are mapped to contiguous labels 1..C-1 in increasing id order (label k <->
``coco_category_ids[k - 1]``, name ``class_names[k - 1]``). COCO ``bbox`` ``[x, y, w, h]`` is already
continuous 0-based pixels, so boxes are ``(x, y, x + w, y + h)``. Crowd regions (``iscrowd=1``) stay in
``annotation(i)`` flagged ``crowd`` and ``difficult`` (so evaluation ignores them) and are never
training targets.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from assd.data.annotation import Annotation
from assd.data.dataset import BadSample, DetectionDataset, RecordCollector
from assd.errors import UserError


def load_coco(annotation_file: str | Path) -> COCO:
    """pycocotools ``COCO`` for ``annotation_file``; UserError naming the file when it is not a COCO json."""
    path = Path(annotation_file)
    if not path.is_file():
        raise UserError(f"{path}: COCO annotation file not found: give the instances_*.json path")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: not a valid COCO instances json ({type(exc).__name__}: {exc}): "
                        "give an official COCO annotation file") from None
    for key in ("images", "annotations", "categories"):  # pycocotools indexes what exists, fails later
        if not isinstance(coco.dataset.get(key), list):
            raise UserError(f"{path}: not a COCO instances json: '{key}' is missing or not a list: give an "
                            "instances_*.json with images, annotations and categories")
    for key in ("images", "categories"):
        _check_ids(path, key, coco.dataset[key])
    _check_annotation_fields(path, coco.dataset["annotations"])
    return coco


def _check_annotation_fields(path: Path, annotations: list) -> None:
    """UserError naming the first annotation whose ``iscrowd`` is not 0/1 or whose ``area`` is not a number:
    pycocotools' COCOeval reads both as numbers from the raw file ("iscrowd": "yes" was a ValueError)."""
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise UserError(f"{path}: annotations[{index}] is not a JSON object: give an official COCO instances json")
        crowd, area = ann.get("iscrowd", 0), ann.get("area", 0)
        if isinstance(crowd, str) or crowd not in (0, 1):
            raise UserError(f"{path}: annotations[{index}] (id {ann.get('id')!r}) has iscrowd {crowd!r}: it must be 0 "
                            "or 1, as in official COCO files")
        if isinstance(area, bool) or not isinstance(area, (int, float)):
            raise UserError(f"{path}: annotations[{index}] (id {ann.get('id')!r}) has area {area!r}, not a number")


def _check_ids(path: Path, key: str, entries: list) -> None:
    """UserError naming the first entry of ``entries`` whose ``id`` is not an int (bools are not ids)."""
    for index, entry in enumerate(entries):
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(entry_id, int) or isinstance(entry_id, bool):
            raise UserError(f"{path}: {key}[{index}] has id {entry_id!r}, not a whole number: give every image "
                            "and category an integer id, as official COCO files do")


def _coco_annotation(coco: COCO, image_id: int, label_of: dict[int, int]):
    """The ``Annotation`` of one image as annotated (boxes not yet clipped to the image; see
    ``clip_annotation``); ``BadSample`` when unusable."""
    info = coco.imgs[image_id]
    try:
        width, height = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError):
        raise BadSample("image entry without a valid width/height") from None
    boxes, labels, crowd = [], [], []
    for ann in coco.imgToAnns.get(image_id, []):
        category = ann.get("category_id")
        if category not in label_of:
            raise BadSample(f"annotation {ann.get('id')}: unknown category_id {category}")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise BadSample(f"annotation {ann.get('id')}: bbox missing or not 4 numbers") from None
        if not np.all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
            raise BadSample(f"annotation {ann.get('id')}: invalid bbox {[x, y, w, h]}")
        boxes.append((x, y, x + w, y + h))
        labels.append(label_of[category])
        crowd.append(bool(ann.get("iscrowd", 0)))
    crowd = np.array(crowd, dtype=bool)
    return Annotation(image_id=image_id, width=width, height=height, boxes=np.array(boxes, dtype=np.float32),
                      labels=np.array(labels, dtype=np.int64), difficult=crowd.copy(), crowd=crowd)


def coco_dataset(images_dir: str | Path, annotation_file: str | Path, source: str | None = None,
                 **transform) -> DetectionDataset:
    """Every image listed in ``annotation_file`` (official COCO instances json) found in ``images_dir``.
    ``transform`` (train, input_size, mean, std) goes to ``DetectionDataset``."""
    images_dir = Path(images_dir)
    source = source or f"coco:{images_dir}:{annotation_file}"
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: COCO image folder not found: give the folder holding the .jpg files")
    coco = load_coco(annotation_file)
    category_ids = sorted(coco.cats)
    if not category_ids:
        raise UserError(f"{annotation_file}: no categories in this COCO json: give an instances_*.json")
    class_names = [str(coco.cats[c].get("name", c)) for c in category_ids]
    label_of = {category: label for label, category in enumerate(category_ids, start=1)}
    found = RecordCollector()
    for image_id in sorted(coco.getImgIds()):
        image_path = images_dir / str(coco.imgs[image_id].get("file_name", f"{image_id:012d}.jpg"))
        found.add(image_path, str(image_path), lambda: _coco_annotation(coco, image_id, label_of))  # noqa: B023
    found.check(source)
    return DetectionDataset("coco", source, class_names, found.records, skipped=found.skipped,
                            dropped_boxes=found.dropped_boxes,
                            coco_category_ids=category_ids, coco_annotation_file=str(Path(annotation_file)),
                            **transform)
