"""BatchNorm while training: per-process batch 1 refused up front, SyncBatchNorm across processes
(``--sync-bn``), frozen running statistics (``--freeze-bn``)."""

from __future__ import annotations

from torch import nn

from assd.errors import UserError

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def prepare_batchnorm(model: nn.Module, batch_size: int, settings: dict, world_size: int) -> nn.Module:
    """``model`` ready to train with ``batch_size`` images per process under ``settings`` (``sync_bn``,
    ``freeze_bn``): converted to SyncBatchNorm with ``sync_bn``. A one-image batch is refused unless the
    statistics come from several processes or are frozen: BatchNorm over the 1x1 map of the last extra
    layer would see a single value (torch raises "Expected more than 1 value per channel" mid-forward)."""
    has_batchnorm = any(isinstance(module, BATCHNORM_TYPES) for module in model.modules())
    across_processes = settings["sync_bn"] and world_size > 1
    if batch_size == 1 and has_batchnorm and not (across_processes or settings["freeze_bn"]):
        name = getattr(getattr(model, "cfg", None), "name", "the model")
        raise UserError(f"--batch-size 1: {name} has BatchNorm layers, which need more than one image per step "
                        "to train: use --batch-size 2 or more, --sync-bn across several GPU processes (torchrun), "
                        "or --freeze-bn (BatchNorm keeps its running statistics)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if settings["sync_bn"] else model


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (after ``model.train()``): it normalizes with its running
    statistics and no longer updates them; its scale and shift still train."""
    for module in model.modules():
        if isinstance(module, BATCHNORM_TYPES):
            module.eval()
