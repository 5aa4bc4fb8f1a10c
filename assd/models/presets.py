"""Preset configurations: the paper's models (Table 2), the ablations (Table 3), a small one, and two
reference implementations' conventions (``ssd300-coco``: torchvision's ``ssd300_vgg16``;
``assd513-authors``: the ASSD authors' code), the targets of ``assd convert``.

Anchor scales: 7-map models use the authors' released config (s_min = .04, .10, .26 ... .90, s_max
the next map's s_min, 1.06 for the last); 6-map models use SSD300's (.10, .20, .37 ... .88; 1.05).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from assd.errors import UserError
from assd.models.config import Conventions, ExtraLayer, ModelConfig, default_class_names

SCALES_7 = (0.04, 0.10, 0.26, 0.42, 0.58, 0.74, 0.90, 1.06)
SCALES_6 = (0.10, 0.20, 0.37, 0.54, 0.71, 0.88, 1.05)
RATIOS_7 = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
RATIOS_6 = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))

# Authors' extras after ResNet's conv5 (2048 ch): conv6..conv9 -> 1024, 512, 256, 256 channels.
RESNET_EXTRAS_513 = (ExtraLayer(512, 1024), ExtraLayer(256, 512), ExtraLayer(128, 256),
                     ExtraLayer(128, 256, stride=1, padding=0))
RESNET_EXTRAS_321 = (ExtraLayer(512, 1024), ExtraLayer(256, 512), ExtraLayer(128, 256, stride=1, padding=0))
# SSD300 / SSD512's extras after fc7 (1024 ch).
VGG_EXTRAS_300 = (ExtraLayer(256, 512), ExtraLayer(128, 256), ExtraLayer(128, 256, stride=1, padding=0),
                  ExtraLayer(128, 256, stride=1, padding=0))
VGG_EXTRAS_512 = (ExtraLayer(256, 512), ExtraLayer(128, 256), ExtraLayer(128, 256), ExtraLayer(128, 256),
                  ExtraLayer(128, 256))
MINI_EXTRAS = (ExtraLayer(128, 256), ExtraLayer(128, 256), ExtraLayer(128, 256))


def _config(name, backbone, size, extras, scales, ratios, num_classes, **switches) -> ModelConfig:
    return ModelConfig(
        name=name, backbone=backbone, input_size=size, num_classes=num_classes,
        class_names=default_class_names(num_classes), extras=extras,
        min_scales=scales[:-1], max_scales=scales[1:], aspect_ratios=ratios, **switches)


def assd513(num_classes: int = 21) -> ModelConfig:
    return _config("assd513", "resnet101", 513, RESNET_EXTRAS_513, SCALES_7, RATIOS_7, num_classes)


def assd321(num_classes: int = 21) -> ModelConfig:
    return _config("assd321", "resnet101", 321, RESNET_EXTRAS_321, SCALES_6, RATIOS_6, num_classes)


def assd300(num_classes: int = 21) -> ModelConfig:
    return _config("assd300", "vgg16", 300, VGG_EXTRAS_300, SCALES_6, RATIOS_6, num_classes)


def assd512(num_classes: int = 21) -> ModelConfig:
    return _config("assd512", "vgg16", 512, VGG_EXTRAS_512, SCALES_7, RATIOS_7, num_classes)


def ssd513(num_classes: int = 21) -> ModelConfig:
    return dataclasses.replace(assd513(num_classes), name="ssd513", attention=False, fusion=False)


def ssd321(num_classes: int = 21) -> ModelConfig:
    return dataclasses.replace(assd321(num_classes), name="ssd321", attention=False, fusion=False)


def ssd513_fusion(num_classes: int = 21) -> ModelConfig:
    return dataclasses.replace(assd513(num_classes), name="ssd513-fusion", attention=False)


def ssd513_att(num_classes: int = 21) -> ModelConfig:
    return dataclasses.replace(assd513(num_classes), name="ssd513-att", fusion=False)


def assd_mini(num_classes: int = 21) -> ModelConfig:
    """ResNet18 at 256 px: the same attention / fusion / prior design, small enough for CPU demos."""
    return _config("assd-mini", "resnet18", 256, MINI_EXTRAS, SCALES_6, RATIOS_6, num_classes,
                   fusion_channels=128)


# torchvision's ssd300_vgg16 (models/detection/ssd.py): DefaultBoxGenerator(scales, steps), caffe-style
# input (mean of 0..1 pixels, std 1/255), BoxCoder's bbox_xform_clip = log(1000/16), post-processing
# with clip_boxes_to_image before NMS, topk_candidates=400 per class, detections_per_img=200.
TORCHVISION_SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
TORCHVISION_SSD300_CONVENTIONS = Conventions(
    l2norm=True, extras_batchnorm=False, prior_steps=(8, 16, 32, 64, 100, 300), prior_clip="wh",
    decode_clamp=math.log(1000.0 / 16), clip_before_nms=True, top_k=400, max_detections=200)
CAFFE_MEAN = (0.48235, 0.45882, 0.40784)
CAFFE_STD = (1.0 / 255.0,) * 3
# The authors' ASSD513 (github yijingru/ASSD-Pytorch, config.py / priorbox.py / assd_resnet101.py):
# steps 8,16,31,57,103,171,513, priors never clipped (their clamp result is discarded), fusion through
# F.upsample_bilinear (align_corners=True), cv2's BGR images with RGB ImageNet mean/std, and Detect
# keeping up to top_k=200 per class with no per-image cap.
AUTHORS_ASSD513_CONVENTIONS = Conventions(
    channel_order="bgr", fusion_align_corners=True, prior_steps=(8, 16, 31, 57, 103, 171, 513),
    prior_clip="none", top_k=200, max_detections=None)


def coco_91_class_names() -> tuple[str, ...]:
    """torchvision's COCO label set: 90 names on COCO's category ids 1..90, ``"N/A"`` on unused ids."""
    from torchvision.models.detection import SSD300_VGG16_Weights

    return tuple(SSD300_VGG16_Weights.COCO_V1.meta["categories"][1:])


def ssd300_coco(num_classes: int = 91) -> ModelConfig:
    """torchvision's ``ssd300_vgg16`` exactly (weights: ``assd convert --from torchvision-ssd300``)."""
    cfg = _config("ssd300-coco", "vgg16", 300, VGG_EXTRAS_300, TORCHVISION_SSD300_SCALES, RATIOS_6, num_classes,
                  attention=False, fusion=False, mean=CAFFE_MEAN, std=CAFFE_STD,
                  conventions=TORCHVISION_SSD300_CONVENTIONS)
    if num_classes != 91:
        return cfg
    names = coco_91_class_names()
    return dataclasses.replace(cfg, class_names=names, conventions=dataclasses.replace(
        cfg.conventions, label_ids=tuple(range(1, len(names) + 1))))


