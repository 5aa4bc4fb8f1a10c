"""torchvision's ``ssd300_vgg16`` state_dict -> the ``ssd300-coco`` network.

torchvision's module tree (``torchvision/models/detection/ssd.py``, ``SSDFeatureExtractorVGG``):

    backbone.features.{0..21}     VGG16 conv1_1..conv4_3 (same indices as ours)
    backbone.scale_weight         the L2Norm weight on conv4_3
    backbone.extra.0.{1,3,5}      conv5_1..conv5_3 (our features.24/26/28, after pool4 at index 23)
    backbone.extra.0.7.{1,3}      fc6, fc7 (after the 3x3/1 pool5)
    backbone.extra.{1..4}.{0,2}   the extra layers (1x1 then 3x3 conv, ReLU, no BatchNorm)
    head.regression_head.module_list.{k} / head.classification_head.module_list.{k}: loc / conf heads

Both heads flatten ``[N, A*K, H, W]`` as ``[N, H, W, A, K]``, as ours do, and the box coding
(BoxCoder weights 10, 10, 5, 5) is ours with variances 0.1, 0.2: no tensor changes layout.
"""

from __future__ import annotations

import re

POOL4_INDEX = 23  # torchvision's vgg16().features index of pool4: conv5_x follow it in backbone.extra.0
EXPECTED = "a state_dict of torchvision's ssd300_vgg16 (e.g. ssd300_vgg16_coco-b556d3b4.pth)"
DEFAULT_MODEL = "ssd300-coco"
CLASS_HEAD = "head.classification_head.module_list.0.weight"


def source_key(key: str) -> str | None:
    """torchvision's name of the assd ``ssd300-coco`` state_dict key ``key`` (None: it has none)."""
    if key == "l2norm.weight":
        return "backbone.scale_weight"
    if match := re.fullmatch(r"backbone\.features\.(\d+)\.(\w+)", key):
        index, leaf = int(match.group(1)), match.group(2)
        if index < POOL4_INDEX:
            return key
        return f"backbone.extra.0.{index - POOL4_INDEX}.{leaf}"
    if match := re.fullmatch(r"backbone\.fc([67])\.(\w+)", key):
        return f"backbone.extra.0.7.{1 if match.group(1) == '6' else 3}.{match.group(2)}"
    if match := re.fullmatch(r"extras\.(\d+)\.(.+)", key):
        return f"backbone.extra.{int(match.group(1)) + 1}.{match.group(2)}"
    if match := re.fullmatch(r"(loc|conf)_heads\.(.+)", key):
        head = "regression_head" if match.group(1) == "loc" else "classification_head"
        return f"head.{head}.module_list.{match.group(2)}"
    return None

