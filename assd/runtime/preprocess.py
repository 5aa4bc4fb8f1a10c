"""Pre-processing shared by every backend: RGB uint8 images -> normalized ``[B, 3, S, S]`` batches.

Runs on the device given (the runner's device, a GPU when there is one): the images are copied as
uint8 (4x less traffic than float), then resized and normalized there. Resizing is a plain bilinear
resize of the float image to the square input (SSD's "warp" resize, as in training), without
antialiasing: what torchvision's SSD (``GeneralizedRCNNTransform`` with ``fixed_size``) and the ASSD
authors (``cv2.resize`` of the float image) do too, up to float rounding (torchvision normalizes
before resizing; both steps are linear; docs/models.md has the measured differences). A ``"bgr"`` model
(``cfg.conventions.channel_order``) gets its channels reversed before normalization.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from assd.models.config import ModelConfig


def preprocess(
    images: Sequence[np.ndarray],
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Batch of ``len(images)`` normalized images ``[B, 3, S, S]`` on ``device``, as the network of
    ``cfg`` expects them (S = ``cfg.input_size``; ``cfg.mean``/``cfg.std`` apply to pixels in [0, 1], per
    channel in the network's channel order ``cfg.conventions.channel_order``).

    Args:
        images: RGB uint8 arrays ``[H, W, 3]`` (sizes may differ).
        cfg: the network's ``ModelConfig`` (the one source of its input conventions).
    """
    input_size, mean, std = cfg.input_size, cfg.mean, cfg.std
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    batch = []
    for image in images:
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, H, W] in 0..255
        if cfg.conventions.channel_order == "bgr":
            pixels = pixels.flip(1)
        if pixels.shape[-2:] != (input_size, input_size):
            pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", align_corners=False)
        batch.append(pixels)
    stacked = torch.cat(batch, dim=0) / 255.0
    return ((stacked - mean_t) / std_t).to(dtype)
