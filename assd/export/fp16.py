"""FP16 ONNX graphs: weights and activations in float16, attention scores and their softmax in float32.

ASSD's attention scores ``a = q^T k`` are *not* scaled by ``1/sqrt(d)`` (paper, eq. 1), so with C/8 = 64
query channels they can exceed float16's range (65504) and a float16 softmax over thousands of
positions loses most of its precision. The conversion therefore keeps, per attention unit, the score
``MatMul`` and its ``Softmax`` in float32 (found from the Softmax nodes: a Softmax fed by a MatMul), plus
any ``Attention`` node (``--attention-op`` exports) and the in-graph post-processing (``pp/`` nodes:
``NonMaxSuppression`` takes float32 only). Graph inputs and outputs stay float32, so every runner feeds
and reads the same tensors as for the fp32 graph; Cast nodes mark each precision boundary, which is
what a strongly typed TensorRT build needs (precision lives in the graph).

Hand-written with ``onnx.helper`` because ``onnxconverter-common`` (which has the same
``keep_io_types`` / ``node_block_list`` scheme) is not a dependency of this project.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from assd.runtime.metadata import OnnxMetadata, load_fp32_source, set_metadata
from assd.utils import atomic_write_bytes

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
# Inputs that the ONNX spec types as float32 whatever the data type of the other inputs.
FLOAT32_ONLY_INPUTS = {"Resize": {2}, "Upsample": {1}}
# Ops that stay float32: their float inputs are cast up, their outputs down. ReduceL2 (SSD's L2Norm):
# a sum of squares over hundreds of channels overflows float16.
FLOAT32_ONLY_OPS = {"NonMaxSuppression", "ReduceL2"}
POSTPROCESS_PREFIX = "pp/"


def attention_score_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Per attention unit the score ``MatMul(q^T, k)`` and its ``Softmax``; plus whole ``Attention`` nodes."""
    producers = {output: node for node in graph.node for output in node.output}
    found = []
    for node in graph.node:
        if node.op_type == "Attention":
            found.append(node)
        elif node.op_type == "Softmax":
            source = producers.get(node.input[0])
            if source is not None and source.op_type == "MatMul":
                found.extend([source, node])
    return found


def attention_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``attention_score_nodes`` plus the MatMul that weighs the values by the softmax (``ā v^T``)."""
    score_nodes = attention_score_nodes(graph)
    softmax_outputs = {node.output[0] for node in score_nodes if node.op_type == "Softmax"}
    weighting = [node for node in graph.node if node.op_type == "MatMul" and softmax_outputs & set(node.input)]
    return score_nodes + weighting


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor of the main graph (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _convert_attribute_types(node: onnx.NodeProto) -> None:
    """Float32 constants / target types inside a node that now computes in float16."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            attribute.t.CopyFrom(_to_fp16_tensor(attribute.t))
        elif attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT and attribute.i == FLOAT:
            attribute.i = FLOAT16


def _to_fp16_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), tensor.name)


class _Casts:
    """One Cast per (tensor, target type), emitted just before its first consumer."""

    def __init__(self):
        self.made: dict[tuple[str, int], str] = {}

    def get(self, name: str, to: int, emit: list[onnx.NodeProto]) -> str:
        key = (name, to)
        if key not in self.made:
            suffix = "fp16" if to == FLOAT16 else "fp32"
            cast_name = f"{name}/cast_{suffix}"
            emit.append(helper.make_node("Cast", [name], [cast_name], name=f"{cast_name}_node", to=to))
            self.made[key] = cast_name
        return self.made[key]


