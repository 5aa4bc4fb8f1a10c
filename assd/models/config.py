"""ModelConfig: the one description of an ASSD network, stored in checkpoints and ONNX metadata.

Everything that needs to know the network's geometry (priors, export, post-processing, benchmarks)
reads it from a ``ModelConfig``; priors are always generated from it by ``assd.models.priors``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CHANNEL_ORDERS = ("rgb", "bgr")
PRIOR_CLIPS = ("corners", "wh", "none")


@dataclass(frozen=True)
class ExtraLayer:
    """One SSD extra block: 1x1 conv to ``mid`` channels, then 3x3 conv to ``out`` channels.

    Both convs are followed by BatchNorm + ReLU (paper, Fig. 2: "BN and ReLU in all layers").
    """

    mid: int
    out: int
    stride: int = 2
    padding: int = 1


def unknown_fields(dataclass_type, keys) -> list[str]:
    """The sorted ``keys`` that are not fields of ``dataclass_type`` (a dataclass or an instance): what a
    file written by a newer version, or a typo, adds."""
    return sorted(set(keys) - {field.name for field in dataclasses.fields(dataclass_type)})


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Conventions:
    """What SSD leaves open and reference implementations decide differently (docs/models.md).

    The defaults are assd's own choices; ``ssd300-coco`` sets torchvision's ``ssd300_vgg16`` and
    ``assd513-authors`` the ASSD authors' code (github yijingru/ASSD-Pytorch).

    Attributes:
        channel_order: ``"rgb"`` or ``"bgr"``: order of the network's input channels. ``mean``/``std``
            apply to the channels in this order (the authors fed cv2's BGR images, normalized with the
            RGB ImageNet statistics).
        l2norm: L2-normalize the first backbone map over channels and scale it by a learned
            per-channel weight (initialized to 20), as SSD's conv4_3.
        extras_batchnorm: BatchNorm after every conv of the extra layers (torchvision's SSD300 has none).
        fusion_align_corners: bilinear upsampling in the fusion module with ``align_corners=True``
            (the authors' ``F.upsample_bilinear``).
        prior_steps: per map, the stride in input pixels that places the prior centres at
            ``(i + prior_offset) * step / input_size``; ``None``: ``(i + prior_offset) / map_size``.
        prior_offset: offset of the first centre in cells (0.5 for every known SSD).
        prior_clip: ``"corners"`` (clamp each prior's corners to [0, 1]), ``"wh"`` (clamp only width
            and height to [0, 1], centres unchanged: torchvision) or ``"none"`` (the authors').
        decode_clamp: upper bound on the size exponent ``loc_wh * variance`` when decoding (torchvision:
            ``log(1000 / 16)``); ``None``: unbounded.
        clip_before_nms: clip the decoded boxes to the image before NMS (torchvision), not after.
        top_k: default number of candidates per class and image that enter NMS.
        max_detections: default number of detections kept per image after NMS; ``None``: no cap
            (the authors keep up to ``top_k`` per class).
        label_ids: the dataset category id (e.g. COCO's 91-slot ids) of each label ``1..C-1``, used to
            match the model's labels to a COCO dataset's categories and in exported detections;
            ``None``: the labels themselves.
    """

    channel_order: str = "rgb"
    l2norm: bool = False
    extras_batchnorm: bool = True
    fusion_align_corners: bool = False
    prior_steps: tuple[float, ...] | None = None
    prior_offset: float = 0.5
    prior_clip: str = "corners"
    decode_clamp: float | None = None
    clip_before_nms: bool = False
    top_k: int = 200
    max_detections: int | None = 200
    label_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order {self.channel_order!r}: use one of {CHANNEL_ORDERS}")
        if self.prior_clip not in PRIOR_CLIPS:
            raise ValueError(f"prior_clip {self.prior_clip!r}: use one of {PRIOR_CLIPS}")
        if self.top_k < 1 or (self.max_detections is not None and self.max_detections < 1):
            raise ValueError(f"top_k={self.top_k}, max_detections={self.max_detections}: must be >= 1")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """ValueError for prior / decode numbers no implementation uses (zero steps divide by zero)."""
        if self.prior_steps is not None and not all(_finite(s) and s > 0 for s in self.prior_steps):
            raise ValueError(f"prior_steps {self.prior_steps}: must be positive finite numbers")
        if not _finite(self.prior_offset):
            raise ValueError(f"prior_offset {self.prior_offset!r}: must be a finite number")
        if self.decode_clamp is not None and not _finite(self.decode_clamp):
            raise ValueError(f"decode_clamp {self.decode_clamp!r}: must be a finite number or null")
        ids = self.label_ids
        if ids is not None and (not all(_whole(i) and i >= 1 for i in ids) or len(set(ids)) != len(ids)):
            bad = [i for n, i in enumerate(ids) if not (_whole(i) and i >= 1) or i in ids[:n]][:3]
            raise ValueError(f"label_ids must be distinct whole numbers >= 1 (not {bad})")

    @classmethod
    def from_dict(cls, data: dict | None) -> Conventions:
        """From ``dataclasses.asdict`` output; missing keys (older files) take today's defaults."""
        values = dict(data or {})
        if unknown := unknown_fields(cls, values):
            raise ValueError(f"unknown convention fields {unknown} (written by a newer assd?)")
        for key in ("prior_steps", "label_ids"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


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
        mean / std: per input channel (in ``conventions.channel_order``), for pixels scaled to [0, 1]
            (std = 1/255 reproduces caffe-style 0..255 inputs).
        conventions: the reference-implementation details (``Conventions``; defaults: assd's own).
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
    conventions: Conventions = field(default_factory=Conventions)
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
        steps, label_ids = self.conventions.prior_steps, self.conventions.label_ids
        if steps is not None and len(steps) != n_maps:
            raise ValueError(f"{self.name}: {len(steps)} prior steps for {n_maps} maps")
        if label_ids is not None and len(label_ids) != self.num_classes - 1:
            raise ValueError(f"{self.name}: {len(label_ids)} label ids for {self.num_classes - 1} classes")

    @property
    def anchors_per_location(self) -> tuple[int, ...]:
        """Anchors at each position of each map: 2 for ratio 1 (s_min and s') + 2 per extra ratio."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_maps(self) -> int:
        return len(self.min_scales)

    def with_classes(self, class_names) -> ModelConfig:
        """The same network for another label set (changes only the conf heads; label ids are dropped)."""
        names = tuple(class_names)
        if names == self.class_names:
            return self
        conventions = dataclasses.replace(self.conventions, label_ids=None)
        return dataclasses.replace(self, class_names=names, num_classes=len(names) + 1, conventions=conventions)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if unknown := unknown_fields(cls, data):
            raise ValueError(f"unknown ModelConfig fields {unknown} (written by a newer assd?)")
        values = dict(data)
        values["extras"] = tuple(ExtraLayer(**layer) for layer in values["extras"])
        for key in ("class_names", "min_scales", "max_scales", "variances", "mean", "std"):
            values[key] = tuple(values[key])
        values["aspect_ratios"] = tuple(tuple(r) for r in values["aspect_ratios"])
        values["conventions"] = Conventions.from_dict(values.get("conventions"))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """VOC names for 21 classes, otherwise ``class1..classN``."""
    if num_classes == len(VOC_CLASSES) + 1:
        return VOC_CLASSES
    return tuple(f"class{i}" for i in range(1, num_classes))
