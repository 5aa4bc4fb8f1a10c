"""``open_runner``: the runner for an artifact, chosen by its extension (one module per backend).

The names of the backends' modules are re-exported here, so callers import runners from one place.
"""

from __future__ import annotations

from pathlib import Path

from assd.errors import UserError
from assd.runtime.base import Runner, device_name, resolve_device
from assd.runtime.onnxruntime_runner import OnnxRuntimeRunner
from assd.runtime.torch_runner import TorchRunner

__all__ = ["OnnxRuntimeRunner", "Runner", "TorchRunner", "artifact_files", "device_name", "open_runner",
           "resolve_device"]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artifact_files(artifact: str | None) -> list[str]:
    """The files ``open_runner(artifact)`` reads: the artifact, and a TensorRT engine's JSON sidecar
    (what no output may overwrite: ``assd.paths.check_outputs``)."""
    if artifact is None:
        return []
    if Path(artifact).suffix.lower() in ENGINE_SUFFIXES:
        from assd.runtime.engine_info import sidecar_path

        return [artifact, str(sidecar_path(artifact))]
    return [artifact]


def open_runner(artifact: str, device: str | None = "cpu", precision: str = "fp32", compile: bool = False,
                provider: str | None = None, channels_last: bool = False, threads: int | None = None,
                cuda_graph: bool = False, fp16_preview: bool = True) -> Runner:
    """The runner for an artifact path (or preset name), chosen by its extension. ``cuda_graph``: engines
    only. ``fp16_preview``: an fp16/int8 ONNX on the CPU rounds every fp16 tensor as an engine would
    (accuracy; bench turns it off to time what ONNX Runtime itself runs)."""
    from assd.models.checkpoint import load_model
    from assd.models.presets import PRESETS

    torch_device = resolve_device(device)
    suffix = Path(artifact).suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntimeRunner(artifact, torch_device, provider=provider, threads=threads, fp16_preview=fp16_preview)
    if suffix in ENGINE_SUFFIXES:
        from assd.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(artifact, torch_device, cuda_graph=cuda_graph)
    if suffix in (".pt", ".pth") or artifact in PRESETS:
        return TorchRunner(load_model(artifact), artifact, torch_device, precision=precision, compile=compile,
                           channels_last=channels_last)
    if not Path(artifact).exists():
        raise UserError(f"{artifact}: no such file or preset")
    raise UserError(f"{artifact}: unknown artifact type '{suffix}': pass a .pt checkpoint, .onnx or .engine file")
