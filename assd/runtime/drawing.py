"""Detection boxes drawn with OpenCV on RGB uint8 images: what ``assd predict`` writes and ``Result.plot``
returns (one drawing for files, videos, streams and the served path).

Every function returns a new image or draws on a copy (the input is never modified).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated RGB color per label, spread around the hue circle (golden-ratio steps)."""
    hue = (label * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def text_scale(image: np.ndarray) -> tuple[float, int]:
    """Font scale and line thickness that read well on ``image`` (grow with its longer side)."""
    side = max(image.shape[:2])
    return max(0.4, side / 1000), max(1, round(side / 500))


def put_label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Write ``text`` in black on a ``color`` band whose bottom-left corner is ``(x, y)`` (in place)."""
    scale, thickness = text_scale(image)
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    y = max(y, height + baseline)
    cv2.rectangle(image, (x, y - height - baseline), (x + width, y), color, -1)
    cv2.putText(image, text, (x, y - baseline), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` (RGB uint8 ``[H, W, 3]``) with pixel xyxy ``boxes`` and "name score" labels."""
    canvas = np.ascontiguousarray(image).copy()
    _, thickness = text_scale(canvas)
    # Lowest score first, so the best boxes and labels end up on top.
    for index in np.argsort(scores, kind="stable"):
        label = int(labels[index])
        color = class_color(label)
        x1, y1, x2, y2 = (round(float(v)) for v in boxes[index])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness + 1)
        name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
        put_label(canvas, f"{name} {float(scores[index]):.2f}", x1, y1, color)
    return canvas
