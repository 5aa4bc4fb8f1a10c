"""Sample transforms: SSD's training augmentation and the plain evaluation resize.

Both take ``(image uint8 [3, H, W], boxes float32 [n, 4] xyxy pixels, labels int64 [n])`` and return
``(image float32 [3, S, S] normalized, boxes float32 [m, 4] xyxy normalized to 0..1, labels [m])``.

Training ("the same data augmentations as SSD", paper section 4): photometric distortion, zoom-out
(SSD's "expand": the image is placed on a canvas up to 4x its side, filled with the mean colour),
random IoU crop, horizontal flip, then the warp resize to ``S x S``. The geometric steps are
torchvision's ``transforms.v2``; its ``RandomIoUCrop`` samples a minimum IoU from
``{any (0), 0.1, 0.3, 0.5, 0.7, 0.9, none (keep the image)}`` and only accepts a crop window whose IoU
with at least one object (whose centre it contains) reaches that minimum - the constraint the original
SSD sampler states (tests/test_augment.py checks it holds). Objects whose centre falls outside the
crop are dropped, the others clipped to it.

The final resize + normalize mirrors ``assd.runtime.preprocess.preprocess`` operation for operation
(float bilinear interpolation without antialiasing, channels reversed for a ``"bgr"`` model, then /255
and mean/std), so training, evaluation and deployment see the same pixels; it is written out here
because data must not import runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

IOU_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # 0.0 = any crop, 1.0 = keep the whole image


def resize_normalize(image: torch.Tensor, input_size: int | None, mean: Sequence[float],
                     std: Sequence[float], channel_order: str = "rgb") -> torch.Tensor:
    """uint8 (or 0..255 float) RGB ``[3, H, W]`` -> float32 ``[3, S, S]``: bilinear resize (no antialias),
    channels reversed if ``channel_order`` is ``"bgr"``, /255, ``(x - mean) / std`` (per network channel).
    ``input_size=None`` keeps the size."""
    pixels = image.unsqueeze(0).float()
    if input_size is not None and pixels.shape[-2:] != (input_size, input_size):
        pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", align_corners=False)
    if channel_order == "bgr":
        pixels = pixels.flip(1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((pixels / 255.0 - mean_t) / std_t)[0]


def normalize_boxes(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[n, 4]`` xyxy pixels -> float32 xyxy as fractions of the image side, clamped to 0..1."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return (boxes.float().reshape(-1, 4) / scale).clamp_(0.0, 1.0)


class EvalTransform:
    """Plain warp resize to ``S x S`` + normalization; boxes only rescaled to 0..1."""

    def __init__(self, input_size: int | None, mean: Sequence[float], std: Sequence[float],
                 channel_order: str = "rgb"):
        self.input_size = input_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.channel_order = channel_order

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
        height, width = image.shape[-2:]
        return (resize_normalize(image, self.input_size, self.mean, self.std, self.channel_order),
                normalize_boxes(boxes, width, height), labels.long().reshape(-1))


class SSDAugmentation:
    """SSD's training augmentation (see the module docstring), ending in the eval resize + normalize.

    Args:
        input_size: S, the network's square input side.
        mean, std: normalization per network channel for pixels in [0, 1]; ``mean`` is also the zoom-out
            fill colour.
        channel_order: the network's channel order (``"rgb"`` or ``"bgr"``; images arrive as RGB).
        max_zoom_out: largest canvas side relative to the image (SSD: 4).
        iou_crop_options: the minimum IoUs the crop samples from (see ``IOU_CROP_OPTIONS``).
        p_photometric, p_zoom_out, p_flip: probabilities of the random steps.
    """

    def __init__(self, input_size: int, mean: Sequence[float], std: Sequence[float], *,
                 max_zoom_out: float = 4.0, iou_crop_options: Sequence[float] = IOU_CROP_OPTIONS,
                 p_photometric: float = 0.5, p_zoom_out: float = 0.5, p_flip: float = 0.5,
                 channel_order: str = "rgb"):
        self.input_size = input_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.channel_order = channel_order
        mean_colour = [round(255 * value) for value in (mean[::-1] if channel_order == "bgr" else mean)]  # RGB
        self.photometric = v2.RandomPhotometricDistort(p=p_photometric)
        self.zoom_out = v2.RandomZoomOut(fill=mean_colour, side_range=(1.0, max_zoom_out), p=p_zoom_out)
        self.iou_crop = v2.RandomIoUCrop(sampler_options=list(iou_crop_options))
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)
        self.flip = v2.RandomHorizontalFlip(p=p_flip)

    def geometric(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
        """Everything but the final resize: ``(image uint8 [3, H', W'], boxes pixels [m, 4], labels [m])``."""
        height, width = image.shape[-2:]
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes.float().reshape(-1, 4), format="XYXY",
                                              canvas_size=(height, width)),
            "labels": labels.long().reshape(-1),
        }
        sample = self.photometric(sample)
        sample = self.zoom_out(sample)
        if len(sample["boxes"]):  # with no object the crop could only ever pick "keep the image"
            sample = self.iou_crop(sample)
            sample = self.sanitize(sample)
        sample = self.flip(sample)
        return (sample["image"].as_subclass(torch.Tensor), sample["boxes"].as_subclass(torch.Tensor),
                sample["labels"])

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
        image, boxes, labels = self.geometric(image, boxes, labels)
        height, width = image.shape[-2:]
        return (resize_normalize(image, self.input_size, self.mean, self.std, self.channel_order),
                normalize_boxes(boxes, width, height), labels)


def build_transform(train: bool, input_size: int | None, mean: Sequence[float], std: Sequence[float],
                    channel_order: str = "rgb"):
    """``SSDAugmentation`` for training, ``EvalTransform`` otherwise."""
    if train:
        return SSDAugmentation(input_size, mean, std, channel_order=channel_order)
    return EvalTransform(input_size, mean, std, channel_order)
