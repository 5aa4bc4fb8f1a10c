"""Data specs: one string names a dataset on the command line.

    voc:ROOT[:SETS]                 ROOT = a VOCdevkit folder, its parent or one VOC<year> folder;
                                    SETS = YEAR[-SPLIT] joined by '+' (07+12, 2007-test, 2012-trainval);
                                    default: the trainval sets of every year found
    coco:IMAGES_DIR:ANNOTATIONS_JSON an official COCO instances json and its image folder
    synthetic[:N[:START]]           N generated images (default 200) starting at sample START (default 0)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from assd.data.coco import coco_dataset
from assd.data.dataset import DetectionDataset
from assd.data.synthetic import SyntheticDataset
from assd.data.voc import is_voc_sets, voc_dataset
from assd.errors import UserError
from assd.models.config import IMAGENET_MEAN, IMAGENET_STD

SPEC_FORMS = "voc:ROOT[:SETS] (e.g. voc:data/VOCdevkit:07+12), coco:IMAGES_DIR:ANNOTATIONS_JSON, synthetic[:N[:START]]"
DEFAULT_SYNTHETIC_IMAGES = 200
MAX_SYNTHETIC = 10**9  # N and START: beyond this len() overflows and nobody means it


def _bad(spec: str, why: str) -> UserError:
    return UserError(f"data spec '{spec}': {why}: use one of {SPEC_FORMS}")


def _split_voc(spec: str, rest: str) -> tuple[str, str | None]:
    root, sep, last = rest.rpartition(":")
    if sep and is_voc_sets(last):
        return root, last
    if not rest:
        raise _bad(spec, "no VOC root folder")
    return rest, None


def parse_data_spec(spec: str, train: bool = False, input_size: int | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    config=None) -> DetectionDataset:
    """The ``DetectionDataset`` a spec names (forms in the module docstring).

    Args:
        train: serve SSD-augmented samples (needs ``input_size``) instead of plain resized ones.
        input_size, mean, std: the transform's square side and normalization; default to those of
            ``config`` (a ``ModelConfig``, which also gives the channel order) when given, else no resize,
            ImageNet statistics and RGB.
    """
    if config is not None:
        input_size = config.input_size if input_size is None else input_size
        mean = config.mean if mean is None else mean
        std = config.std if std is None else std
    transform = {"train": train, "input_size": input_size,
                 "mean": mean if mean is not None else IMAGENET_MEAN, "std": std if std is not None else IMAGENET_STD,
                 "channel_order": config.conventions.channel_order if config is not None else "rgb"}
    kind, _, rest = spec.partition(":")
    if kind == "voc":
        root, sets = _split_voc(spec, rest)
        return voc_dataset(root, sets, source=spec, **transform)
    if kind == "coco":
        images_dir, sep, annotation_file = rest.rpartition(":")
        if not sep or not images_dir or not annotation_file:
            raise _bad(spec, "COCO needs an image folder and an annotation json")
        return coco_dataset(images_dir, annotation_file, source=spec, **transform)
    if kind == "synthetic":
        match = re.fullmatch(r"(?::(\d+)(?::(\d+))?)?", spec[len("synthetic"):])
        if match is None or (match.group(1) is not None and not 1 <= int(match.group(1)) <= MAX_SYNTHETIC) or (
                match.group(2) is not None and int(match.group(2)) > MAX_SYNTHETIC):
            raise _bad(spec, f"N and START must be whole numbers, 1 <= N <= {MAX_SYNTHETIC}, START <= {MAX_SYNTHETIC}")
        num_images = int(match.group(1)) if match.group(1) else DEFAULT_SYNTHETIC_IMAGES
        start = int(match.group(2)) if match.group(2) else 0
        return SyntheticDataset(num_images, start, source=spec, **transform)
    raise _bad(spec, f"unknown data kind '{kind}'")


def data_spec_inputs(spec: str | None) -> list[str]:
    """The files and folders a data spec (or a plain image folder, as calibration accepts) reads: what
    no output of a command may land on (``assd.paths.check_outputs``). Nothing is validated here."""
    if not isinstance(spec, str) or not spec:  # None, or a dataset object given through the Python API
        return []
    kind, _, rest = spec.partition(":")
    if kind == "voc":
        root, _sets = _split_voc(spec, rest) if rest else ("", None)
        return [root] if root else []
    if kind == "coco":
        images_dir, _, annotation_file = rest.rpartition(":")
        return [path for path in (images_dir, annotation_file) if path]
    if kind == "synthetic":
        return []
    return [spec]
