"""Drawings with OpenCV on RGB uint8 images: attention heat maps, image grids (detection boxes:
``assd.runtime.drawing``, re-exported here).

Every function returns a new image (the input is never modified); ``write_image`` saves one atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from assd.errors import UserError
from assd.runtime.drawing import FONT, class_color, draw_detections, put_label
from assd.utils import atomic_write_bytes

__all__ = ["FONT", "class_color", "draw_detections", "heat_overlay", "image_grid", "mark_point", "put_label",
           "write_image"]


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` blended with ``heat`` (``[h, w]`` in 0..1, any size; bilinearly resized to the image)
    through the JET color map (``cv2.applyColorMap``)."""
    height, width = image.shape[:2]
    heat = cv2.resize(np.asarray(heat, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat_u8 = np.clip(heat * 255.0, 0, 255).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(image), 1.0 - alpha, colored, alpha, 0.0)


def mark_point(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """A copy of ``image`` with a white-ringed black dot at pixel ``(x, y)``."""
    canvas = np.ascontiguousarray(image).copy()
    radius = max(4, max(image.shape[:2]) // 80)
    center = (round(float(x)), round(float(y)))
    cv2.circle(canvas, center, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(canvas, center, radius, (0, 0, 0), -1, cv2.LINE_AA)
    return canvas


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 4,
               tile_width: int = 320) -> np.ndarray:
    """RGB images side by side, ``columns`` per row, each resized to ``tile_width`` wide with its title above."""
    tiles = []
    for image, title in zip(images, titles, strict=True):
        height = max(1, round(image.shape[0] * tile_width / image.shape[1]))
        tile = cv2.resize(np.ascontiguousarray(image), (tile_width, height), interpolation=cv2.INTER_AREA)
        band = np.full((24, tile_width, 3), 255, np.uint8)
        cv2.putText(band, title, (4, 17), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([band, tile]))
    tile_height = max(tile.shape[0] for tile in tiles)
    tiles = [np.pad(tile, ((0, tile_height - tile.shape[0]), (0, 0), (0, 0)), constant_values=255) for tile in tiles]
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save an RGB uint8 image atomically; the format follows the extension (.png, .jpg)."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"{path}: OpenCV cannot encode an image with this extension: use .png or .jpg")
    atomic_write_bytes(path, encoded.tobytes())
