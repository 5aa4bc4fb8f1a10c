"""``DetectionDataset``: the torch Dataset every data source (VOC, COCO, synthetic) is served as.

A dataset is a list of ``ImageRecord`` (image path + ``Annotation``) built once at construction,
when malformed samples are skipped and counted (``skipped``) and degenerate boxes dropped and counted
(``dropped_boxes``). Images are read lazily. ``__getitem__`` runs the dataset's transform
(``assd.data.transforms``): SSD augmentation when ``train=True``, plain resize + normalize otherwise.
Datasets hold only plain data (no open files, no lambdas) so DataLoader workers can pickle them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from assd.data.annotation import Annotation, clip_annotation
from assd.data.images import UnreadableImage, read_rgb_image
from assd.data.transforms import build_transform
from assd.errors import UserError
from assd.models.config import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger("assd.data")

MAX_BAD_FRACTION = 0.5  # a set with more unusable samples than this is refused as a whole
MAX_CONSECUTIVE_UNREADABLE = 50  # training gives up when this many images in a row cannot be read


class BadSample(Exception):
    """One sample's annotation cannot be used (the message says why); it is skipped and counted."""


@dataclass
class ImageRecord:
    """One usable sample: where its image is and what is in it (``annotation``: clipped to the image;
    ``raw``: as annotated, kept to re-clip when the image's real size is not the annotated one)."""

    path: str
    annotation: Annotation
    raw: Annotation | None = None


