"""Pre-processing shared by every backend: RGB uint8 images -> normalized ``[B, 3, S, S]`` batches.

Runs on the device given (the runner's device, a GPU when there is one): the images are copied as
uint8 (4x less traffic than float), then resized and normalized there. Resizing is a plain bilinear
resize to the square input (SSD's "warp" resize, as in training), without antialiasing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F


def preprocess(
    images: Sequence[np.ndarray],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Batch of ``len(images)`` normalized images ``[B, 3, S, S]`` on ``device``.

    Args:
        images: RGB uint8 arrays ``[H, W, 3]`` (sizes may differ).
        input_size: S, the network's square input side in pixels.
        mean, std: per-channel normalization for pixel values scaled to [0, 1] (RGB order).
    """
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    batch = []
    for image in images:
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, H, W] in 0..255
        if pixels.shape[-2:] != (input_size, input_size):
            pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", align_corners=False)
        batch.append(pixels)
    stacked = torch.cat(batch, dim=0) / 255.0
    return ((stacked - mean_t) / std_t).to(dtype)
