"""Folding BatchNorm layers that the exporter cannot fold itself.

The ONNX exporter folds every Conv -> BN pair. The fusion module's BN sits *after* a concatenation and
*before* a 1x1 conv (eq. 3: W3 * BN(concat) + b3), which no exporter pass folds, so it is folded here
into that following conv:  W' = W * diag(g / s),  b' = b + W (beta - g * mu / s),  s = sqrt(var + eps).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from assd.models.assd import ASSD


def fold_bn_into_following_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """A 1x1 conv equal to ``conv(bn(x))`` in eval mode (``conv`` must be 1x1 without padding)."""
    if conv.kernel_size != (1, 1) or conv.padding not in ((0, 0), 0) or conv.groups != 1:
        raise ValueError("only a 1x1, unpadded, ungrouped conv can absorb a preceding BatchNorm")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_in]
    shift = bn.bias - bn.running_mean * scale  # [C_in]
    weight = conv.weight  # [C_out, C_in, 1, 1]
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=1, bias=True)
    with torch.no_grad():
        folded.weight.copy_(weight * scale.view(1, -1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        folded.bias.copy_(bias + (weight[:, :, 0, 0] @ shift))
    return folded


def fold_for_export(model: ASSD) -> ASSD:
    """An eval-mode copy of ``model`` whose fusion BN is folded into its projection conv."""
    folded = copy.deepcopy(model).eval()
    if folded.fusion is not None:
        folded.fusion.project = fold_bn_into_following_conv(folded.fusion.bn, folded.fusion.project)
        folded.fusion.bn = nn.Identity()
    return folded
