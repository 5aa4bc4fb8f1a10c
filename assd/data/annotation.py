"""Ground truth of one image (``Annotation``) and the box checks every dataset applies.

Coordinates are continuous 0-based pixels, ``xyxy``: pixel column ``i`` covers ``[i, i + 1)``, so a
box that covers columns ``a..b`` (inclusive) is ``x1 = a, x2 = b + 1`` and lies inside
``[0, width] x [0, height]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass
class Annotation:
    """Objects of one image, in pixels.

    Attributes:
        image_id: the dataset's id (VOC: file stem ``str``; COCO: image id ``int``; synthetic: index ``int``).
        width, height: image size in pixels.
        boxes: float32 ``[n, 4]`` xyxy in pixels (see the module docstring for the convention).
        labels: int64 ``[n]`` in ``1..C-1`` (label k <-> ``class_names[k - 1]``).
        difficult: bool ``[n]``; evaluation ignores these objects, training drops them. COCO crowd
            regions are flagged difficult too (as well as ``crowd``).
        crowd: bool ``[n]``; COCO ``iscrowd`` regions (all False for VOC and synthetic data).
    """

    image_id: int | str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    crowd: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if self.crowd is None:
            self.crowd = np.zeros(len(self.labels), dtype=bool)
        self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        n = len(self.boxes)
        if not (len(self.labels) == len(self.difficult) == len(self.crowd) == n):
            raise ValueError(f"annotation {self.image_id}: boxes, labels, difficult and crowd differ in length")

    def training_objects(self) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes [m, 4] pixels, labels [m])`` without difficult and crowd objects."""
        keep = ~(self.difficult | self.crowd)
        return self.boxes[keep], self.labels[keep]


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``[n, 4]`` xyxy pixel boxes to the image; returns ``(clipped, keep)`` where ``keep`` marks
    the boxes with a positive area after clipping (zero-area and fully-outside boxes are False)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, width)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep


def clip_annotation(raw: Annotation, width: int, height: int) -> tuple[Annotation, list[str]]:
    """``raw`` (boxes as annotated, possibly reaching outside the image) for a ``width`` x ``height``
    image: boxes clipped to it, boxes without area inside it dropped; returns ``(annotation, [reason of
    each dropped box])``."""
    clipped, keep = clip_boxes(raw.boxes, width, height)
    dropped = [f"box {i} {tuple(round(float(v), 2) for v in raw.boxes[i])} has no area inside the "
               f"{width}x{height} image" for i in np.flatnonzero(~keep)]
    annotation = dataclasses.replace(raw, width=width, height=height, boxes=clipped[keep], labels=raw.labels[keep],
                                     difficult=raw.difficult[keep], crowd=raw.crowd[keep])
    return annotation, dropped
