"""The ASSD model family: presets, the network, priors and box coding.

``build_model(cfg_or_name)`` gives an ``ASSD`` module; ``get_config(name)`` a ``ModelConfig``.
"""

from assd.models.assd import ASSD, feature_channels, feature_sizes, priors_for
from assd.models.backbones import load_backbone_weights
from assd.models.config import Conventions, ModelConfig
from assd.models.presets import PRESETS, get_config


def build_model(cfg: "ModelConfig | str", backbone_weights: str | None = None) -> ASSD:
    """An ``ASSD`` network for a config or preset name, with backbone weights from ``backbone_weights``
    (``None``/``"none"``, ``"imagenet"`` or a torchvision state_dict path)."""
    if isinstance(cfg, str):
        cfg = get_config(cfg)
    model = ASSD(cfg)
    load_backbone_weights(model.backbone, backbone_weights)
    return model


__all__ = [
    "ASSD",
    "PRESETS",
    "Conventions",
    "ModelConfig",
    "build_model",
    "feature_channels",
    "feature_sizes",
    "get_config",
    "priors_for",
]
