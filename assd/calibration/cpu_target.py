"""``assd calibrate --target cpu``: an int8 graph in ONNX Runtime's own QDQ format, for CPU runtimes.

The default int8 graph follows TensorRT's explicit-quantization rules (``assd.calibration.quantize``:
Q/DQ on Conv inputs only). ONNX Runtime's CPU provider cannot run that pattern in int8: its QDQ fusion
turns ``DQ -> Conv -> Q`` into an int8 ``QLinearConv`` only when the Conv's output is quantized too, so it
computes the TensorRT graph in fp32 with the rounding simulated (slower than fp32, docs/benchmarks.md).
This graph is what ONNX Runtime's documentation describes for its CPU provider, written by its own
``quantize_static`` (QDQ format, per-channel symmetric int8 weights, per-tensor activations, int32 biases):

* every Conv that the TensorRT graph quantizes gets Q/DQ on its input and its output;
* a ``Relu`` after a quantized Conv or Add is folded into the Q of its output (ORT's removable activation:
  the Q's range starts at 0), so ``Conv + Relu`` becomes one int8 kernel;
* a residual ``Add`` whose output feeds one ``Relu`` is quantized too (ORT's ``QLinearAdd``), so ResNet's
  blocks stay in int8 between Convs;
* attention (score MatMul, Softmax, weighting MatMul), decode and anything else stay float.

The activation ranges are the project's own (``calibrated_ranges``: the same one-pass histograms, methods
and ``--calib-cache`` as the TensorRT graph). They cover every Conv input and output; a Relu's output
range, where no Conv reads it, is the Relu of its input's range, and a residual Add's output takes its
Relu's range (what ONNX Runtime does itself when it folds the Relu). Activations are ``uint8``
asymmetric by default (``activations="s8"``: int8 asymmetric, ONNX Runtime's QDQ default); the
measurements behind that choice are in docs/cpu.md. OpenVINO runs this graph too (its Q/DQ pairs become
FakeQuantize nodes, as for the TensorRT graph). The graph records ``assd.int8`` target ``cpu``
(``assd.runtime.int8_target``): ``build-engine`` and TensorRT providers refuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from assd.calibration.cache import Ranges, cache_run_id, sha256_file
from assd.calibration.paths import private_workdir
from assd.calibration.placement import prune_unused, topological_sort
from assd.calibration.quantize import (
    DEFAULT_IMAGES,
    DEFAULT_PERCENTILE,
    HISTOGRAM_BINS,
    METHODS,
    _tensors_data,
    calibrated_ranges,
    calibration_settings,
    check_int8_outputs,
    excluded_node_names,
    private_copy,
    quiet_ort,
    write_int8_graph,
)
from assd.calibration.run_set import new_run_id
from assd.errors import UserError
from assd.runtime.int8_target import Int8Layout
from assd.runtime.metadata import OnnxMetadata, load_fp32_source

CPU_OP_TYPES = ("Conv", "Relu", "Add")
ACTIVATIONS = {"u8": "uint8 asymmetric per-tensor", "s8": "int8 asymmetric per-tensor"}
DEFAULT_ACTIVATIONS = "u8"


@dataclass
class CpuQuantizeResult:
    metadata: OnnxMetadata
    layout: Int8Layout
    cache_reused: bool
    images_used: int
    int8_convs: int  # Convs with Q/DQ on input, weight and output (ONNX Runtime fuses them to QLinearConv)
    int8_adds: int  # residual Adds with Q/DQ on both inputs and the output (QLinearAdd)
    float_nodes: list[str]  # nodes kept in float: attention, post-processing, Relu/Add without a range


def cpu_ranges(graph: onnx.GraphProto, ranges: Ranges, excluded: list[str]) -> tuple[Ranges, list[str]]:
    """(``ranges`` extended to the Relu/Add tensors ONNX Runtime's QDQ quantizer will ask for, the Conv/Relu/Add
    nodes to leave in float besides ``excluded``). ``graph``'s nodes are in topological order (exports are)."""
    ranges = dict(ranges)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    skip, quantized, left_float = set(excluded), set(), []
    for node in graph.node:
        if node.op_type not in CPU_OP_TYPES or node.name in skip:
            continue
        if node.op_type == "Conv" and node.input[0] in ranges and node.output[0] in ranges:
            quantized.add(node.output[0])
        elif node.op_type == "Relu" and node.input[0] in quantized and node.input[0] in ranges:
            lowest, highest = ranges[node.input[0]]
            ranges.setdefault(node.output[0], (max(lowest, 0.0), max(highest, 0.0)))
            quantized.add(node.output[0])
        elif node.op_type == "Add" and _add_range(node, consumers, ranges):
            quantized.add(node.output[0])
        else:
            left_float.append(node.name)
    return ranges, left_float


def _add_range(node: onnx.NodeProto, consumers: dict, ranges: Ranges) -> bool:
    """Give a residual Add (both inputs ranged, its output read by one Relu whose output is ranged) its Relu's
    range, as ONNX Runtime does when it folds that Relu into the Add's Q; False for any other Add."""
    readers = consumers.get(node.output[0], [])
    if len(node.input) != 2 or not all(name in ranges for name in node.input):
        return False
    if len(readers) != 1 or readers[0].op_type != "Relu" or readers[0].output[0] not in ranges:
        return False
    ranges[node.output[0]] = ranges[readers[0].output[0]]
    return True


