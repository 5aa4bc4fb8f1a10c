"""Shared by the training tests: a tiny model config, synthetic data at its size, and ``TrainOptions``
for runs of a few seconds on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from assd.data import SyntheticDataset
from assd.models.config import ExtraLayer, ModelConfig
from assd.train import TrainOptions

SIZE = 64


def tiny_config() -> ModelConfig:
    """ResNet18 at 64 px: maps 8, 4, 2, 1 with attention and fusion, ~11M params but few FLOPs."""
    return ModelConfig(name="tiny-test", backbone="resnet18", input_size=SIZE, num_classes=2, class_names=("x",),
                       extras=(ExtraLayer(32, 64),), min_scales=(0.15, 0.35, 0.6, 0.8),
                       max_scales=(0.35, 0.6, 0.8, 1.0), aspect_ratios=((2,), (2,), (2,), (2,)), fusion_channels=32)


def synthetic(count: int = 8, train_mode: bool = True, start: int = 0) -> SyntheticDataset:
    return SyntheticDataset(count, start, train=train_mode, input_size=SIZE)


def options(out: Path, **overrides) -> TrainOptions:
    defaults = {"model": tiny_config(), "data": synthetic(), "out": out, "epochs": 2, "batch_size": 2, "lr": 1e-3,
                "workers": 0, "device": "cpu", "progress": False, "tensorboard": False}
    return TrainOptions(**{**defaults, **overrides})


def metrics_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class NaNImages(torch.utils.data.Dataset):
    """The synthetic samples with NaN pixels: the loss is NaN at the first step."""

    def __init__(self):
        self.inner = synthetic()
        self.class_names, self.name, self.source, self.input_size = self.inner.class_names, "synthetic", "nan", SIZE

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        image, target = self.inner[index]
        return torch.full_like(image, float("nan")), target


def recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Exact BatchNorm statistics of ``images`` ([N, 3, S, S]; a short run leaves the running averages behind
    the weights), then eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()
