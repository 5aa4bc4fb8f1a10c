"""ModelConfig: the one description of an ASSD network, stored in checkpoints and ONNX metadata.

Everything that needs to know the network's geometry (priors, export, post-processing, benchmarks)
reads it from a ``ModelConfig``; priors are always generated from it by ``assd.models.priors``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExtraLayer:
    """One SSD extra block: 1x1 conv to ``mid`` channels, then 3x3 conv to ``out`` channels.

    Both convs are followed by BatchNorm + ReLU (paper, Fig. 2: "BN and ReLU in all layers").
    """

    mid: int
    out: int
    stride: int = 2
    padding: int = 1


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and switches of one ASSD/SSD network.

    Attributes:
        name: preset name, e.g. ``"assd513"``.
        backbone: ``"resnet101"``, ``"resnet18"`` or ``"vgg16"``.
        input_size: side of the square RGB input in pixels.
        num_classes: number of classes *including* background (index 0).
        class_names: the ``num_classes - 1`` foreground names, in label order 1..C-1.
        extras: the SSD extra layers appended after the backbone (conv6..conv9).
        min_scales / max_scales: per prediction map, anchor scales as fractions of the input side.
        aspect_ratios: per map, the ratios besides 1 (each r adds r and 1/r), e.g. ``(2,)`` or ``(2, 3)``.
        variances: box-coding variances (center, size).
        attention: put the attention unit (eq. 1-2) between every map and its head.
        fusion: replace map 0 with the semantic fusion of conv3/4/5 (eq. 3).
        fusion_channels: channels each fused map is reduced to before concatenation.
    """

    name: str
    backbone: str
    input_size: int
    num_classes: int
    class_names: tuple[str, ...]
    extras: tuple[ExtraLayer, ...]
    min_scales: tuple[float, ...]
    max_scales: tuple[float, ...]
    aspect_ratios: tuple[tuple[int, ...], ...]
    variances: tuple[float, float] = (0.1, 0.2)
    attention: bool = True
    fusion: bool = True
    fusion_channels: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        n_maps = len(self.min_scales)
        if not (len(self.max_scales) == len(self.aspect_ratios) == n_maps):
            raise ValueError(f"{self.name}: min_scales, max_scales and aspect_ratios differ in length")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {self.num_classes}")
        if len(self.class_names) != self.num_classes - 1:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for num_classes={self.num_classes} "
                "(expected num_classes - 1 foreground names)")

    @property
    def anchors_per_location(self) -> tuple[int, ...]:
        """Anchors at each position of each map: 2 for ratio 1 (s_min and s') + 2 per extra ratio."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_maps(self) -> int:
        return len(self.min_scales)

    def with_classes(self, class_names) -> ModelConfig:
        """The same network for another label set (changes only the conf heads)."""
        names = tuple(class_names)
        return dataclasses.replace(self, class_names=names, num_classes=len(names) + 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)} (written by a newer assd?)")
        values = dict(data)
        values["extras"] = tuple(ExtraLayer(**layer) for layer in values["extras"])
        for key in ("class_names", "min_scales", "max_scales", "variances", "mean", "std"):
            values[key] = tuple(values[key])
        values["aspect_ratios"] = tuple(tuple(r) for r in values["aspect_ratios"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """VOC names for 21 classes, otherwise ``class1..classN``."""
    if num_classes == len(VOC_CLASSES) + 1:
        return VOC_CLASSES
    return tuple(f"class{i}" for i in range(1, num_classes))
