"""The ``Runner`` contract every backend implements, and device helpers shared by the runners.

A runner is built from an artifact (``.pt`` checkpoint or preset name, ``.onnx``, ``.engine``) and
knows its backend, device, precision, batch limits and the ``ModelConfig`` it runs. ``infer(images)``
takes ``[B, 3, S, S]`` float32 on any device and returns ``(loc [B, A, 4], conf [B, A, C])`` torch
tensors on the runner's device. No runner knows about datasets, metrics or timing (as Polygraphy's
runners: comparators and benchmarks live elsewhere). One module per backend implements it:
``torch_runner``, ``onnxruntime_runner``, ``tensorrt_runner``; ``runners.open_runner`` picks one.

An artifact exported ``--with-postprocess`` computes detections, not (loc, conf): its runner has
``outputs == "detections"``, implements ``infer_detections(images) -> PaddedDetections`` and refuses
``infer``. ``infer_outputs`` returns whichever the artifact computes (what ``predict_dataset`` takes).
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch

from assd.errors import UserError
from assd.models.config import ModelConfig


class Runner(abc.ABC):
    """Common attributes; subclasses implement ``infer``."""

    backend: str = ""
    precision: str = "fp32"
    max_batch: int | None = None  # None: any batch size
    cfg: ModelConfig
    postprocess: dict | None = None  # thresholds stored with the artifact (None: defaults)
    artifact: str = ""
    outputs: str = "raw"  # "raw": infer -> (loc, conf); "detections": infer_detections -> PaddedDetections

    def __init__(self):
        self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return f"{Path(self.artifact).name} [{self.backend} {self.precision}]"

    def check_batch(self, batch: int) -> None:
        if self.max_batch is not None and batch > self.max_batch:
            raise UserError(f"{self.artifact}: batch {batch} is larger than this artifact accepts "
                            f"({self.max_batch}): use --batch {self.max_batch} or less, or re-export with a "
                            "dynamic batch")

    @abc.abstractmethod
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B, 3, S, S]`` -> ``(loc [B, A, 4], conf [B, A, C])`` on the runner's device."""

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.infer(images)

    def infer_detections(self, images: torch.Tensor):
        """``images [B, 3, S, S]`` -> ``PaddedDetections`` (artifacts exported ``--with-postprocess`` only)."""
        raise UserError(f"{self.artifact}: outputs (loc, conf), not detections: decode them with "
                        "assd.runtime.postprocess.detect")

    def infer_outputs(self, images: torch.Tensor):
        """What the artifact computes: ``(loc, conf)``, or ``PaddedDetections`` for a detections artifact."""
        return self.infer_detections(images) if self.outputs == "detections" else self.infer(images)

    def refuse_raw_outputs(self):
        """UserError for ``infer`` on a detections artifact."""
        raise UserError(f"{self.artifact}: exported --with-postprocess, it outputs detections, not (loc, conf): "
                        "bench, parity and calibration need an export without --with-postprocess "
                        "(eval, predict and eval-engine take either)")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "precision": self.precision,
                "device": device_name(self.device), "max_batch": self.max_batch, "model": self.cfg.name,
                "outputs": self.outputs}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. ``"cuda"`` without a GPU is a UserError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available on this machine: use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device: use auto, cpu or cuda[:N]") from None
