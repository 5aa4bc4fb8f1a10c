"""Validation during training: mAP of the model on a held-out set, through ``assd.evaluation`` (the same
pre-processing, post-processing and metric code as ``assd eval``)."""

from __future__ import annotations

import torch
from torch import nn


def default_metric(dataset) -> str | None:
    """``coco`` for COCO data, ``voc07`` otherwise; None without a validation set."""
    if dataset is None:
        return None
    from assd.evaluation import default_metric as evaluation_default

    return evaluation_default(dataset)


def validate(model: nn.Module, dataset, metric: str, batch_size: int, device: torch.device):
    """``EvalResult`` (``.mAP``, ``.per_class``) of ``model`` (an unwrapped ``ASSD``) on ``dataset``."""
    from assd.evaluation import evaluate_model

    return evaluate_model(model, dataset, metric=metric, batch_size=batch_size, device=device, progress=False)
