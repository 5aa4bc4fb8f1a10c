"""The ASSD authors' checkpoints (github yijingru/ASSD-Pytorch) -> the ``assd513-authors`` network.

Their module tree (``assd_resnet101.py``, class ``ASSD_ResNet101``; saved by ``dec_module.py`` as
``model.state_dict()``, with DataParallel's ``module.`` prefix when trained on several GPUs):

    conv1, bn1, layer1..layer4   ResNet101 (torchvision's names, stride in the 3x3 conv)
    extra_layers.{6b + j}        extra block b: conv, BN, ReLU, conv, BN, ReLU (j = 0, 1, 3, 4)
    fusion_layers.{0,1,2}, fusion_bn, fusion_conv            the fusion module (eq. 3)
    att_layers.{k}.conv1 / conv2 / conv3                     attention f (query), g (key), h (value)
    locs_layers.{k}, conf_layers.{k}                          the heads

Their priors, ``loc`` outputs and boxes are in (y, x) order (``priorbox.py`` builds ``[cy, cx, h, w]``;
``decode`` and ``nms`` read boxes as ``y1, x1, y2, x2``), so each anchor's four loc channels
``(ty, tx, th, tw)`` are permuted to our ``(tx, ty, tw, th)``. Nothing else changes layout; the
conventions their code follows (steps, unclipped priors, ``align_corners=True``, BGR input) are the
``assd513-authors`` preset's.
"""

from __future__ import annotations

import re

import torch

EXPECTED = "a state_dict saved by the ASSD authors' code (github yijingru/ASSD-Pytorch, ASSD_ResNet101)"
DEFAULT_MODEL = "assd513-authors"
CLASS_HEAD = "conf_layers.0.weight"
MODULES_PER_EXTRA_BLOCK = 6  # conv, BN, ReLU, conv, BN, ReLU
ATTENTION_CONVS = {"query": "conv1", "key": "conv2", "value": "conv3"}
FUSION_PARTS = {"bn": "fusion_bn", "project": "fusion_conv"}
YX_TO_XY = [1, 0, 3, 2]  # our loc channel j holds their channel YX_TO_XY[j]


def source_key(key: str) -> str | None:
    """The authors' name of the assd state_dict key ``key`` (None: their network has none)."""
    if key.startswith("backbone."):
        return key[len("backbone."):]
    if match := re.fullmatch(r"extras\.(\d+)\.(\d+)\.(.+)", key):
        block, index, leaf = int(match.group(1)), int(match.group(2)), match.group(3)
        return f"extra_layers.{MODULES_PER_EXTRA_BLOCK * block + index}.{leaf}"
    if match := re.fullmatch(r"fusion\.reduce\.(.+)", key):
        return f"fusion_layers.{match.group(1)}"
    if match := re.fullmatch(r"fusion\.(bn|project)\.(.+)", key):
        return f"{FUSION_PARTS[match.group(1)]}.{match.group(2)}"
    if match := re.fullmatch(r"attention\.(\d+)\.(query|key|value)\.(.+)", key):
        return f"att_layers.{match.group(1)}.{ATTENTION_CONVS[match.group(2)]}.{match.group(3)}"
    if match := re.fullmatch(r"(loc|conf)_heads\.(.+)", key):
        return f"{'locs' if match.group(1) == 'loc' else 'conf'}_layers.{match.group(2)}"
    return None


def swap_loc_channels(tensor: torch.Tensor) -> torch.Tensor:
    """A loc head's weight ``[A*4, C, 3, 3]`` or bias ``[A*4]`` with each anchor's 4 channels permuted
    between (y, x, h, w) and (x, y, w, h) (the permutation is its own inverse)."""
    per_anchor = tensor.reshape(-1, 4, *tensor.shape[1:])
    return per_anchor[:, YX_TO_XY].reshape(tensor.shape).contiguous()


def adapt(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Their tensor for our ``key`` in our layout (loc heads permuted, everything else as is)."""
    return swap_loc_channels(tensor) if key.startswith("loc_heads.") else tensor

