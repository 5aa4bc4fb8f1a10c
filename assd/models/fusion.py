"""Semantic fusion of conv3, conv4 and conv5 into conv3, equation (3) of the paper.

    x3' = ReLU(W3 * BN(Concat{r3(x3), up(r4(x4)), up(r5(x5))}) + b3)

r_i are 1x1 convs to ``reduced`` (256) channels, ``up`` is bilinear upsampling to conv3's size
(align_corners=False by default: the standard resize; the authors' code used the deprecated
``upsample_bilinear``, i.e. align_corners=True, which ``Conventions.fusion_align_corners`` selects),
W3 a 1x1 conv back to conv3's channels.
The layer choices (biases on the 1x1 convs, BN after the concat) follow the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class SemanticFusion(nn.Module):
    """Fuses three maps into one with the first map's size and channels.

    Args:
        in_channels: channels of (conv3, conv4, conv5), e.g. ``(512, 1024, 2048)``.
        reduced: channels each input is reduced to before concatenation (paper: 256).
        align_corners: the upsampling's ``align_corners`` (the authors': True).

    Shapes: ``forward([x3, x4, x5])`` with ``x_i: [B, C_i, H_i, W_i]`` -> ``[B, C_3, H_3, W_3]``.
    """

    def __init__(self, in_channels: Sequence[int], reduced: int = 256, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.reduce = nn.ModuleList(nn.Conv2d(c, reduced, kernel_size=1) for c in in_channels)
        self.bn = nn.BatchNorm2d(reduced * len(in_channels))
        self.project = nn.Conv2d(reduced * len(in_channels), in_channels[0], kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        reduced = [self.reduce[0](features[0])]
        for conv, feature in zip(self.reduce[1:], features[1:]):
            reduced.append(F.interpolate(conv(feature), size=size, mode="bilinear",
                                         align_corners=self.align_corners))
        return F.relu(self.project(self.bn(torch.cat(reduced, dim=1))))
