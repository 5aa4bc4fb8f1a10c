"""Checkpoint files: the network's weights with the ModelConfig they belong to.

A checkpoint is a plain dict loadable with ``torch.load(..., weights_only=True)``::

    {"format": "assd-checkpoint", "version": 1, "model_config": {...}, "model": state_dict,
     ...training state (optimizer, scheduler, epoch) when written by ``assd train``}

Writing is atomic (temp file in the same folder, then rename).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import torch

from assd.errors import UserError
from assd.models.assd import ASSD
from assd.models.config import ModelConfig
from assd.models.presets import PRESETS, get_config

CHECKPOINT_FORMAT = "assd-checkpoint"


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: readers never see half a file.

    A failed write (disk full, read-only folder, ...) leaves ``path`` as it was, removes the temp file and
    raises a one-line ``UserError`` naming ``path`` and the errno. torch.save is handed a Python file
    object so the OS error keeps its errno: given a path, torch reports a full disk only as "unexpected
    pos N vs M", and even with a file object its zip writer's cleanup raises that RuntimeError on top of
    the OSError (kept as its ``__context__``)."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp_name, path)
        tmp_name = None
    except (OSError, RuntimeError) as exc:
        cause = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:  # not a file system error
            raise
        name = errno.errorcode.get(cause.errno, "OSError") if cause.errno else type(cause).__name__
        advice = "free disk space or write elsewhere" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else (
            "write elsewhere or fix the folder's permissions")
        raise UserError(f"{path}: cannot write ({name}: {cause.strerror or cause}); the previous file, if any, "
                        f"is unchanged: {advice}") from None
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def checkpoint_dict(model: ASSD, **extra) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": CHECKPOINT_FORMAT, "version": 1, "model_config": model.cfg.to_dict(), "model": state,
            **extra}


def save_checkpoint(model: ASSD, path: str | os.PathLike, **extra) -> None:
    atomic_torch_save(checkpoint_dict(model, **extra), path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; one-line ``UserError`` for anything that is not ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found: pass a .pt file written by 'assd train'")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
        raise UserError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}): "
                        "pass a .pt file written by 'assd train'") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an assd checkpoint (no '{CHECKPOINT_FORMAT}' header): "
                        "pass a .pt file written by 'assd train'")
    return data


def load_checkpoint(path: str | os.PathLike) -> ASSD:
    """The model stored in ``path``, in eval mode on the CPU."""
    data = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(data["model_config"])
        model = ASSD(cfg)
        model.load_state_dict(data["model"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path}: checkpoint does not match its model config ({str(exc).splitlines()[0][:160]})") from None
    return model.eval()


def load_model(spec: str, num_classes: int | None = None) -> ASSD:
    """A checkpoint path, or a preset name (random weights: for speed tests and graph checks only)."""
    if spec in PRESETS:
        return ASSD(get_config(spec, num_classes=num_classes)).eval()
    if not Path(spec).exists():
        raise UserError(f"{spec}: neither a checkpoint file nor a preset ({', '.join(PRESETS)})")
    return load_checkpoint(spec)
