"""The options every command that opens an artifact shares: ``--backend``, ``--threads``, ``--performance-hint``.

One convention for bench, eval, eval-engine and predict: the artifact's extension picks its kind
(.pt/preset, .onnx, .engine) and ``--backend`` picks the runtime among those that run that kind
(``assd.runtime.runners.BACKENDS_BY_KIND``); ``auto`` is the kind's default (torch, onnxruntime,
tensorrt). ``bench`` takes several, comma-separated, to time one file on each side by side.
"""

from __future__ import annotations

import click

from assd.errors import UserError

BACKEND_NAMES = ("auto", "torch", "torch-compile", "onnxruntime", "openvino", "tensorrt")


def runtime_click_options(several: bool = False):
    """Add --backend, --threads and --performance-hint to a click command (``several``: --backend takes a
    comma-separated list, as bench does)."""
    backend_help = ("Runtime for the artifact: auto (by extension: .pt -> torch, .onnx -> onnxruntime, .engine -> "
                    "tensorrt), openvino for an .onnx file (extra 'openvino'), torch-compile for a checkpoint "
                    "(torch.compile).")
    if several:
        backend_help += (" Several, comma-separated (e.g. torch,torch-compile,onnxruntime,openvino): each artifact runs on every listed "
                         "backend that can run it.")

    def decorate(command):
        command = click.option("--performance-hint", type=click.Choice(["latency", "throughput"]), default=None,
                               help="OpenVINO's PERFORMANCE_HINT [default: latency, measured best for one "
                                    "synchronous request: docs/benchmarks.md].")(command)
        command = click.option("--threads", type=click.IntRange(min=1), default=None,
                               help="CPU threads of ONNX Runtime / OpenVINO [default: theirs: every core / "
                                    "every physical core].")(command)
        return click.option("--backend", default="auto", show_default=True, help=backend_help)(command)
    return decorate


def parse_backends(text: str) -> list[str]:
    """``--backend`` text -> backend names (each checked)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in BACKEND_NAMES]
    if not names or unknown:
        raise UserError(f"--backend {text}: use {', '.join(BACKEND_NAMES)} (bench: several, comma-separated)")
    return names


def runner_options(backend: str, threads: int | None, performance_hint: str | None) -> dict:
    """``open_runner`` keyword arguments for one backend (commands that open one artifact)."""
    names = parse_backends(backend)
    if len(names) != 1:
        raise UserError(f"--backend {backend}: this command runs the artifact on one backend: name one")
    return {"backend": names[0], "threads": threads, "performance_hint": performance_hint}
