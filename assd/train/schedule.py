"""Optimizer and learning-rate schedule built from a ``Recipe``.

The lr of every step is a pure function of where the run stands (epoch, step within the epoch): a linear
warm-up from ``warmup_factor * lr`` over the first ``warmup_epochs`` (our addition), then the paper's
step decay by ``gamma`` at each milestone epoch. A resumed run therefore restores its schedule by
restoring its position, and a changed ``--lr`` or ``--epochs`` on resume takes effect cleanly.
"""

from __future__ import annotations

import bisect

import torch
from torch import nn

from assd.train.recipes import Recipe


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW (``momentum`` is beta1), weight decay on every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    # The multi-tensor kernels: on a CPU the default per-tensor AdamW loop is ~20x slower than fused.
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, betas=(recipe.momentum, 0.999),
                                 weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           foreach=True)


def check_optimizer_kind(state: dict, optimizer: torch.optim.Optimizer, where) -> None:
    """UserError (one line) when the checkpoint's optimizer state belongs to another optimizer: SGD
    "loads" AdamW's state without complaint, then fails on its first step (KeyError 'momentum')."""
    from assd.errors import UserError

    try:
        saved = set(state["optimizer"]["param_groups"][0]) - {"params"}
    except (KeyError, IndexError, TypeError):
        return  # load_state_dict reports a damaged state
    current = set(optimizer.param_groups[0]) - {"params"}
    kind = {True: "AdamW", False: "SGD"}
    if ("betas" in saved) != ("betas" in current):
        raise UserError(f"{where}: the run was trained with {kind['betas' in saved]}; its optimizer state cannot "
                        f"continue with {kind['betas' in current]} (--optimizer): resume with the run's optimizer, or "
                        "start a new run in another --out")


def lr_at(recipe: Recipe, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """The lr of the optimizer step ``step_in_epoch`` (0-based) of epoch ``epoch`` (0-based)."""
    progress = epoch + step_in_epoch / steps_per_epoch  # in epochs
    factor = recipe.gamma ** bisect.bisect_right(recipe.milestones, epoch)
    if progress < recipe.warmup_epochs:
        factor *= recipe.warmup_factor + (1.0 - recipe.warmup_factor) * progress / recipe.warmup_epochs
    return recipe.lr * factor


def apply_recipe(optimizer: torch.optim.Optimizer, recipe: Recipe, lr: float) -> None:
    """Set ``lr`` and the recipe's momentum / weight decay on every parameter group (also after a
    resumed optimizer state was loaded, so overrides given on resume apply)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = recipe.weight_decay
        if "betas" in group:
            group["betas"] = (recipe.momentum, group["betas"][1])
        else:
            group["momentum"] = recipe.momentum


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