def convert_to_fp16(model: onnx.ModelProto, block: Iterable[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs/outputs; ``block`` (default: the attention score
    nodes, Attention nodes and post-processing) stays float32. Raises ``ValueError`` for graphs with
    control flow (If / Loop / Scan): their subgraphs are not converted."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for attr in n.attribute):
        raise ValueError("graphs with subgraphs (If/Loop/Scan) are not supported by the fp16 conversion")
    types = tensor_types(model)
    if block is None:
        block = attention_score_nodes(graph) + [n for n in graph.node if n.name.startswith(POSTPROCESS_PREFIX)
                                                or n.op_type in FLOAT32_ONLY_OPS]
    blocked = {id(node) for node in block}
    is_float = {name for name, elem in types.items() if elem == FLOAT}
    graph_outputs = {value.name for value in graph.output}

    # The "home" type of every float tensor: float16 if a converted node or converted initializer makes it.
    consumers_fp16 = {name for node in graph.node if id(node) not in blocked
                      for index, name in enumerate(node.input)
                      if index not in FLOAT32_ONLY_INPUTS.get(node.op_type, ())}
    home_fp16 = {init.name for init in graph.initializer if init.name in is_float and init.name in consumers_fp16}
    for node in graph.node:
        if id(node) not in blocked:
            home_fp16.update(name for name in node.output if name in is_float)
    for index, init in enumerate(graph.initializer):
        if init.name in home_fp16:
            graph.initializer[index].CopyFrom(_to_fp16_tensor(init))

    # Float outputs made in float16 are renamed; a final Cast restores the float32 output name.
    renamed = {name: f"{name}/fp16" for name in graph_outputs if name in home_fp16}
    casts, new_nodes = _Casts(), []
    for node in graph.node:
        converted = id(node) not in blocked
        for index, name in enumerate(node.input):
            if name not in is_float:
                continue
            source = renamed.get(name, name)
            want = FLOAT16 if converted and index not in FLOAT32_ONLY_INPUTS.get(node.op_type, ()) else FLOAT
            have = FLOAT16 if name in home_fp16 else FLOAT
            node.input[index] = source if want == have else casts.get(source, want, new_nodes)
        for index, name in enumerate(node.output):
            node.output[index] = renamed.get(name, name)
        if converted:
            _convert_attribute_types(node)
        new_nodes.append(node)
    for name, fp16_name in renamed.items():
        new_nodes.append(helper.make_node("Cast", [fp16_name], [name], name=f"{name}/cast_output", to=FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    _fix_value_info(graph, home_fp16, renamed, casts)
    return model


def _fix_value_info(graph: onnx.GraphProto, home_fp16: set[str], renamed: dict[str, str], casts: _Casts) -> None:
    """Element types of the intermediate tensors as they are now (shapes are kept)."""
    shapes = {value.name: value for value in list(graph.value_info) + list(graph.input) + list(graph.output)}
    kept = []
    for value in graph.value_info:
        if value.name in home_fp16 and value.name not in renamed:
            value.type.tensor_type.elem_type = FLOAT16
        if value.name not in renamed:
            kept.append(value)
    for name, fp16_name in renamed.items():
        copy = onnx.ValueInfoProto.FromString(shapes[name].SerializeToString())
        copy.name, copy.type.tensor_type.elem_type = fp16_name, FLOAT16
        del copy.metadata_props[:]
        kept.append(copy)
    for (name, to), cast_name in casts.made.items():
        original = next((n for n, f in renamed.items() if f == name), name)
        if original in shapes:
            copy = onnx.ValueInfoProto.FromString(shapes[original].SerializeToString())
            copy.name, copy.type.tensor_type.elem_type = cast_name, to
            del copy.metadata_props[:]
            kept.append(copy)
    del graph.value_info[:]
    graph.value_info.extend(kept)


def fp16_metadata(metadata: OnnxMetadata) -> OnnxMetadata:
    """The ``OnnxMetadata`` of the fp16 graph made from a graph with ``metadata``."""
    return dataclasses.replace(metadata, precision="fp16")


def write_fp16_onnx(source: str, output: str) -> OnnxMetadata:
    """Convert the fp32 assd ONNX file ``source`` and write it (atomically, with ``assd.precision`` =
    fp16) to ``output``. Returns the new metadata."""
    from assd.export.onnx_export import check_and_serialize

    model, metadata = load_fp32_source(source, output, "fp16")
    converted = convert_to_fp16(model)
    new_metadata = fp16_metadata(metadata)
    set_metadata(converted, new_metadata)
    atomic_write_bytes(output, check_and_serialize(converted))
    return new_metadata
