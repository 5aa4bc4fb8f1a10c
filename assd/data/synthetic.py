"""A synthetic detection set rendered on the fly: flat-coloured shapes on textured backgrounds.

Sample ``k`` of the endless sequence is a pure function of ``(seed, k)``: its size (200-400 px a side),
background texture and 1-4 non-overlapping objects. Each class has its own shape and colour
(jittered), objects cover 20-50% of the shorter side, so ``assd-mini`` learns the set in minutes on a
CPU. Boxes are exact: each object is drawn without antialiasing into its own mask and its box is the
tight bound of the mask pixels, ``(min_col, min_row, max_col + 1, max_row + 1)`` (continuous 0-based
pixels, as everywhere in ``assd.data``).

The spec ``synthetic:N:START`` serves samples ``START .. START+N-1``, so ``synthetic:200`` (train) and
``synthetic:50:200`` (validation) never share an image.
"""

from __future__ import annotations

import cv2
import numpy as np

from assd.data.annotation import Annotation
from assd.data.dataset import DetectionDataset

SYNTHETIC_CLASSES = ("circle", "square", "triangle", "cross")
CLASS_COLOURS = ((220, 40, 40), (40, 190, 70), (40, 80, 230), (235, 200, 30))  # RGB, one per class
SYNTHETIC_SEED = 20240517
MAX_OBJECTS = 4


def _layout(seed: int, index: int):
    """``(width, height, [(class_index, x0, y0, w, h, colour)])`` of sample ``index``."""
    rng = np.random.default_rng((seed, index, 0))
    width, height = (int(v) for v in rng.integers(200, 401, size=2))
    short = min(width, height)
    objects, occupied = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(30):
            side = rng.uniform(0.2, 0.5) * short
            aspect = rng.uniform(0.75, 1.33)
            w, h = int(side * np.sqrt(aspect)), int(side / np.sqrt(aspect))
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            margin = 4
            if all(x0 + w + margin <= ox or ox + ow + margin <= x0 or y0 + h + margin <= oy or oy + oh + margin <= y0
                   for ox, oy, ow, oh in occupied):
                break
        else:
            continue  # no free space for this object: fewer objects in this image
        class_index = int(rng.integers(len(SYNTHETIC_CLASSES)))
        colour = tuple(int(c) for c in np.clip(np.array(CLASS_COLOURS[class_index]) + rng.integers(-25, 26, 3), 0, 255))
        occupied.append((x0, y0, w, h))
        objects.append((class_index, x0, y0, w, h, colour))
    return width, height, objects


def _shape_mask(class_index: int, x0: int, y0: int, w: int, h: int, width: int, height: int) -> np.ndarray:
    """uint8 ``[H, W]`` mask (255 inside) of one shape drawn without antialiasing in box ``x0, y0, w, h``."""
    mask = np.zeros((height, width), dtype=np.uint8)
    x1, y1 = x0 + w - 1, y0 + h - 1
    name = SYNTHETIC_CLASSES[class_index]
    if name == "circle":
        cv2.ellipse(mask, (((x0 + x1) / 2, (y0 + y1) / 2), (w - 1, h - 1), 0), 255, -1, cv2.LINE_8)
    elif name == "square":
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, -1, lineType=cv2.LINE_8)
    elif name == "triangle":
        points = np.array([[(x0 + x1) // 2, y0], [x0, y1], [x1, y1]], dtype=np.int32)
        cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8)
    else:  # cross: a horizontal and a vertical bar a third of the box thick
        tw, th = max(w // 3, 2), max(h // 3, 2)
        cv2.rectangle(mask, (x0, y0 + (h - th) // 2), (x1, y0 + (h - th) // 2 + th - 1), 255, -1)
        cv2.rectangle(mask, (x0 + (w - tw) // 2, y0), (x0 + (w - tw) // 2 + tw - 1, y1), 255, -1)
    return mask


def _background(seed: int, index: int, width: int, height: int) -> np.ndarray:
    """Low-saturation RGB uint8 texture: smooth blotches, a few faint lines and pixel noise."""
    rng = np.random.default_rng((seed, index, 1))
    grid = rng.integers(3, 9, size=2)
    grey = rng.uniform(70, 190, size=(grid[0], grid[1], 1))
    tint = rng.uniform(-15, 15, size=(grid[0], grid[1], 3))
    coarse = np.clip(grey + tint, 0, 255).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 7))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        shade = float(rng.uniform(60, 200))
        cv2.line(image, p1, p2, (shade, shade, shade), int(rng.integers(1, 4)))
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_synthetic(seed: int, index: int, with_image: bool = True):
    """``(image RGB uint8 [H, W, 3] or None, Annotation, masks [n] of bool [H, W])`` of sample ``index``."""
    width, height, objects = _layout(seed, index)
    image = _background(seed, index, width, height) if with_image else None
    boxes, labels, masks = [], [], []
    for class_index, x0, y0, w, h, colour in objects:
        mask = _shape_mask(class_index, x0, y0, w, h, width, height) > 0
        rows, cols = np.nonzero(mask)
        boxes.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        labels.append(class_index + 1)
        masks.append(mask)
        if image is not None:
            image[mask] = colour
    annotation = Annotation(image_id=index, width=width, height=height, boxes=np.array(boxes, dtype=np.float32),
                            labels=labels, difficult=np.zeros(len(labels), dtype=bool))
    return image, annotation, masks


class SyntheticDataset(DetectionDataset):
    """Samples ``start .. start + num_images - 1`` of the synthetic sequence (``image_ids`` are those indices).

    ``transform`` (train, input_size, mean, std) is as for ``DetectionDataset``.
    """

    def __init__(self, num_images: int = 200, start: int = 0, seed: int = SYNTHETIC_SEED,
                 source: str | None = None, **transform):
        if num_images < 1 or start < 0:
            raise ValueError(f"synthetic: need num_images >= 1 and start >= 0, got {num_images}, {start}")
        self.num_images = int(num_images)
        self.start = int(start)
        self.seed = int(seed)
        super().__init__("synthetic", source or f"synthetic:{num_images}:{start}", SYNTHETIC_CLASSES, [],
                         **transform)

    def __len__(self) -> int:
        return self.num_images

    @property
    def image_ids(self) -> list[int]:
        return list(range(self.start, self.start + self.num_images))

    def _global_index(self, index: int) -> int:
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic sample {index} out of range 0..{self.num_images - 1}")
        return self.start + index

    def image_path(self, index: int) -> str:
        return f"synthetic:{self._global_index(index)}"

    def load_image(self, index: int) -> np.ndarray:
        return render_synthetic(self.seed, self._global_index(index))[0]

    def annotation(self, index: int) -> Annotation:
        return render_synthetic(self.seed, self._global_index(index), with_image=False)[1]
