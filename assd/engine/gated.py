"""``build-engine --max-delta-map`` / ``--keep-high`` / ``--calib-method auto``: the graph verified is the graph built.

The accuracy gate (``assd.precision.gate``) searches on fp32-based variants of the precision graph (one
switchable graph in ONNX Runtime), but a strongly typed engine computes the graph the engine stage
composes (``assd.engine.precision_graph``: int8 Convs on an fp16 base, fp32 islands for attention
scores/softmax, L2Norm and the tensors the fp16 range audit finds beyond fp16). So the gate is handed
that composition as its ``finish``: every graph it verifies on the verification images is composed
first and previewed on the CPU with every fp16 tensor rounded as the engine stores it
(``assd.runtime.fp16_preview``, through the ONNX Runtime runner), and the graph it writes beside the
engine is byte for byte the graph it verified. ``build_engine`` then hands that file to TensorRT as is
(no second composition, no second name): on TensorRT 10 through a ``STRONGLY_TYPED`` network without
FP16/INT8 builder flags, on TensorRT 11 strongly typed always, so the precision of every layer is the
graph's in both. The sidecar records the gate (``accuracy_gate``: the graph, its SHA-256 = the
sidecar's ``onnx_sha256``, Δ mAP and its interval).

Order: the output guard (``assd.paths.check_outputs``: engine, sidecar, graph, caches) before any
work; ``Attention`` nodes lowered first (as for every build), then the gate on the lowered fp32 graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from assd.engine.precision_graph import compose_model, lower_for_tensorrt, precision_graph_path
from assd.errors import UserError
from assd.runtime.metadata import OnnxMetadata, load_onnx
from assd.utils import atomic_write_bytes

GATED_PRECISIONS = ("int8", "fp16")


def check_gate_outputs(onnx_path: str, output: str, precision: str, options) -> Path:
    """The output guard of a gated build (before any work); returns where the gated graph goes."""
    from assd.data import data_spec_inputs
    from assd.paths import check_outputs
    from assd.runtime.engine_info import sidecar_path

    target = precision_graph_path(onnx_path, output, precision)
    calibration, request = options.calibration, options.gate
    check_outputs([onnx_path, request.keep_high, *data_spec_inputs(calibration.data),
                   *data_spec_inputs(request.eval_data)],
                  files={"-o": output, "the engine sidecar": sidecar_path(output), "the precision graph": target,
                         "--timing-cache": options.timing_cache, "--calib-cache": calibration.cache})
    return target


def gated_precision_graph(onnx_path: str, output: str, metadata: OnnxMetadata, precision: str, options,
                          echo: Callable[[str], None] = print):
    """(the composed, verified graph to build, written beside the engine; the ``GateResult``) for the fp32
    ``onnx_path``; ``options``: the build's ``EngineOptions`` (``gate``, ``calibration``, ``timing_cache``).
    Raises CheckFailed (the best graph written, no engine) when the budget cannot be met."""
    from assd.paths import temp_dir
    from assd.precision.gate import gate_graph
    from assd.precision.setup import CalibrationRequest

    if metadata.precision != "fp32":
        raise UserError(f"{onnx_path}: is a {metadata.precision} graph; --max-delta-map / --keep-high start from "
                        "the fp32 export (the gate compares against it and chooses what stays high)")
    if precision not in GATED_PRECISIONS:
        raise UserError("--max-delta-map / --keep-high: choose --int8 or --fp16 (an fp32 engine has nothing to gate)")
    target = check_gate_outputs(onnx_path, output, precision, options)
    calib = options.calibration
    request = CalibrationRequest(data=calib.data, images=calib.images, method=calib.method, cache=calib.cache) \
        if precision == "int8" and calib.data else None

    def finish(model: onnx.ModelProto, keep_nodes: list[str]) -> onnx.ModelProto:
        return compose_model(model, precision, calib, echo, keep_nodes)[0]

    with temp_dir("engine-graph") as tmp:
        source = onnx_path
        lowered = lower_for_tensorrt(load_onnx(onnx_path), onnx_path, echo)
        if lowered is not None:  # the gate compares against (and searches) the lowered graph: same numbers
            source = str(tmp / Path(onnx_path).name)
            atomic_write_bytes(source, lowered.SerializeToString())
        gate = gate_graph(source, str(target), precision, request, options.gate, echo, finish=finish)
    return str(target), gate
