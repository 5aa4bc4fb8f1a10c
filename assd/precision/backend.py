"""The runtime the debugger measures on: ONNX Runtime (default) or OpenVINO (the CPU target).

``assd debug-precision --backend openvino`` answers the question for a CPU deployment: OpenVINO's CPU
plugin turns each Q/DQ pair in front of a Conv into a FakeQuantize and runs the Conv with int8 kernels,
so its int8 rounding is not ONNX Runtime's (docs/cpu.md), and its answer is the one that deploys.

* ONNX Runtime (``auto``, ``onnxruntime``): every variant is one feed of the one switchable graph
  (``assd.precision.switch``) in the debugger's own session; the final graph is verified through the
  runtime's ONNX Runtime runner, as ``eval-engine`` runs it.
* OpenVINO: every variant is the *real* mixed-precision graph (``keep_layers_high``), written to a
  private folder and compiled by the runtime's OpenVINO runner with the user's ``--threads`` /
  ``--performance-hint``, exactly as ``eval-engine --backend openvino`` opens it. A switch would not
  do here: a Conv that reads an ``If``'s output is not fused with its FakeQuantize, so OpenVINO would
  run it as fp32 with the rounding simulated, i.e. not the kernels that deploy. The cost is one
  compile per variant.

Layers kept high are fp32 on both: ``debug-precision``'s int8 graph is calibrate's Q/DQ graph on the
fp32 export. That is what a CPU wants: OpenVINO's inference precision does not follow the graph's
float types (an fp16 tensor is weight compression to it), the runner pins ``INFERENCE_PRECISION_HINT``
to f32, so an fp16 layer would run in fp32 anyway with fp16-rounded weights (docs/cpu.md). For the
same reason ``--precision fp16`` has nothing to search on OpenVINO and is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from assd.errors import UserError

LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
HIGH_PRECISION = "fp32"  # what a kept-high layer of debug-precision's int8 graph computes in, on both


@dataclass(frozen=True)
class PrecisionBackend:
    """Where candidate graphs run: ``name`` (onnxruntime or openvino), ``threads`` (ONNX Runtime's intra-op
    threads / OpenVINO's INFERENCE_NUM_THREADS; None: theirs), ``performance_hint`` (OpenVINO's)."""

    name: str = "onnxruntime"
    threads: int | None = None
    performance_hint: str | None = None

    @property
    def real_graphs(self) -> bool:
        """True: every variant is compiled as the real graph (no switchable graph)."""
        return self.name == "openvino"

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def runner_options(self) -> dict:
        """``open_runner`` keyword arguments for a graph verified or evaluated on this backend."""
        return {"backend": self.name, "threads": self.threads, "performance_hint": self.performance_hint}

    def describe(self, threads: int | None) -> str:
        """'ONNX Runtime CPU, 2 threads' / 'OpenVINO 2026.4.1 CPU (latency hint), 2 threads'."""
        if self.name == "openvino":
            from assd.runtime.openvino_runner import DEFAULT_HINT

            text = " ".join(filter(None, ["OpenVINO", version(self.name), f"CPU ({self.performance_hint or DEFAULT_HINT} hint)"]))
        else:
            text = "ONNX Runtime CPU"
        return f"{text}, {threads} threads" if threads else text

    def to_dict(self, threads: int | None = None) -> dict:
        from assd.runtime.openvino_runner import DEFAULT_HINT

        return {"name": self.name, "version": version(self.name), "threads": threads or self.threads,
                "performance_hint": (self.performance_hint or DEFAULT_HINT) if self.name == "openvino" else None,
                "kept_high_precision": HIGH_PRECISION}


def version(name: str) -> str:
    """The installed runtime's version ('' when it does not import)."""
    try:
        module = __import__(name)
    except ImportError:
        return ""
    return str(getattr(module, "__version__", "")).split("-")[0]


def choose_precision_backend(onnx_path: str, backend: str | None, threads: int | None = None,
                             performance_hint: str | None = None, precision: str = "int8") -> PrecisionBackend:
    """``--backend`` / ``--threads`` / ``--performance-hint`` checked for the fp32 ONNX file, before any work.
    The messages are the runtime's own (``choose_backend``, the OpenVINO runner's)."""
    from assd.runtime.openvino_runner import INSTALL_HINT, compile_properties, openvino_available
    from assd.runtime.runners import choose_backend

    name = "onnxruntime" if backend in (None, "auto") else choose_backend(onnx_path, backend)
    compile_properties(performance_hint, threads)  # --threads >= 1, --performance-hint known
    if name == "openvino":
        if not openvino_available():
            raise UserError(f"{onnx_path}: --backend openvino needs OpenVINO, which is not installed: {INSTALL_HINT}")
        if precision == "fp16":
            raise UserError(f"{onnx_path}: --precision fp16 --backend openvino: OpenVINO's CPU plugin runs fp16 "
                            "layers at its inference precision (f32: INFERENCE_PRECISION_HINT), so no layer has an fp16 "
                            "precision to search; the CPU target is --precision int8 (fp16 is TensorRT's: use "
                            "--backend onnxruntime, its faithful preview)")
    return PrecisionBackend(name, threads, performance_hint)


@contextlib.contextmanager
def compiled_graph(model: onnx.ModelProto, backend: PrecisionBackend) -> Iterator:
    """The runtime's runner for the real graph ``model`` on ``backend`` (written to a private folder, opened by
    ``open_runner`` with the backend's options, as ``eval-engine`` opens the file)."""
    from assd.calibration.paths import private_workdir
    from assd.runtime.runners import open_runner

    with private_workdir() as folder:
        path = folder / "variant.onnx"
        path.write_bytes(model.SerializeToString())
        runner = open_runner(str(path), device="cpu", **backend.runner_options())
        try:
            yield runner
        finally:
            del runner

