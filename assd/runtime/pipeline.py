"""One image batch through a runner: pre-processing -> the network -> decode + NMS -> pixel boxes.

The single implementation of the detection path: ``assd.Detector`` (images, videos, streams),
``assd predict``, ``assd eval``, ``eval-engine``, the demo and the bench's end-to-end timing all call
``detect_images`` (or its two halves, ``preprocess`` and ``detections_in_pixels``, when the
pre-processing of the next batch runs on another thread while the network runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from assd.models.config import ModelConfig
from assd.runtime.padded import PaddedDetections
from assd.runtime.postprocess import Detections, PostprocessConfig, detect
from assd.runtime.preprocess import preprocess


def _to_torch(output, device) -> torch.Tensor:
    tensor = output if isinstance(output, torch.Tensor) else torch.from_numpy(np.asarray(output))
    return tensor.to(device)


def detections_in_pixels(outputs, image_sizes: Sequence[tuple[int, int]], cfg: ModelConfig,
                         postprocess_cfg: PostprocessConfig | None, priors: torch.Tensor,
                         device: torch.device | str) -> list[Detections]:
    """Per image its ``Detections`` in pixels of its original ``(width, height)``.

    ``outputs``: what the network computed for the batch: ``(loc [B, A, 4], conf [B, A, C])`` (torch or
    numpy) or ``PaddedDetections`` (an artifact exported ``--with-postprocess``).
    """
    if isinstance(outputs, PaddedDetections):
        per_image = outputs.unpad(postprocess_cfg)
    else:
        loc, conf = outputs
        per_image = detect(_to_torch(loc, device), _to_torch(conf, device), cfg, postprocess_cfg, priors)
    return [dets.to_pixels(width, height) for dets, (width, height) in zip(per_image, image_sizes, strict=True)]


def detect_images(infer: Callable, images: Sequence[np.ndarray], cfg: ModelConfig,
                  postprocess_cfg: PostprocessConfig | None, priors: torch.Tensor,
                  device: torch.device | str) -> list[Detections]:
    """Detections in pixels of RGB uint8 ``images`` (``[H, W, 3]``, sizes may differ), one batch.

    ``infer``: ``[B, 3, S, S] -> (loc, conf)`` or ``-> PaddedDetections`` (``Runner.infer_outputs``);
    ``priors``: ``priors_for(cfg)`` on ``device`` (where pre- and post-processing run).
    """
    batch = preprocess(images, cfg, device=device)
    with torch.inference_mode():
        outputs = infer(batch)
        return detections_in_pixels(outputs, [(image.shape[1], image.shape[0]) for image in images], cfg,
                                    postprocess_cfg, priors, device)
