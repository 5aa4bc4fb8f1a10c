"""``assd predict``'s image outputs: detections.json and the images with boxes drawn.

The detections come from ``assd.Detector`` (``assd/commands/predict.py``); ``predict_images`` runs any
``infer`` callable over image files through the same ``assd.runtime.pipeline`` (parity tests use it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from assd.data import read_rgb_image
from assd.detector.sources import IMAGE_SUFFIXES, collect_images
from assd.evaluation.evaluate import predict_dataset
from assd.evaluation.visualize import draw_detections, write_image
from assd.paths import writing
from assd.runtime.postprocess import Detections, PostprocessConfig
from assd.utils import atomic_write_text

DETECTIONS_FILE = "detections.json"
__all__ = ["DETECTIONS_FILE", "IMAGE_SUFFIXES", "ImageFiles", "collect_images", "output_names", "predict_images",
           "write_predictions"]


class ImageFiles:
    """Image files served like a dataset (``len``, ``load_image``) for ``predict_dataset``."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int):
        return read_rgb_image(str(self.paths[index]))  # UserError naming the file when unreadable


def output_names(paths: Sequence[Path], out_dir: str | os.PathLike | None = None) -> list[str]:
    """Output image name per input: ``<stem>.jpg``, with ``_<n>`` added when two inputs share a stem or
    when ``out_dir/<name>`` is one of the input images (a drawn image never replaces a source file)."""
    inputs = {path.resolve() for path in paths}
    names, used = [], set()
    for path in paths:
        name, count = f"{path.stem}.jpg", 1
        while (name in used or name == DETECTIONS_FILE
               or (out_dir is not None and (Path(out_dir) / name).resolve() in inputs)):
            count += 1
            name = f"{path.stem}_{count}.jpg"
        used.add(name)
        names.append(name)
    return names


def predict_images(infer: Callable, paths: Sequence[Path], cfg, postprocess_cfg: PostprocessConfig,
                   device: torch.device | str = "cpu", batch_size: int = 8) -> list[Detections]:
    """Detections in pixels per image file; ``cfg`` is the network's ``ModelConfig``."""
    return predict_dataset(infer, ImageFiles(paths), cfg, postprocess_cfg, batch_size, device)


def write_predictions(out_dir: str | os.PathLike, paths: Sequence[Path], detections: Sequence[Detections],
                      class_names: Sequence[str], postprocess_cfg: PostprocessConfig | None = None) -> Path:
    """Write ``out_dir/<stem>.jpg`` (boxes drawn) per image and ``out_dir/detections.json``.

    The JSON is ``{"postprocess": {...}, "detections": [{"file_name", "image_id" (file stem),
    "category_id" (class name), "label", "bbox" [x, y, w, h] pixels, "score"}, ...]}``; its
    ``detections`` list is COCO-results-like (VOC convention) and can be given to ``assd eval
    --detections`` when the images belong to a VOC dataset. Returns the JSON path.
    """
    out_dir = Path(out_dir)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path, name, dets in zip(paths, output_names(paths, out_dir), detections, strict=True):
        image = read_rgb_image(str(path))
        write_image(out_dir / name, draw_detections(image, dets.boxes, dets.scores, dets.labels, class_names))
        for box, score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
            records.append({"file_name": str(path), "image_id": path.stem, "category_id": class_names[label - 1],
                            "label": label, "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                                                     round(box[3] - box[1], 2)], "score": round(score, 5)})
    settings = json.dumps(postprocess_cfg.to_dict() if postprocess_cfg else None)
    lines = ",\n".join(f"  {json.dumps(record)}" for record in records)  # one detection per line
    json_path = out_dir / DETECTIONS_FILE
    atomic_write_text(json_path, f'{{"postprocess": {settings},\n "detections": [\n{lines}\n]}}\n')
    return json_path
