"""``open_runner``: the runner for an artifact, chosen by its extension (one module per backend).

The names of the backends' modules are re-exported here, so callers import runners from one place.
"""

from __future__ import annotations

from pathlib import Path

import torch

from assd.errors import UserError
from assd.runtime.base import Runner, device_name, resolve_device
from assd.runtime.onnxruntime_runner import OnnxRuntimeRunner
from assd.runtime.torch_runner import TorchRunner

__all__ = ["BACKENDS", "OnnxRuntimeRunner", "Runner", "TorchRunner", "artifact_files", "backends_for",
           "device_name", "open_runner", "resolve_device"]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# The backends each kind of artifact runs on, its default first ("auto" picks it).
BACKENDS_BY_KIND = {"checkpoint": ("torch", "torch-compile"), "onnx": ("onnxruntime", "openvino"), "engine": ("tensorrt",)}
BACKENDS = ("auto", "torch", "torch-compile", "onnxruntime", "openvino", "tensorrt")


def artifact_files(artifact: str | None) -> list[str]:
    """The files ``open_runner(artifact)`` reads: the artifact, and a TensorRT engine's JSON sidecar
    (what no output may overwrite: ``assd.paths.check_outputs``)."""
    if artifact is None:
        return []
    if Path(artifact).suffix.lower() in ENGINE_SUFFIXES:
        from assd.runtime.engine_info import sidecar_path

        return [artifact, str(sidecar_path(artifact))]
    return [artifact]


def artifact_kind(artifact: str) -> str:
    """``"checkpoint"`` (.pt/.pth or a preset name), ``"onnx"`` or ``"engine"``; a UserError otherwise."""
    from assd.models.presets import PRESETS

    suffix = Path(artifact).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in (".pt", ".pth") or artifact in PRESETS:
        return "checkpoint"
    if not Path(artifact).exists():
        raise UserError(f"{artifact}: no such file or preset")
    raise UserError(f"{artifact}: unknown artifact type '{suffix}': pass a .pt checkpoint, .onnx or .engine file")


def backends_for(artifact: str) -> tuple[str, ...]:
    """The backends ``artifact`` can run on, its default first."""
    return BACKENDS_BY_KIND[artifact_kind(artifact)]


def choose_backend(artifact: str, backend: str | None) -> str:
    """``backend`` checked against the artifact's kind; None or ``"auto"``: the kind's default."""
    if backend not in (None, *BACKENDS):
        raise UserError(f"--backend {backend}: use one of {', '.join(BACKENDS)}")
    allowed = backends_for(artifact)
    if backend in (None, "auto"):
        return allowed[0]
    if backend not in allowed:
        if backend == "tensorrt" and artifact_kind(artifact) == "onnx":
            from assd.runtime.int8_target import refuse_cpu_target

            refuse_cpu_target(artifact, "a TensorRT engine")
        kind = {"checkpoint": "a checkpoint", "onnx": "an ONNX graph", "engine": "a TensorRT engine"}
        raise UserError(f"{artifact}: --backend {backend} cannot run {kind[artifact_kind(artifact)]} "
                        f"(it runs on {' or '.join(allowed)}): use --backend {allowed[0]} or auto")
    return backend


def open_runner(artifact: str, device: str | None = "cpu", precision: str = "fp32", compile: bool = False,
                provider: str | None = None, channels_last: bool = False, threads: int | None = None,
                backend: str | None = None, performance_hint: str | None = None, cuda_graph: bool = False,
                fp16_preview: bool = True) -> Runner:
    """The runner for an artifact path (or preset name) on ``backend`` (None/"auto": by its extension:
    .pt/preset -> torch, .onnx -> onnxruntime, .engine -> tensorrt; "openvino" runs an .onnx file,
    "torch-compile" a checkpoint through ``torch.compile``, as ``compile=True`` does).
    ``threads``: intra-op threads (ONNX Runtime, OpenVINO); ``performance_hint``: OpenVINO's
    (latency, throughput); ``cuda_graph``: engines only; ``fp16_preview``: an fp16/int8 ONNX on ONNX
    Runtime's CPU provider rounds every fp16 tensor as an engine would (accuracy; bench turns it off to
    time what ONNX Runtime itself runs)."""
    from assd.models.checkpoint import load_model

    chosen = choose_backend(artifact, backend)
    openvino_auto = chosen == "openvino" and device in (None, "auto")  # OpenVINO runs on the CPU
    torch_device = torch.device("cpu") if openvino_auto else resolve_device(device)
    if chosen == "onnxruntime":
        return OnnxRuntimeRunner(artifact, torch_device, provider=provider, threads=threads, fp16_preview=fp16_preview)
    if chosen == "openvino":
        from assd.runtime.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(artifact, torch_device, hint=performance_hint, threads=threads)
    if chosen == "tensorrt":
        from assd.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(artifact, torch_device, cuda_graph=cuda_graph)
    compile = compile or chosen == "torch-compile"
    return TorchRunner(load_model(artifact), artifact, torch_device, precision=precision, compile=compile,
                       channels_last=channels_last)
