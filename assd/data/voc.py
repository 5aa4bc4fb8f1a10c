"""PASCAL VOC from a VOCdevkit folder (``VOC2007/``, ``VOC2012/`` with ``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt``).

Coordinate convention: VOC XML boxes are 1-based inclusive pixel indices (``xmin=1`` is the first
column, ``xmax`` the last column covered). They are converted to continuous 0-based xyxy as
``(xmin - 1, ymin - 1, xmax, ymax)``, so the box covers exactly the annotated pixels, lies inside
``[0, W] x [0, H]`` and its area ``(x2 - x1) * (y2 - y1)`` equals the devkit's ``(xmax - xmin + 1) *
(ymax - ymin + 1)``. Training targets and evaluation both use these annotations.

Objects marked ``difficult`` stay in ``annotation(i)`` (flagged) for evaluation and are dropped from
training targets. Labels follow ``assd.models.config.VOC_CLASSES`` (label k <-> ``VOC_CLASSES[k - 1]``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from assd.data.annotation import Annotation
from assd.data.dataset import BadSample, DetectionDataset, RecordCollector
from assd.data.images import image_size
from assd.errors import UserError
from assd.models.config import VOC_CLASSES

VOC_SPLITS = ("train", "val", "trainval", "test")
_SET_PATTERN = re.compile(r"^(\d{2}|\d{4})(?:-(train|val|trainval|test))?$")
VOC_SETS_HELP = "VOC image sets: YEAR[-SPLIT] joined by '+', e.g. 07+12, 2007-test, 2012-trainval"


def is_voc_sets(text: str) -> bool:
    """Whether ``text`` reads as VOC image sets (``07+12``, ``2007-test``, ...)."""
    return all(_SET_PATTERN.match(term.strip()) for term in text.split("+"))


def parse_voc_sets(text: str) -> list[tuple[str, str]]:
    """``"07+12"`` -> ``[("2007", "trainval"), ("2012", "trainval")]``; ``"2007-test"`` -> ``[("2007", "test")]``."""
    sets = []
    for term in text.split("+"):
        match = _SET_PATTERN.match(term.strip())
        if match is None:
            raise UserError(f"'{text}': bad image set '{term}': expected {VOC_SETS_HELP}")
        year, split = match.group(1), match.group(2) or "trainval"
        sets.append(("20" + year if len(year) == 2 else year, split))
    return sets


def find_devkit(root: str | Path) -> tuple[Path, list[str]]:
    """``(devkit folder holding VOC<year>/ folders, years found)`` for ROOT = a VOCdevkit folder, its
    parent, or one ``VOC<year>`` folder (then only that year is found)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: VOC root folder not found: give a VOCdevkit folder or its parent")
    if (root / "Annotations").is_dir() and re.fullmatch(r"VOC\d{4}", root.name):
        return root.parent, [root.name[3:]]
    devkit = root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root
    years = sorted(p.name[3:] for p in devkit.glob("VOC[0-9][0-9][0-9][0-9]") if (p / "Annotations").is_dir())
    if not years:
        raise UserError(f"{root}: no VOC<year>/Annotations folders found: give a VOCdevkit folder or its parent")
    return devkit, years


def _image_ids(year_dir: Path, split: str, explicit: bool) -> list[str]:
    list_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if list_file.is_file():
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        return ids
    if explicit:
        raise UserError(f"{list_file}: image set file not found: choose a split that exists ({VOC_SETS_HELP})")
    # A VOC-format folder without ImageSets: use every annotation file.
    return sorted(p.stem for p in (year_dir / "Annotations").glob("*.xml"))


def _number(element: ET.Element, tag: str) -> float:
    child = element.find(tag)
    if child is None or child.text is None:
        raise BadSample(f"<{tag}> missing")
    try:
        return float(child.text.strip())
    except ValueError:
        raise BadSample(f"<{tag}> is '{child.text.strip()}', not a number") from None


def _image_size(root: ET.Element, image_path: Path) -> tuple[int, int]:
    size = root.find("size")
    try:
        width, height = int(_number(size, "width")), int(_number(size, "height"))
    except (BadSample, AttributeError):  # AttributeError: no <size> element at all
        width = height = 0
    if width > 0 and height > 0:
        return width, height
    size = image_size(image_path)  # no usable <size>: ask the image itself (header only)
    if size is None:
        raise BadSample(f"no <size> and the image {image_path} cannot be read")
    return size


def parse_voc_xml(xml_path: Path, image_path: Path, image_id: str):
    """The ``Annotation`` of one VOC XML file as annotated (boxes not yet clipped to the image; see
    ``clip_annotation``); ``BadSample`` when unusable."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise BadSample(f"malformed XML ({exc})") from None
    width, height = _image_size(root, image_path)
    boxes, labels, difficult = [], [], []
    for index, obj in enumerate(root.findall("object")):
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if name not in VOC_CLASSES:
            raise BadSample(f"object {index}: unknown class '{name}' (expected one of the 20 VOC classes)")
        box_el = obj.find("bndbox")
        if box_el is None:
            raise BadSample(f"object {index} ({name}): <bndbox> missing")
        xmin, ymin, xmax, ymax = (_number(box_el, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if not np.all(np.isfinite([xmin, ymin, xmax, ymax])) or xmax < xmin or ymax < ymin:
            raise BadSample(f"object {index} ({name}): invalid box {xmin:g},{ymin:g},{xmax:g},{ymax:g}")
        difficult_el = obj.find("difficult")
        is_difficult = difficult_el is not None and (difficult_el.text or "0").strip() not in ("0", "")
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> 0-based continuous
        labels.append(VOC_CLASSES.index(name) + 1)
        difficult.append(is_difficult)
    return Annotation(image_id=image_id, width=width, height=height, boxes=np.array(boxes, dtype=np.float32),
                      labels=np.array(labels, dtype=np.int64), difficult=np.array(difficult, dtype=bool))


def voc_dataset(root: str | Path, sets: str | None = None, source: str | None = None, **transform) -> DetectionDataset:
    """PASCAL VOC ``sets`` (see ``parse_voc_sets``; default: the trainval sets of every year found) under
    ``root``. ``transform`` (train, input_size, mean, std) goes to ``DetectionDataset``."""
    devkit, years = find_devkit(root)
    source = source or f"voc:{root}"
    chosen = parse_voc_sets(sets) if sets else [(year, "trainval") for year in years]
    found = RecordCollector()
    for year, split in chosen:
        year_dir = devkit / f"VOC{year}"
        if not (year_dir / "Annotations").is_dir():
            raise UserError(f"{source}: no VOC{year}/Annotations in {devkit} (found: "
                            f"{', '.join('VOC' + y for y in years)}): check the image sets")
        for image_id in _image_ids(year_dir, split, explicit=sets is not None):
            xml_path = year_dir / "Annotations" / f"{image_id}.xml"
            image_path = year_dir / "JPEGImages" / f"{image_id}.jpg"
            found.add(image_path, str(xml_path), lambda: parse_voc_xml(xml_path, image_path, image_id))  # noqa: B023
    found.check(source)
    return DetectionDataset("voc", source, VOC_CLASSES, found.records, skipped=found.skipped,
                            dropped_boxes=found.dropped_boxes,
                            **transform)
