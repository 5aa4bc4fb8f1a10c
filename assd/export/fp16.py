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
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from assd.runtime.metadata import OnnxMetadata, load_fp32_source, set_metadata
from assd.utils import atomic_write_bytes

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)  # 2**-24 = 5.96e-8
# Inputs that the ONNX spec types as float32 whatever the data type of the other inputs.
FLOAT32_ONLY_INPUTS = {"Resize": {2}, "Upsample": {1}}
# Ops that stay float32: their float inputs are cast up, their outputs down. ReduceL2 (SSD's L2Norm):
# a sum of squares over hundreds of channels overflows float16.
FLOAT32_ONLY_OPS = {"NonMaxSuppression", "ReduceL2"}
POSTPROCESS_PREFIX = "pp/"
# Ops between L2Norm's ReduceL2 and its Div (the epsilon, broadcasting the norm).
L2NORM_PASS_THROUGH = {"Clip", "Max", "Add", "Expand", "Reshape", "Unsqueeze"}


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


def l2norm_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """SSD's L2Norm ``x / max(||x||_2, 1e-12)`` (ssd300-coco, torchvision conversions), kept float32 whole:
    per ``ReduceL2`` the nodes from it to the ``Div`` by the norm (the epsilon's ``Clip``/``Max`` and any
    broadcast in between). In float16 the sum of squares overflows and the epsilon 1e-12 becomes 0, so an
    all-zero feature vector would give 0/0."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[onnx.NodeProto] = []
    for node in (n for n in graph.node if n.op_type == "ReduceL2"):
        frontier = [node]
        found.append(node)
        while frontier:
            for consumer in consumers.get(frontier.pop().output[0], []):
                if consumer.op_type in L2NORM_PASS_THROUGH and consumer not in found:
                    found.append(consumer)
                    frontier.append(consumer)
                elif consumer.op_type == "Div" and consumer not in found:
                    found.append(consumer)
    return found


def nodes_of_tensors(graph: onnx.GraphProto, names: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes that make or read any of the tensors ``names``: what keeps those tensors float32."""
    names = set(names)
    return [node for node in graph.node if names & set(node.output) or names & set(node.input)]


def default_fp32_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """What every fp16 graph keeps float32: attention scores + softmax (and Attention nodes), L2Norm,
    float32-only ops and the in-graph post-processing."""
    return (attention_score_nodes(graph) + l2norm_nodes(graph)
            + [n for n in graph.node if n.name.startswith(POSTPROCESS_PREFIX) or n.op_type in FLOAT32_ONLY_OPS])


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


def _convert_attribute_types(node: onnx.NodeProto, notes: list[str] | None = None) -> None:
    """Float32 constants / target types inside a node that now computes in float16."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            attribute.t.CopyFrom(_to_fp16_tensor(attribute.t, notes))
        elif attribute.name in ("to", "dtype") and attribute.type == onnx.AttributeProto.INT and attribute.i == FLOAT:
            attribute.i = FLOAT16


def _to_fp16_tensor(tensor: onnx.TensorProto, notes: list[str] | None = None) -> onnx.TensorProto:
    """``tensor`` in float16: magnitudes beyond 65504 clipped to it, nonzero magnitudes that would round to 0
    flushed to fp16's smallest subnormal (sign kept: an epsilon stays an epsilon); each case noted."""
    values = numpy_helper.to_array(tensor).astype(np.float32)
    magnitude = np.abs(values)
    over = magnitude > FP16_MAX
    under = (magnitude > 0) & (magnitude <= FP16_TINY / 2)  # would round to 0 (ties to even at half the tiniest)
    if notes is not None and over.any():
        notes.append(f"constant {tensor.name}: {int(over.sum())} value(s) up to {float(magnitude.max()):.3g} beyond "
                     f"fp16's range, clipped to {FP16_MAX:g}")
    # An epsilon or a small constant that vanishes is worth a warning; a few tiny weights among thousands are not.
    if notes is not None and under.sum() > 0.01 * np.count_nonzero(values):
        notes.append(f"constant {tensor.name}: {int(under.sum())} nonzero value(s) down to "
                     f"{float(magnitude[under].min()):.3g} below fp16's smallest subnormal, flushed to {FP16_TINY:.3g}")
    flushed = np.where(under, np.copysign(FP16_TINY, values), np.clip(values, -FP16_MAX, FP16_MAX))
    return numpy_helper.from_array(flushed.astype(np.float16), tensor.name)


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


