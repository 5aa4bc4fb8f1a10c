"""``OpenVinoRunner``: an assd ONNX file (fp32, fp16 or int8) on OpenVINO's CPU plugin.

OpenVINO (extra ``openvino``, imported lazily) reads the ONNX file directly, as the ONNX Runtime runner
does: the model config and thresholds come from the same ``metadata_props``. Its CPU plugin executes a
Q/DQ graph with int8 kernels (ONNX Runtime's CPU provider runs the TensorRT-style Q/DQ graph as fp32
with the quantization simulated), which is why an int8 graph is faster here (docs/benchmarks.md).

Options, as OpenVINO's performance guide names them:

- ``hint``: ``PERFORMANCE_HINT``; ``latency`` (default: one stream using every core, what a synchronous
  request of one batch wants; measured here) or ``throughput`` (several streams, for concurrent requests).
- ``threads``: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's, the physical cores).

``INFERENCE_PRECISION_HINT`` is pinned to f32: on CPUs with AMX or AVX512-BF16 OpenVINO would otherwise
run an fp32 graph in bf16, and the artifact's precision is what its graph says (its accuracy is what
``eval-engine`` proved); the int8 graph's Q/DQ nodes still run as int8.
"""

from __future__ import annotations

import numpy as np
import torch

from assd.errors import UserError, short_reason
from assd.runtime.base import Runner
from assd.runtime.graph_outputs import GraphOutputs
from assd.runtime.metadata import read_metadata

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
DEFAULT_HINT = "latency"
INSTALL_HINT = "pip install 'assd[openvino]' (or pip install openvino)"


def openvino_available() -> bool:
    """True when the ``openvino`` package imports (the runner's optional extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def compile_properties(hint: str | None, threads: int | None) -> dict[str, str]:
    """The CPU plugin's properties for a hint name (None: ``DEFAULT_HINT``) and a thread count."""
    hint = hint or DEFAULT_HINT
    if hint not in HINTS:
        raise UserError(f"--performance-hint {hint}: use one of {', '.join(HINTS)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: must be at least 1")
    properties = {"PERFORMANCE_HINT": HINTS[hint], "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = str(threads)
    return properties


class OpenVinoRunner(GraphOutputs, Runner):
    """OpenVINO on the CPU; ``infer`` takes and returns torch tensors on the CPU like every runner."""

    backend = "openvino"

    def __init__(self, path: str, device: torch.device, hint: str | None = None, threads: int | None = None):
        super().__init__()
        from assd.runtime.postprocess import PostprocessConfig

        if device.type != "cpu":
            raise UserError(f"{path}: the OpenVINO backend runs on the CPU: use --device cpu (or auto)")
        properties = compile_properties(hint, threads)
        try:
            import openvino as ov
        except ImportError:
            raise UserError(f"{path}: --backend openvino needs OpenVINO, which is not installed: {INSTALL_HINT}") from None
        metadata = read_metadata(path)
        self.artifact, self.cfg, self.precision = str(path), metadata.model_config, metadata.precision
        self.postprocess, self.max_batch, self.outputs = metadata.postprocess, metadata.fixed_batch, metadata.outputs
        self.exported_postprocess = PostprocessConfig.from_dict(metadata.postprocess)
        self.hint, self.properties = hint or DEFAULT_HINT, properties
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", properties)
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot run it": one line
            raise UserError(f"{path}: OpenVINO cannot compile it for the CPU ({short_reason(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def _run(self, images: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        self.check_batch(images.shape[0])
        feed = np.ascontiguousarray(images.detach().float().cpu().numpy())
        results = self.request.infer({"images": feed})
        # The request reuses its output buffers: copy before the next call overwrites them.
        return [torch.from_numpy(np.array(results[self.compiled.output(name)])) for name in names]

    def describe(self) -> dict:
        return {**super().describe(), "performance_hint": self.hint, "threads": self.threads}
