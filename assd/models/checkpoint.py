"""Checkpoint files: the network's weights with the ModelConfig they belong to.

A checkpoint is a plain dict loadable with ``torch.load(..., weights_only=True)``::

    {"format": "assd-checkpoint", "version": 1, "model_config": {...}, "model": state_dict,
     ...training state (optimizer, scheduler, epoch) when written by ``assd train``}

Writing is atomic (temp file in the same folder, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from assd.errors import UserError
from assd.models.assd import ASSD
from assd.models.config import ModelConfig
from assd.models.limits import check_config
from assd.models.presets import PRESETS, get_config

CHECKPOINT_FORMAT = "assd-checkpoint"
PRESET_SEED = 0
PRESET_CALIBRATION_IMAGES = 2
PRESET_VARIANCE_FLOOR = 0.1


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename: readers never see half a file.

    A failed write (disk full, read-only folder, ...) leaves ``path`` as it was, removes the temp file and
    raises a one-line ``UserError`` naming ``path`` and the errno (``assd.paths.write_error``). torch.save
    is handed a Python file object so the OS error keeps its errno: given a path, torch reports a full
    disk only as "unexpected pos N vs M". Temp files of killed processes are removed by the next save."""
    from assd.paths import TORCH, temp_file_beside, write_error
    from assd.utils import output_target

    path = output_target(path, TORCH)  # never a device or FIFO; a symlink: its file
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = temp_file_beside(path)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp_name, path)
        tmp_name = None
    except (OSError, RuntimeError) as exc:
        error = write_error(path, exc)
        if error is None:  # not a file system error
            raise
        raise UserError(f"{error} (the previous file, if any, is unchanged)") from None
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
        cfg = check_config(ModelConfig.from_dict(data["model_config"]), str(path))
        model = ASSD(cfg)
        model.load_state_dict(data["model"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path}: checkpoint does not match its model config ({str(exc).splitlines()[0][:160]})") from None
    return model.eval()


def _natural_noise(count: int, size: int) -> torch.Tensor:
    """``[count, 3, size, size]`` noise with roughly the spectrum of photos: one bilinearly upsampled
    Gaussian layer per octave (2, 4, 8, ... px), equal weight each, scaled to unit variance. White noise
    would not do: random filters respond far more to smooth photos than to it, so statistics taken on
    white noise under-normalize real images and logits still reach ~1e4 on ResNet101 presets."""
    total = torch.zeros(count, 3, size, size)
    side = 2
    while side < size:
        coarse = torch.randn(count, 3, side, side)
        total += torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        side *= 2
    return total / total.std()


def _calibrate_batchnorm(model: ASSD, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics from one train-mode pass of ``images``; variances are
    floored at ``PRESET_VARIANCE_FLOOR`` x their layer mean, since channels that are nearly silent on the
    noise would otherwise be amplified up to 300x on real images."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: the statistics of exactly this pass
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        norm.running_var.clamp_(min=PRESET_VARIANCE_FLOOR * float(norm.running_var.mean()))


def _normalize_attention(model: ASSD, images: torch.Tensor) -> None:
    """Scale each attention unit's query and key weights so its scores q^T k have unit std on ``images``:
    unscaled scores of random 1024-channel maps reach std ~100 and make the softmax a hard argmax,
    whose output flips with float rounding."""
    if model.attention is None:
        return
    with torch.no_grad():
        for features, unit in zip(model.feature_maps(images), model.attention):
            query, key = unit.query(features).flatten(2), unit.key(features).flatten(2)
            std = float(torch.matmul(query.transpose(1, 2), key).std()) if query.shape[-1] > 1 else 0.0
            if std > 0:
                unit.query.weight.mul_(std ** -0.5)
                unit.key.weight.mul_(std ** -0.5)


def preset_model(name: str, num_classes: int | None = None) -> ASSD:
    """The preset ``name`` with random weights that are the same on every call and well conditioned.

    Seeded init (the caller's RNG state is left untouched), then data-free calibration on seeded
    photo-like noise (``_natural_noise``): BatchNorm statistics (``_calibrate_batchnorm``) and attention
    score scales (``_normalize_attention``). With the stock init the logits of a ResNet101 preset reach
    ~1e5 and its float32 export differs from PyTorch by more than the parity tolerance; calibrated,
    logits stay ~1e2 and float32 rounding moves outputs by ~1e-4 relative (docs/reliability.md). For
    speed tests and graph checks only; trained checkpoints never pass through here.
    """
    cfg = get_config(name, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PRESET_SEED)
        model = ASSD(cfg)
        images = _natural_noise(PRESET_CALIBRATION_IMAGES, cfg.input_size)
    _calibrate_batchnorm(model, images)
    _normalize_attention(model, images)
    return model.eval()


def load_model(spec: str, num_classes: int | None = None) -> ASSD:
    """A checkpoint path, or a preset name (``preset_model``: random weights, for speed tests and graph
    checks only)."""
    if spec in PRESETS:
        return preset_model(spec, num_classes=num_classes)
    if not Path(spec).exists():
        raise UserError(f"{spec}: neither a checkpoint file nor a preset ({', '.join(PRESETS)})")
    return load_checkpoint(spec)
