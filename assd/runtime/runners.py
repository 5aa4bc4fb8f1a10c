"""Runners: one per backend, each turning a batch of preprocessed images into the network's outputs.

A runner is built from an artifact (``.pt`` checkpoint or preset name, ``.onnx``, ``.engine``) and
knows its backend, device, precision, batch limits and the ``ModelConfig`` it runs. ``infer(images)``
takes ``[B, 3, S, S]`` float32 on any device and returns ``(loc [B, A, 4], conf [B, A, C])`` torch
tensors on the runner's device. No runner knows about datasets, metrics or timing (as Polygraphy's
runners: comparators and benchmarks live elsewhere).
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import torch

from assd.errors import UserError
from assd.models.assd import ASSD
from assd.models.config import ModelConfig


class Runner(abc.ABC):
    """Common attributes; subclasses implement ``infer``."""

    backend: str = ""
    precision: str = "fp32"
    max_batch: int | None = None  # None: any batch size
    cfg: ModelConfig
    postprocess: dict | None = None  # thresholds stored with the artifact (None: defaults)
    artifact: str = ""

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

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "precision": self.precision,
                "device": device_name(self.device), "max_batch": self.max_batch, "model": self.cfg.name}


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
    return torch.device(device)


class TorchRunner(Runner):
    """PyTorch eager (optionally ``torch.compile``d, fp16 and channels_last on GPU)."""

    backend = "torch"

    def __init__(self, model: ASSD, artifact: str, device: torch.device, precision: str = "fp32",
                 compile: bool = False, channels_last: bool = False):
        super().__init__()
        if precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"{artifact}: the torch backend runs fp32, fp16 or bf16, not {precision}")
        if precision != "fp32" and device.type != "cuda":
            raise UserError(f"{artifact}: {precision} PyTorch inference needs a CUDA device")
        self.device, self.precision, self.artifact, self.cfg = device, precision, artifact, model.cfg
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = model.eval().to(device=device, dtype=self.dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.module = torch.compile(model) if compile else model
        if compile:
            self.backend = "torch-compile"

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loc, conf = self.module(images)
        return loc.float(), conf.float()


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when asked and available."""

    backend = "onnxruntime"

    def __init__(self, path: str, device: torch.device, provider: str | None = None, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        from assd.export.metadata import read_metadata

        metadata = read_metadata(path)
        if metadata.outputs != "raw":
            raise UserError(f"{path}: exported --with-postprocess; runners need the raw (loc, conf) "
                            "outputs: export without --with-postprocess for bench/eval-engine")
        self.artifact, self.cfg, self.precision = str(path), metadata.model_config, metadata.precision
        self.postprocess, self.max_batch = metadata.postprocess, metadata.fixed_batch
        providers = self._providers(ort, device, provider)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        self.device = torch.device("cuda") if providers[0] != "CPUExecutionProvider" else torch.device("cpu")
        self.providers = self.session.get_providers()
        if providers[0] == "TensorrtExecutionProvider":
            self.backend = "onnxruntime-trt"
        elif providers[0] == "CUDAExecutionProvider":
            self.backend = "onnxruntime-cuda"

    @staticmethod
    def _providers(ort, device: torch.device, provider: str | None) -> list[str]:
        if provider in (None, "auto"):
            provider = "cuda" if device.type == "cuda" else "cpu"
        names = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}
        if provider not in names:
            raise UserError(f"unknown ONNX Runtime provider '{provider}': use cpu, cuda or tensorrt")
        if provider != "cpu" and not torch.cuda.is_available():
            raise UserError(f"ONNX Runtime provider '{provider}' needs a CUDA GPU; none is available: use cpu")
        if names[provider] not in ort.get_available_providers():
            raise UserError(f"this onnxruntime build has no {names[provider]}: install onnxruntime-gpu")
        return [names[provider], "CPUExecutionProvider"] if provider != "cpu" else ["CPUExecutionProvider"]

    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_batch(images.shape[0])
        feed = {"images": np.ascontiguousarray(images.detach().float().cpu().numpy())}
        loc, conf = self.session.run(["loc", "conf"], feed)
        return torch.from_numpy(loc).to(self.device), torch.from_numpy(conf).to(self.device)


def open_runner(artifact: str, device: str | None = "cpu", precision: str = "fp32", compile: bool = False,
                provider: str | None = None, channels_last: bool = False, threads: int | None = None) -> Runner:
    """The runner for an artifact path (or preset name), chosen by its extension."""
    from assd.models.checkpoint import load_model
    from assd.models.presets import PRESETS

    torch_device = resolve_device(device)
    suffix = Path(artifact).suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntimeRunner(artifact, torch_device, provider=provider, threads=threads)
    if suffix in (".engine", ".plan", ".trt"):
        from assd.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(artifact, torch_device)
    if suffix in (".pt", ".pth") or artifact in PRESETS:
        return TorchRunner(load_model(artifact), artifact, torch_device, precision=precision, compile=compile,
                           channels_last=channels_last)
    if not Path(artifact).exists():
        raise UserError(f"{artifact}: no such file or preset")
    raise UserError(f"{artifact}: unknown artifact type '{suffix}': pass a .pt checkpoint, .onnx or .engine file")
