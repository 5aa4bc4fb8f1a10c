"""Model statistics for ``assd info`` and ``assd bench``: parameters, anchors, GMACs, per-map layout."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from assd.models.assd import ASSD, feature_channels, feature_sizes
from assd.models.config import Conventions, ModelConfig


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(cfg: ModelConfig) -> float:
    """Multiply-accumulates (1e9) of one forward pass on one image, counted on the meta device
    (no memory, no compute) by torch's FlopCounterMode (which counts 2 FLOPs per MAC)."""
    with torch.device("meta"):
        model = ASSD(cfg).eval()
        images = torch.empty(1, 3, cfg.input_size, cfg.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return counter.get_total_flops() / 2 / 1e9


def describe(cfg: ModelConfig, num_params: int | None = None, with_gmacs: bool = True) -> dict:
    """The facts ``assd info`` prints, as one JSON-ready dict."""
    sizes = feature_sizes(cfg)
    channels = feature_channels(cfg)
    anchors = cfg.anchors_per_location
    if num_params is None:
        with torch.device("meta"):
            num_params = count_parameters(ASSD(cfg))
    return {
        "model": cfg.name,
        "backbone": cfg.backbone,
        "input_size": cfg.input_size,
        "num_classes": cfg.num_classes,
        "attention": cfg.attention,
        "fusion": cfg.fusion,
        "feature_maps": [list(size) for size in sizes],
        "feature_channels": channels,
        "anchors_per_location": list(anchors),
        "num_anchors": sum(h * w * n for (h, w), n in zip(sizes, anchors)),
        "num_params": num_params,
        "gmacs": round(count_gmacs(cfg), 3) if with_gmacs else None,
        "conventions": changed_conventions(cfg),
    }


def changed_conventions(cfg: ModelConfig) -> dict:
    """The ``Conventions`` fields where ``cfg`` departs from assd's defaults (JSON-ready)."""
    defaults = Conventions()
    return {f.name: getattr(cfg.conventions, f.name) for f in dataclasses.fields(Conventions)
            if getattr(cfg.conventions, f.name) != getattr(defaults, f.name)}
