"""Calibration images: a data spec or a folder of photos, and the ONNX Runtime data reader over them.

The images are chosen evenly spaced over the source (not the first N, which in VOC/COCO order are
often near-duplicates), read lazily and pre-processed exactly as at inference time
(``assd.runtime.preprocess``), so the ranges measured are those the deployed model sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from assd.errors import UserError
from assd.models.config import ModelConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


@dataclass
class CalibrationImages:
    """``count`` images of ``source``; ``load(i)`` gives image i as RGB uint8 ``[H, W, 3]``."""

    source: str  # the data spec, or the folder's absolute path
    available: int  # images in the source
    _loader: object = field(repr=False)
    _indices: list[int] = field(repr=False)

    def __len__(self) -> int:
        return len(self._indices)

    def load(self, i: int) -> np.ndarray:
        return self._loader(self._indices[i])


def _evenly_spaced(available: int, count: int) -> list[int]:
    if count >= available:
        return list(range(available))
    return sorted({round(x) for x in np.linspace(0, available - 1, count)})


def calibration_images(source: str, count: int) -> CalibrationImages:
    """Up to ``count`` images from ``source``: a folder of .jpg/.png files, or a data spec
    (``voc:ROOT[:SETS]``, ``coco:IMAGES:JSON``, ``synthetic[:N]``; see ``assd.data.parse_data_spec``)."""
    if count < 1:
        raise UserError(f"--calib-images {count}: must be at least 1")
    folder = Path(source)
    if folder.is_dir():
        from assd.data import read_rgb_image

        files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--calib-data {source}: folder has no .jpg/.png/.bmp images: point at an image "
                            "folder or pass a data spec such as voc:ROOT")
        return CalibrationImages(str(folder.resolve()), len(files), lambda i: read_rgb_image(files[i]),
                                 _evenly_spaced(len(files), count))
    if ":" not in source and source != "synthetic":
        raise UserError(f"--calib-data {source}: no such folder, and not a data spec: pass an image folder or "
                        "a spec such as voc:ROOT, coco:IMAGES_DIR:ANNOTATIONS_JSON or synthetic:N")
    from assd.data import parse_data_spec

    dataset = parse_data_spec(source)
    if len(dataset) == 0:
        raise UserError(f"--calib-data {source}: the data set has no images")
    return CalibrationImages(source, len(dataset), dataset.load_image, _evenly_spaced(len(dataset), count))


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ``{"images": [B, 3, S, S] float32}`` batches of the calibration images to ONNX Runtime.

    ``set_range(start, end)`` restricts the next pass to images ``start..end-1`` (calibration runs in
    chunks so that the per-tensor outputs of only one chunk are held in memory at a time).
    ``batch_size`` must divide every chunk (ORT stacks the outputs of one pass into one array).
    """

    def __init__(self, images: CalibrationImages, cfg: ModelConfig, batch_size: int = 1, input_name: str = "images"):
        self.images, self.cfg, self.batch_size, self.input_name = images, cfg, batch_size, input_name
        self.start, self.end = 0, len(images)
        self.position = self.start

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.images))
        self.position = self.start

    def get_next(self) -> dict | None:
        from assd.runtime.preprocess import preprocess

        if self.position + self.batch_size > self.end:
            return None
        batch = [self.images.load(i) for i in range(self.position, self.position + self.batch_size)]
        self.position += self.batch_size
        tensor = preprocess(batch, self.cfg)
        return {self.input_name: np.ascontiguousarray(tensor.numpy())}
