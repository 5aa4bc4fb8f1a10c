"""Backbones that return the first three prediction maps ("conv3, conv4, conv5").

* ResNet (torchvision's): layer2, layer3, layer4 outputs (paper Fig. 2, Table 1).
* VGG16 reduced as in SSD: conv4_3, fc7 (fc6 as a 3x3 conv with dilation 6, fc7 as a 1x1 conv),
  and the ImageNet fc6/fc7 weights sub-sampled into them the way SSD did.

Weights are loaded from torchvision-format state_dict files (``load_backbone_weights``) or from
torchvision's weights API (``"imagenet"``), never downloaded implicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from assd.errors import UserError

RESNET_CHANNELS = {"resnet18": (128, 256, 512), "resnet50": (512, 1024, 2048), "resnet101": (512, 1024, 2048)}
VGG16_CHANNELS = (512, 1024)


def _conv_out(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    numerator = size + 2 * padding - kernel
    return (-(-numerator // stride) if ceil else numerator // stride) + 1


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc. ``forward(x [B,3,S,S])`` -> [conv3, conv4, conv5]."""

    def __init__(self, arch: str):
        super().__init__()
        resnet = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.out_channels = RESNET_CHANNELS[arch]

    @staticmethod
    def feature_sizes(input_size: int) -> list[int]:
        size = _conv_out(input_size, 7, 2, 3)  # conv1
        size = _conv_out(size, 3, 2, 1)  # maxpool
        sizes = []
        for _ in range(3):  # layer2..4: stride 2 in the 3x3 conv (torchvision's ResNet v1.5)
            size = _conv_out(size, 3, 2, 1)
            sizes.append(size)
        return sizes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        conv3 = self.layer2(self.layer1(x))
        conv4 = self.layer3(conv3)
        conv5 = self.layer4(conv4)
        return [conv3, conv4, conv5]

    def load_torchvision_state_dict(self, state_dict: dict) -> None:
        wanted = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        self.load_state_dict(wanted, strict=True)


# torchvision's vgg16().features layout; 'C' is the ceil-mode pool SSD uses so 300 -> 38 at conv4_3.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
_CONV4_3_INDEX = 22  # index of conv4_3's ReLU in the features list (torchvision numbering)


class VGG16Backbone(nn.Module):
    """SSD's reduced VGG16. ``forward(x)`` -> [conv4_3, fc7]; the extras supply the third map."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_LAYOUT:
            if item in ("M", "C"):
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=item == "C"))
            else:
                layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = item
        self.features = nn.Sequential(*layers)  # indices match torchvision's vgg16().features[:30]
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.arch = "vgg16"
        self.out_channels = VGG16_CHANNELS

    @staticmethod
    def feature_sizes(input_size: int) -> list[int]:
        size = input_size // 2 // 2  # pool1, pool2
        size = _conv_out(size, 2, 2, 0, ceil=True)  # pool3 (ceil)
        conv4_3 = size
        return [conv4_3, size // 2]  # pool4; pool5/fc6/fc7 keep the size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        conv4_3 = self.features[: _CONV4_3_INDEX + 1](x)
        x = self.pool5(self.features[_CONV4_3_INDEX + 1:](conv4_3))
        fc7 = self.relu(self.fc7(self.relu(self.fc6(x))))
        return [conv4_3, fc7]

    def load_torchvision_state_dict(self, state_dict: dict) -> None:
        """Load ``torchvision.models.vgg16`` weights; fc6/fc7 are sub-sampled as SSD did."""
        features = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        missing, unexpected = self.load_state_dict(features, strict=False)
        if unexpected or any(k.startswith("features.") for k in missing):
            raise KeyError(f"not a torchvision vgg16 state_dict (unexpected {unexpected[:3]})")
        fc6_weight = state_dict["classifier.0.weight"].view(4096, 512, 7, 7)
        with torch.no_grad():
            self.fc6.weight.copy_(fc6_weight[::4, :, ::3, ::3])  # [1024, 512, 3, 3], atrous
            self.fc6.bias.copy_(state_dict["classifier.0.bias"][::4])
            self.fc7.weight.copy_(state_dict["classifier.3.weight"].view(4096, 4096, 1, 1)[::4, ::4])
            self.fc7.bias.copy_(state_dict["classifier.3.bias"][::4])


def build_backbone(arch: str) -> nn.Module:
    if arch == "vgg16":
        return VGG16Backbone()
    if arch in RESNET_CHANNELS:
        return ResNetBackbone(arch)
    raise UserError(f"unknown backbone '{arch}': use one of {sorted([*RESNET_CHANNELS, 'vgg16'])}")


def _imagenet_state_dict(arch: str) -> dict:
    weights_enum: Callable = torchvision.models.get_model_weights(arch)
    weights = weights_enum.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - no network, proxy, SSL ...: all mean "cannot download here"
        raise UserError(
            f"could not download ImageNet weights for {arch} ({type(exc).__name__}): pass a local "
            f"torchvision state_dict file with --backbone-weights PATH (e.g. {weights.url.rsplit('/', 1)[-1]})"
        ) from None


def load_backbone_weights(backbone: nn.Module, source: str | None) -> None:
    """``source``: ``None``/``"none"`` (random init), ``"imagenet"``, or a path to a state_dict file."""
    if source in (None, "none"):
        return
    if source == "imagenet":
        state_dict = _imagenet_state_dict(backbone.arch)
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{path}: backbone weights file not found: pass an existing torchvision "
                            "state_dict file, 'imagenet' or 'none'")
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
            raise UserError(f"{path}: cannot read backbone weights ({exc.__class__.__name__}): "
                            "expected a torch.save'd torchvision state_dict") from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    try:
        backbone.load_torchvision_state_dict(state_dict)
    except (KeyError, RuntimeError, AttributeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{source}: not a torchvision {backbone.arch} state_dict ({first_line[:160]})") from None