def assd513_authors(num_classes: int = 21) -> ModelConfig:
    """``assd513`` with the authors' conventions (weights: ``assd convert --from assd-pytorch``)."""
    return dataclasses.replace(assd513(num_classes), name="assd513-authors", conventions=AUTHORS_ASSD513_CONVENTIONS)


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "assd321": assd321, "assd513": assd513, "assd300": assd300, "assd512": assd512,
    "ssd321": ssd321, "ssd513": ssd513, "ssd513-fusion": ssd513_fusion, "ssd513-att": ssd513_att,
    "assd-mini": assd_mini, "ssd300-coco": ssd300_coco, "assd513-authors": assd513_authors,
}


def get_config(name: str, num_classes: int | None = None, class_names=None) -> ModelConfig:
    """The preset ``name``; ``class_names`` (foreground) or ``num_classes`` (with background) override
    the preset's own label set (21 VOC classes; 91 COCO slots for ``ssd300-coco``)."""
    if name not in PRESETS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(PRESETS)}")
    if num_classes is not None and num_classes < 2:
        raise UserError(f"--num-classes {num_classes}: must be at least 2 (background + one class)")
    cfg = PRESETS[name](num_classes) if num_classes is not None else PRESETS[name]()
    if class_names is not None:
        cfg = cfg.with_classes(class_names)
    return cfg