def _node_key(node: onnx.NodeProto) -> tuple:
    return node.name, tuple(node.output)


def convert_to_fp16(model: onnx.ModelProto, block: Iterable[onnx.NodeProto] | None = None,
                    keep_fp32: Iterable[str] = (), notes: list[str] | None = None) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs/outputs; ``block`` (default: ``default_fp32_nodes``)
    stays float32, and so do the tensors ``keep_fp32`` (their producers and consumers: e.g. the fp16 range
    audit's findings). Constants that over- or underflow float16 are clipped / flushed, each noted in
    ``notes``. Raises ``ValueError`` for graphs with control flow (If / Loop / Scan): their subgraphs are
    not converted."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for attr in n.attribute):
        raise ValueError("graphs with subgraphs (If/Loop/Scan) are not supported by the fp16 conversion")
    types = tensor_types(model)
    block = default_fp32_nodes(graph) if block is None else list(block)
    # Nodes are told apart by (name, outputs): protobuf's Python wrappers are not stable objects, so id() is not.
    blocked = {_node_key(node) for node in block + nodes_of_tensors(graph, keep_fp32)}
    is_float = {name for name, elem in types.items() if elem == FLOAT}
    graph_outputs = {value.name for value in graph.output}

    # The "home" type of every float tensor: float16 if a converted node or converted initializer makes it.
    consumers_fp16 = {name for node in graph.node if _node_key(node) not in blocked
                      for index, name in enumerate(node.input)
                      if index not in FLOAT32_ONLY_INPUTS.get(node.op_type, ())}
    home_fp16 = {init.name for init in graph.initializer if init.name in is_float and init.name in consumers_fp16}
    for node in graph.node:
        if _node_key(node) not in blocked:
            home_fp16.update(name for name in node.output if name in is_float)
    for index, init in enumerate(graph.initializer):
        if init.name in home_fp16:
            graph.initializer[index].CopyFrom(_to_fp16_tensor(init, notes))

    # Float outputs made in float16 are renamed; a final Cast restores the float32 output name.
    renamed = {name: f"{name}/fp16" for name in graph_outputs if name in home_fp16}
    casts, new_nodes = _Casts(), []
    for node in graph.node:
        converted = _node_key(node) not in blocked
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
            _convert_attribute_types(node, notes)
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


def write_fp16_onnx(source: str, output: str, keep_fp32: Iterable[str] = (),
                    echo: Callable[[str], None] | None = None) -> OnnxMetadata:
    """Convert the fp32 assd ONNX file ``source`` and write it (atomically, with ``assd.precision`` =
    fp16) to ``output``; ``keep_fp32``: tensors that stay float32 (see ``convert_to_fp16``); constants
    clipped or flushed are said through ``echo``. Returns the new metadata."""
    from assd.export.onnx_export import check_and_serialize

    model, metadata = load_fp32_source(source, output, "fp16")
    notes: list[str] = []
    converted = convert_to_fp16(model, keep_fp32=keep_fp32, notes=notes)
    for note in notes:
        (echo or print)(f"warning: {note}")
    new_metadata = fp16_metadata(metadata)
    set_metadata(converted, new_metadata)
    atomic_write_bytes(output, check_and_serialize(converted))
    return new_metadata


def fp16_source_tensors(converted: onnx.ModelProto) -> set[str]:
    """Names, in the float32 graph ``converted`` was made from, of the tensors it holds in float16: its
    float16 node outputs, with its Casts to float16 (``x/cast_fp16``) and renamed float16 graph outputs
    (``y/fp16``) traced back to the tensor they hold (what the fp16 range audit must measure)."""
    from assd.runtime.fp16_preview import float16_tensors

    outputs = {value.name for value in converted.graph.output}
    names = set()
    for name in float16_tensors(converted):
        if name.endswith("/cast_fp16"):
            name = name.removesuffix("/cast_fp16")
        if name.endswith("/fp16") and name.removesuffix("/fp16") in outputs:
            name = name.removesuffix("/fp16")
        names.add(name)
    return names
