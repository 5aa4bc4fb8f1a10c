"""The ASSD network, readable top to bottom (cf. torchvision's ``models/detection/ssd.py``).

    image [B,3,S,S] -> backbone -> conv3, conv4, conv5 (ResNet) | conv4_3, fc7 (VGG16)
                    -> map 0 := L2Norm(map 0)                               (if conventions.l2norm)
                    -> extras (SSD's conv6..9: 1x1 reduce, 3x3 stride 2, BN + ReLU)
                    -> map 0 := SemanticFusion(map 0, map 1, map 2)         (eq. 3, if cfg.fusion)
                    -> map k := AttentionUnit_k(map k) for every map        (eq. 1-2, if cfg.attention)
                    -> 3x3 loc / conf heads -> loc [B, A, 4], conf [B, A, C]

``loc`` holds offsets encoded against the priors (``assd.models.box_coding``), ``conf`` the class
logits with class 0 = background. Post-processing lives outside the network (``assd.postprocess``)
so every backend shares it. ``cfg.conventions`` switches the details in which reference
implementations differ (L2Norm, BatchNorm in the extras, fusion's upsampling, prior placement).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from assd.models.attention import AttentionUnit
from assd.models.backbones import ResNetBackbone, VGG16Backbone, _conv_out, build_backbone
from assd.models.config import ExtraLayer, ModelConfig
from assd.models.fusion import SemanticFusion
from assd.models.priors import generate_priors


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0,
                  batchnorm: bool = True):
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)] if batchnorm else [conv, nn.ReLU(inplace=True)]


def build_extras(in_channels: int, layers: tuple[ExtraLayer, ...], batchnorm: bool = True) -> nn.ModuleList:
    """SSD's extra blocks (conv [BN] ReLU conv [BN] ReLU); each returns one prediction map."""
    blocks = []
    for layer in layers:
        blocks.append(nn.Sequential(*_conv_bn_relu(in_channels, layer.mid, 1, batchnorm=batchnorm),
                                    *_conv_bn_relu(layer.mid, layer.out, 3, layer.stride, layer.padding, batchnorm)))
        in_channels = layer.out
    return nn.ModuleList(blocks)


class L2Norm(nn.Module):
    """SSD's conv4_3 normalization: ``weight[c] * x / max(||x||_2 over channels, 1e-12)``.

    The same computation as torchvision's ``scale_weight.view(1, -1, 1, 1) * F.normalize(x)``.
    Shapes: ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int, initial_scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), initial_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, dim=1)


def feature_channels(cfg: ModelConfig) -> list[int]:
    """Channels of every prediction map."""
    base = VGG16Backbone().out_channels if cfg.backbone == "vgg16" else _resnet_channels(cfg.backbone)
    return list(base) + [layer.out for layer in cfg.extras]


def _resnet_channels(arch: str) -> tuple[int, ...]:
    from assd.models.backbones import RESNET_CHANNELS

    return RESNET_CHANNELS[arch]


def feature_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(H, W) of every prediction map for the config's input size, without running the network."""
    backbone_cls = VGG16Backbone if cfg.backbone == "vgg16" else ResNetBackbone
    sizes = backbone_cls.feature_sizes(cfg.input_size)
    for layer in cfg.extras:
        sizes.append(_conv_out(sizes[-1], 3, layer.stride, layer.padding))
    return [(size, size) for size in sizes]


def priors_for(cfg: ModelConfig) -> torch.Tensor:
    """``priors_cxcywh [A, 4]`` of the network described by ``cfg`` (the one priors function)."""
    conventions = cfg.conventions
    return generate_priors(feature_sizes(cfg), cfg.min_scales, cfg.max_scales, cfg.aspect_ratios,
                           clip=conventions.prior_clip, steps=conventions.prior_steps, input_size=cfg.input_size,
                           offset=conventions.prior_offset)


class ASSD(nn.Module):
    """ASSD / SSD detector. ``forward(images [B,3,S,S])`` -> ``(loc [B,A,4], conf [B,A,C])``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        channels = feature_channels(cfg)
        if len(channels) != cfg.num_maps:
            raise ValueError(f"{cfg.name}: {len(channels)} maps from backbone+extras but {cfg.num_maps} scales")
        conventions = cfg.conventions
        self.backbone = build_backbone(cfg.backbone)
        self.l2norm = L2Norm(channels[0]) if conventions.l2norm else None
        self.extras = build_extras(self.backbone.out_channels[-1], cfg.extras, conventions.extras_batchnorm)
        self.fusion = (SemanticFusion(channels[:3], cfg.fusion_channels, conventions.fusion_align_corners)
                       if cfg.fusion else None)
        self.attention = nn.ModuleList(AttentionUnit(c) for c in channels) if cfg.attention else None
        anchors = cfg.anchors_per_location
        self.loc_heads = nn.ModuleList(nn.Conv2d(c, n * 4, 3, padding=1) for c, n in zip(channels, anchors))
        self.conf_heads = nn.ModuleList(
            nn.Conv2d(c, n * cfg.num_classes, 3, padding=1) for c, n in zip(channels, anchors))
        self.register_buffer("priors_cxcywh", priors_for(cfg), persistent=False)
        self._init_new_layers()

    def _init_new_layers(self) -> None:
        """Xavier for the layers SSD adds (the backbone keeps torchvision's init or loaded weights)."""
        for module in [self.extras, self.loc_heads, self.conf_heads, self.fusion]:
            for layer in (module.modules() if module is not None else []):
                if isinstance(layer, nn.Conv2d):
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The prediction maps after fusion, before attention: list of ``[B, C_k, H_k, W_k]``."""
        maps = self.backbone(images)
        x = maps[-1]
        if self.l2norm is not None:
            maps[0] = self.l2norm(maps[0])
        for block in self.extras:
            x = block(x)
            maps.append(x)
        if self.fusion is not None:
            maps[0] = self.fusion(maps[:3])
        return maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.feature_maps(images)
        if self.attention is not None:
            maps = [unit(x) for unit, x in zip(self.attention, maps)]
        batch = images.shape[0]
        loc = [head(x).permute(0, 2, 3, 1).reshape(batch, -1, 4) for head, x in zip(self.loc_heads, maps)]
        conf = [head(x).permute(0, 2, 3, 1).reshape(batch, -1, self.cfg.num_classes)
                for head, x in zip(self.conf_heads, maps)]
        return torch.cat(loc, dim=1), torch.cat(conf, dim=1)