def build_cpu_qdq_model(model_path: Path, ranges: Ranges, workdir: Path,
                        activations: str = DEFAULT_ACTIVATIONS) -> tuple[onnx.ModelProto, list[str]]:
    """(ONNX Runtime's QDQ graph of the fp32 model at ``model_path`` (a copy inside ``workdir``) with these
    activation ranges, the Conv/Relu/Add nodes left in float)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    graph = onnx.load(str(model_path), load_external_data=False).graph
    excluded = excluded_node_names(graph)
    extended, left_float = cpu_ranges(graph, ranges, excluded)
    ranges_file, output = workdir / "ranges.json", workdir / "int8-cpu.onnx"
    activation_type = QuantType.QUInt8 if activations == "u8" else QuantType.QInt8
    with quiet_ort():
        save_tensors_data(_tensors_data(extended), ranges_file)
        quantize_static(
            str(model_path), str(output), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(CPU_OP_TYPES), per_channel=True, reduce_range=False,
            activation_type=activation_type, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded + left_float, calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=ranges_file,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    model = onnx.load(str(output))
    prune_unused(model)
    topological_sort(model.graph)
    return model, excluded + left_float


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output}


def int8_nodes(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    """The ``op_type`` nodes whose every input comes from a DequantizeLinear and whose output goes to a
    QuantizeLinear: what ONNX Runtime's CPU provider fuses into int8 kernels."""
    graph = model.graph
    producers = _producers(graph)
    readers = {name for node in graph.node if node.op_type == "QuantizeLinear" for name in node.input[:1]}
    return [node for node in graph.node if node.op_type == op_type and node.output[0] in readers
            and all(producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
                    for name in node.input if name)]


def conv_weight_scales(model: onnx.ModelProto) -> list[np.ndarray]:
    """The weight scales of every int8 Conv (one value per output channel when per-channel)."""
    graph = model.graph
    producers, initializers = _producers(graph), {init.name: init for init in graph.initializer}
    scales = []
    for node in int8_nodes(model, "Conv"):
        dequantize = producers[node.input[1]]
        scales.append(numpy_helper.to_array(initializers[dequantize.input[1]]))
    return scales


def graph_layout(model: onnx.ModelProto, activations: str) -> Int8Layout:
    """The layout that ``model`` really has: per-channel only when every int8 Conv's weight scale is a vector."""
    scales = conv_weight_scales(model)
    per_channel = bool(scales) and all(scale.ndim == 1 and scale.size > 1 for scale in scales)
    return Int8Layout(target="cpu", format="onnxruntime-qdq",
                      weights=f"int8 symmetric {'per-channel' if per_channel else 'per-tensor'}",
                      activations=ACTIVATIONS[activations])


def quantize_int8_cpu(onnx_path: str, output: str, calib_data: str, num_images: int = DEFAULT_IMAGES,
                      method: str = "entropy", cache_path: str | None = None,
                      percentile: float = DEFAULT_PERCENTILE, echo: Callable[[str], None] = print,
                      num_bins: int = HISTOGRAM_BINS, activations: str = DEFAULT_ACTIVATIONS) -> CpuQuantizeResult:
    """Write the CPU-target int8 graph of the fp32 assd ONNX file ``onnx_path`` to ``output`` (atomically),
    calibrated exactly as ``quantize_int8`` calibrates (same images, methods, cache)."""
    if method not in METHODS:
        raise UserError(f"--calib-method {method}: choose one of {', '.join(METHODS)} (--target cpu)")
    if activations not in ACTIVATIONS:
        raise UserError(f"activations {activations}: choose one of {', '.join(ACTIVATIONS)}")
    check_int8_outputs(onnx_path, output, cache_path, calib_data)
    _, metadata = load_fp32_source(onnx_path, output, "int8")
    settings = calibration_settings(num_images, calib_data, percentile, num_bins)
    run_id = new_run_id()  # in the cache this run writes and in its graph, as quantize_int8 does
    with private_workdir() as workdir:
        copy = private_copy(onnx_path, workdir)
        ranges, images_used, reused = calibrated_ranges(copy, sha256_file(onnx_path), metadata, settings,
                                                        cache_path, workdir, echo, methods=(method,), run_id=run_id)
        quantized, float_nodes = build_cpu_qdq_model(copy, ranges[method], workdir, activations)
    layout = graph_layout(quantized, activations)
    ranges_run = (cache_run_id(cache_path) or "") if reused else run_id
    int8_metadata = write_int8_graph(quantized, metadata, output, layout=layout, run_ids=(run_id, ranges_run))
    return CpuQuantizeResult(int8_metadata, layout, reused, images_used, len(int8_nodes(quantized, "Conv")),
                             len(int8_nodes(quantized, "Add")), float_nodes)


def calibrate_cpu_and_report(onnx_path: str, output: str, calib_data: str, num_images: int = DEFAULT_IMAGES,
                             method: str = "entropy", cache_path: str | None = None,
                             percentile: float = DEFAULT_PERCENTILE, parity_images: int = 8,
                             echo: Callable[[str], None] = print, activations: str = DEFAULT_ACTIVATIONS):
    """``assd calibrate --target cpu``: write ``output`` and print what was done and its parity with fp32."""
    from assd.calibration.workflow import check_calibrate_options, report_parity

    check_calibrate_options(num_images, percentile, parity_images)
    result = quantize_int8_cpu(onnx_path, output, calib_data, num_images=num_images, method=method,
                               cache_path=cache_path, percentile=percentile, echo=echo, activations=activations)
    echo(f"wrote {output} (int8 for CPU runtimes, ONNX Runtime's QDQ format: {result.int8_convs} Conv and "
         f"{result.int8_adds} residual Add in int8 with Q/DQ on their outputs, {result.layout.weights} weights, "
         f"{result.layout.activations} activations, {method} ranges from {result.images_used} images; "
         f"{len(result.float_nodes)} nodes kept in float: the attention units' MatMul, Softmax and residual Add, "
         "any post-processing; "
         "not for TensorRT engines)")
    return result, report_parity(onnx_path, output, calib_data, parity_images, echo)
