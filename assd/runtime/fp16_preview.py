"""Faithful CPU previews of float16 graphs: every float16 tensor rounded to float16, as TensorRT stores it.

ONNX Runtime's CPU provider has float16 kernels for few ops. For the others it inserts Casts to float32
around the node, then removes the float32 -> float16 -> float32 pairs between neighbours as if they were
lossless (its ``InsertCastTransformer``; it runs whatever ``graph_optimization_level`` says). A chain of
"float16" ops therefore runs in float32: a 1e5 intermediate stays finite, where a strongly typed
TensorRT engine stores it in float16 as inf (measured with onnxruntime 1.31 on ``Cast(fp16) -> Mul 1000
-> Mul 1e-3``: 100.04 instead of inf, at every optimization level; tests/test_fp16_preview.py).

``rounding_graph`` rewrites such a graph into a float32 graph that computes what the engine computes:
float16 initializers and constants become float32 (exactly the same values), every op computes in float32
(as TensorRT's float16 kernels accumulate), and every tensor the original graph types as float16 is
rounded through ``Cast(to=float16) -> Cast(to=float)`` right after the node that makes it. Those Casts are
part of the model, not inserted by ONNX Runtime, so it keeps them (only the optional
``CastChainElimination`` rewrite would fold them; ``preview_session`` disables it by name): values beyond
65504 become inf, values below 6e-8 become 0, exactly as in the engine. Q/DQ graphs on a float16 base
preview the same way (their float16 scales become float32).

Hand-written because no ONNX Runtime setting keeps float16 chains in float16 on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
# ONNX Runtime rewrites that could fold a rounding pair (the one that exists is off by default).
CAST_FOLDING_OPTIMIZERS = ["CastChainElimination"]


def has_float16(model: onnx.ModelProto) -> bool:
    """True when any initializer, Cast target, Constant or graph I/O of ``model`` is float16."""
    graph = model.graph
    if any(init.data_type == FLOAT16 for init in graph.initializer):
        return True
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT16:
                return True
            if attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT and attribute.i == FLOAT16:
                return True
    return any(v.type.tensor_type.elem_type == FLOAT16 for v in list(graph.input) + list(graph.output))


def float16_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the node outputs and graph inputs ``model`` types as float16 (ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {value.name for value in list(graph.input) + list(graph.value_info) + list(graph.output)
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == FLOAT16}


def _to_float32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _rounding(raw: str, name: str) -> list[onnx.NodeProto]:
    """``name`` = ``raw`` rounded to float16 (and held in float32)."""
    half = f"{name}/preview_fp16"
    return [helper.make_node("Cast", [raw], [half], name=f"{half}_node", to=FLOAT16),
            helper.make_node("Cast", [half], [name], name=f"{name}/preview_fp32_node", to=FLOAT)]


def rounding_graph(model: onnx.ModelProto, rounding: bool = True) -> onnx.ModelProto:
    """The float32 graph computing ``model`` (any graph with float16 tensors) with every float16 tensor
    rounded to float16; inputs and outputs keep their names (float16 ones become float32). ``rounding``
    False: no rounding at all (the float32 twin of an fp16 graph, its tensors under their own names: what
    the fp16 range audit measures when no fp32 graph is at hand)."""
    fp16 = float16_tensors(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for index, init in enumerate(graph.initializer):
        if init.data_type == FLOAT16:
            graph.initializer[index].CopyFrom(_to_float32(init))
    nodes: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.name in fp16 and rounding:  # a float16 graph input: fed float32, rounded before use
            value.type.tensor_type.elem_type = FLOAT
            raw = f"{value.name}/preview_input"
            nodes += _rounding(raw, value.name)
            value.name, nodes[-2].input[0] = raw, raw
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT16:
                attribute.t.CopyFrom(_to_float32(attribute.t))
            elif attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT and attribute.i == FLOAT16:
                attribute.i = FLOAT
        rounded = []
        for index, name in enumerate(node.output):
            if name in fp16 and rounding:
                node.output[index] = f"{name}/preview_raw"
                rounded += _rounding(node.output[index], name)
        nodes += [node, *rounded]
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = FLOAT
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # element types changed: ONNX Runtime infers them again
    return model


def preview_model(source: str | Path | onnx.ModelProto) -> bytes | str:
    """What to hand ``onnxruntime.InferenceSession`` for a faithful CPU run of ``source``: the serialized
    ``rounding_graph`` when it has float16 tensors, else ``source`` itself (a path, or the serialized model)."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    if has_float16(model):
        return rounding_graph(model).SerializeToString()
    return source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)


def preview_session(source: str | Path | onnx.ModelProto, options=None, disabled_optimizers: list[str] | None = None):
    """An ONNX Runtime CPU session that computes ``source`` as a strongly typed TensorRT engine stores it
    (see the module docstring); ``options``: ``onnxruntime.SessionOptions`` (default: quiet)."""
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    disabled = sorted(set(CAST_FOLDING_OPTIMIZERS) | set(disabled_optimizers or []))
    return ort.InferenceSession(preview_model(source), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)