@dataclass
class RecordCollector:
    """The records of a set being read, and its skipped samples and dropped boxes as ``(file, reason)``."""

    records: list[ImageRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_boxes: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0

    def add(self, image_path: Path, label_file: str, parse: Callable[[], Annotation]) -> None:
        """Add the image at ``image_path`` with ``parse()``'s annotation (boxes as annotated), clipped to
        its annotated size; a missing image or a ``BadSample`` skips it (noted against ``label_file``)."""
        self.total += 1
        try:
            if not image_path.is_file():
                raise BadSample("image file missing")
            raw = parse()
        except BadSample as exc:
            self.skipped.append((label_file, str(exc)))
            return
        annotation, dropped = clip_annotation(raw, raw.width, raw.height)
        self.dropped_boxes.extend((label_file, reason) for reason in dropped)
        self.records.append(ImageRecord(str(image_path), annotation, raw))

    def check(self, source: str) -> None:
        """``check_bad_fraction`` of what was collected."""
        check_bad_fraction(source, self.total, self.skipped, self.dropped_boxes)


def check_bad_fraction(source: str, total: int, skipped: Sequence[tuple[str, str]],
                       dropped_boxes: Sequence[tuple[str, str]] = ()) -> None:
    """Refuse a set that is empty or mostly broken (UserError); warn in one line about a few bad samples."""
    if total == 0:
        raise UserError(f"{source}: no images found: check the path and the image set names")
    if len(skipped) > MAX_BAD_FRACTION * total:
        examples = "; ".join(f"{file}: {reason}" for file, reason in skipped[:3])
        raise UserError(f"{source}: {len(skipped)} of {total} samples are unusable, e.g. {examples}: "
                        "fix the annotations or point at the right folder")
    if skipped or dropped_boxes:
        first = skipped[0] if skipped else dropped_boxes[0]
        logger.warning("%s: skipped %d of %d images and dropped %d degenerate boxes (first: %s: %s); "
                       "see dataset.skipped / dataset.dropped_boxes",
                       source, len(skipped), total, len(dropped_boxes), first[0], first[1])


class DetectionDataset(Dataset):
    """Images with box annotations, served as ``(image [3, S, S], {"boxes", "labels"})`` pairs.

    Attributes:
        name: ``"voc"``, ``"coco"`` or ``"synthetic"``.
        source: the data spec or folder it was read from (for messages).
        class_names: foreground names; label k <-> ``class_names[k - 1]``.
        image_ids: per sample, the id its ``Annotation`` carries.
        skipped: ``(file, reason)`` of each sample left out (malformed annotation, unknown class,
            missing image, or, during training, an image that could not be decoded).
        dropped_boxes: ``(file, reason)`` of each box dropped for having no area inside the image.
        size_mismatches: ``(file, reason)`` of each image whose real size differs from its annotated size
            (its boxes are clipped to the real size; see ``use_image_size``).
        coco_category_ids: COCO only: label k <-> ``coco_category_ids[k - 1]``; else None.
        coco_annotation_file: COCO only: the instances json; else None.
        train, input_size, mean, std, channel_order: what the transform does (see ``set_transform``).
    """

    def __init__(self, name: str, source: str, class_names: Sequence[str], records: Sequence[ImageRecord],
                 *, skipped: Sequence[tuple[str, str]] = (), dropped_boxes: Sequence[tuple[str, str]] = (),
                 train: bool = False, input_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 channel_order: str = "rgb", coco_category_ids: Sequence[int] | None = None,
                 coco_annotation_file: str | None = None):
        self.name = name
        self.source = source
        self.class_names = tuple(class_names)
        self.records = list(records)
        self.skipped = list(skipped)
        self.dropped_boxes = list(dropped_boxes)
        self.coco_category_ids = tuple(coco_category_ids) if coco_category_ids is not None else None
        self.coco_annotation_file = coco_annotation_file
        self.size_mismatches: list[tuple[str, str]] = []
        self.set_transform(train=train, input_size=input_size, mean=mean, std=std, channel_order=channel_order)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names) + 1

    @property
    def image_ids(self) -> list:
        return [record.annotation.image_id for record in self.records]

    def set_transform(self, train: bool, input_size: int | None, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD, channel_order: str = "rgb") -> None:
        """Serve SSD-augmented (``train``) or plainly resized samples of side ``input_size`` normalized with
        ``mean``/``std`` (per network channel, for pixels in [0, 1]) in ``channel_order`` (``"rgb"`` or
        ``"bgr"``). ``input_size=None`` keeps the image size (eval only)."""
        if train and input_size is None:
            raise ValueError("training samples need an input_size (the model's square input side)")
        self.train = bool(train)
        self.input_size = input_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.channel_order = channel_order
        self.transform = build_transform(self.train, input_size, self.mean, self.std, channel_order)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return self.records[index].path

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` of sample ``index``; ``UnreadableImage`` naming the file when it cannot
        be read. An image whose real size is not its annotated size gets its annotation re-clipped to
        the real size (``use_image_size``)."""
        image = read_rgb_image(self.records[index].path)
        self.use_image_size(index, image.shape[1], image.shape[0])
        return image

    def use_image_size(self, index: int, width: int, height: int) -> None:
        """The one size rule of every command: the image's real size wins over its annotation's. When they
        differ, sample ``index``'s boxes (as annotated) are clipped to ``width`` x ``height`` instead,
        with a warning naming the file (once; listed in ``size_mismatches``)."""
        record = self.records[index]
        annotation = record.annotation
        if (width, height) == (annotation.width, annotation.height):
            return
        record.annotation, _ = clip_annotation(record.raw or annotation, width, height)
        reason = (f"image is {width}x{height} but its annotation says {annotation.width}x{annotation.height}: "
                  "using the image's size")
        self.size_mismatches.append((record.path, reason))
        logger.warning("%s: %s", record.path, reason)

    def use_real_image_sizes(self, count: int | None = None) -> None:
        """Apply ``use_image_size`` to the first ``count`` samples (default all) from their headers (no
        decoding), for evaluations of precomputed detections, which never load the images."""
        from assd.data.images import image_size

        for index, record in enumerate(self.records[:count]):
            size = image_size(record.path)
            if size is not None:
                self.use_image_size(index, *size)

    def annotation(self, index: int) -> Annotation:
        """All objects of sample ``index`` in pixels, difficult/crowd ones included (flagged)."""
        return self.records[index].annotation

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(image float [3, S, S] normalized, {"boxes": float32 [n, 4] xyxy in 0..1, "labels": int64 [n]})``
        without difficult/crowd objects. In training, an unreadable image is skipped (logged once and
        counted in ``skipped`` - of the worker's copy, under a multi-worker DataLoader) and the next
        sample served instead."""
        if not self.train:
            return self._sample(index)
        for attempt in range(min(MAX_CONSECUTIVE_UNREADABLE, len(self))):
            current = (index + attempt) % len(self)
            try:
                return self._sample(current)
            except UnreadableImage as exc:
                self._note_unreadable(current, exc)
        raise UserError(f"{self.source}: {min(MAX_CONSECUTIVE_UNREADABLE, len(self))} images in a row could not "
                        f"be read, e.g. {self.skipped[-1][0]}: check the image folder")

    def _note_unreadable(self, index: int, exc: UnreadableImage) -> None:
        path = self.image_path(index)
        if all(file != path for file, _ in self.skipped):
            self.skipped.append((path, str(exc)))
            logger.warning("skipping sample: %s", exc)

    def _sample(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self.load_image(index)  # first: it makes the annotation follow the image's real size
        annotation = self.annotation(index)
        boxes, labels = annotation.training_objects()
        image_chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        image_out, boxes_out, labels_out = self.transform(image_chw, torch.from_numpy(boxes),
                                                          torch.from_numpy(labels))
        return image_out, {"boxes": boxes_out, "labels": labels_out}


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """DataLoader ``collate_fn``: images stacked to ``[B, 3, S, S]``, targets kept as a list of dicts."""
    images = torch.stack([image for image, _ in batch])
    targets = [target for _, target in batch]
    return images, targets
