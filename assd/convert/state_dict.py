"""Reading a foreign weights file and mapping it strictly onto an assd network.

Strict means: every tensor of the source is used exactly once, every tensor of the assd network
receives one, and shapes agree; anything else is a one-line ``UserError`` naming the keys. The only
tolerated gap is BatchNorm's ``num_batches_tracked`` counter, which PyTorch before 0.4.1 did not save
and which inference never reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from assd.errors import UserError

OPTIONAL_SUFFIX = "num_batches_tracked"
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."


def _show(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def read_state_dict(path: str | os.PathLike, expected: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``'d state_dict at ``path`` (``weights_only`` loading).

    Accepts a bare state_dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` (training
    checkpoints), and strips DataParallel's ``module.`` prefix. ``expected`` names the file the user
    should give (used in the one-line errors)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found: expected {expected}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign, pickled objects...: all mean "not readable here"
        raise UserError(f"{path}: not a readable torch state_dict ({type(exc).__name__}): expected {expected}") from None
    for key in WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path}: holds no state_dict of tensors: expected {expected}")
    if odd := [key for key in data if not isinstance(key, str)]:
        raise UserError(f"{path}: damaged state_dict: {len(odd)} key(s) are not tensor names ({', '.join(map(repr, odd[:3]))}"
                        f"{', ...' if len(odd) > 3 else ''}, a {type(odd[0]).__name__}): expected {expected}")
    if damaged := [key for key, value in data.items() if value.is_floating_point() and not torch.isfinite(value).all()]:
        raise UserError(f"{path}: {_show(damaged)} tensor(s) hold NaN or infinite values: a model made from them "
                        f"would detect nothing: expected trained weights ({expected})")
    if all(key.startswith(DATA_PARALLEL_PREFIX) for key in data):
        data = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in data.items()}
    return data


def load_mapped(model: nn.Module, source: dict[str, torch.Tensor], source_key_of: Callable[[str], str | None],
                where: str, what: str,
                adapt: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Fill every tensor of ``model`` from ``source`` (see the module docstring).

    Args:
        source_key_of: the source's name of each of the model's state_dict keys (one-to-one), ``None``
            for a tensor the source implementation does not have (a wrong ``--model``).
        where, what: the file and what it should be, for the errors.
        adapt: ``(model_key, tensor) -> tensor`` for layout changes (e.g. permuted loc channels).
    """
    target = model.state_dict()
    pairs = {key: source_key_of(key) for key in target}
    name_of = {name: key for key, name in pairs.items() if name is not None}
    if len(name_of) != sum(name is not None for name in pairs.values()):
        raise ValueError("source_key_of maps two assd tensors onto one source tensor")
    orphans = [key for key, name in pairs.items() if name is None]
    missing = [name for name in name_of if name not in source and not name.endswith(OPTIONAL_SUFFIX)]
    unexpected = [name for name in source if name not in name_of]
    problems = [f"{label} {_show(keys)}" for label, keys in [
        ("missing", missing), ("unexpected", unexpected), ("no counterpart for the network's", orphans)] if keys]
    if problems:
        raise UserError(f"{where}: not {what}: {'; '.join(problems)} tensor(s): pass the --from that matches "
                        "the file, with the default --model")
    mapped = {}
    for name, key in name_of.items():
        if name not in source:  # an old file without BatchNorm's batch counter
            mapped[key] = target[key]
            continue
        tensor = adapt(key, source[name]) if adapt is not None else source[name]
        if tensor.shape != target[key].shape:
            raise UserError(f"{where}: tensor {name} has shape {tuple(source[name].shape)}, {what} has "
                            f"{tuple(target[key].shape)} there: pass the --from that matches the file, with the "
                            "default --model")
        mapped[key] = tensor.to(target[key].dtype)
    model.load_state_dict(mapped, strict=True)

