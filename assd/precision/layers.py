"""The layers a precision choice is made for, their cost (MACs) and the prediction maps they feed.

* INT8: one layer per quantized Conv, with the Q/DQ TensorRT fuses into its kernel (input, weight,
  residual input: ``assd.calibration.placement.QdqLayer``).
* FP16: one layer per node group the fp16 pass converts: each Conv, and each attention unit's value
  weighting MatMul (``ā v^T``), together with the nodes that consume its output on the way to the next
  such node (ReLU, Add, Resize, Concat, reshapes). The attention score path is never a layer: it is
  always fp32 (``assd.export.fp16``).

A layer's name is its PyTorch module path (``backbone.layer3.0.conv2``, from the weight's name), so a
recipe made on one export applies to another export of the same model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from assd.calibration.placement import layer_display_names
from assd.export.fp16 import FLOAT32_ONLY_OPS, POSTPROCESS_PREFIX, attention_score_nodes

LEADER_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Layer:
    """One precision unit. ``node``: the ONNX node that leads it (Conv / MatMul); ``nodes``: every node of
    the unit (fp16 group; for int8 just ``node``); ``macs``: multiply-accumulates per image; ``share``:
    fraction of the model's MACs (its cost of staying in higher precision); ``index``: network order."""

    name: str
    node: str
    op_type: str
    index: int
    macs: int
    share: float
    nodes: tuple[str, ...]


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values}


def node_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per image of every Conv / MatMul / Gemm of the fp32 ``model`` (the batch
    dimension excluded), from ONNX shape inference."""
    shapes = _shapes(model)
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    macs = {}
    for node in model.graph.node:
        output = shapes.get(node.output[0]) if node.output else None
        if node.op_type not in LEADER_OPS or not output or any(d is None for d in output[1:]):
            continue
        if node.op_type == "Conv":
            kernel = weights.get(node.input[1]) or shapes.get(node.input[1])
            if kernel and output and len(output) >= 3:  # [Cout, Cin/g, kh, kw] x output positions
                macs[node.name] = int(np.prod(kernel) * np.prod(output[2:]))
        else:
            left = weights.get(node.input[0]) or shapes.get(node.input[0]) or []
            inner = left[-1] if left and left[-1] else 0
            macs[node.name] = int(np.prod(output[1:]) * inner)
    return macs


def _share(macs: dict[str, int], node: str) -> tuple[int, float]:
    total = sum(macs.values()) or 1
    return macs.get(node, 0), macs.get(node, 0) / total


def int8_layers(qdq_layers, fp32_model: onnx.ModelProto) -> list[Layer]:
    """``Layer`` per quantized Conv (``assd.calibration.placement.qdq_layers``), in the order given."""
    macs = node_macs(fp32_model)
    order = {node.name: i for i, node in enumerate(fp32_model.graph.node)}
    layers = []
    for qdq in qdq_layers:
        count, share = _share(macs, qdq.node)
        layers.append(Layer(qdq.name, qdq.node, "Conv", order.get(qdq.node, 0), count, share, (qdq.node,)))
    return layers


def fp16_blocked_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the fp16 pass keeps in fp32 anyway (attention scores, post-processing, NMS)."""
    return attention_score_nodes(graph) + [n for n in graph.node if n.name.startswith(POSTPROCESS_PREFIX)
                                           or n.op_type in FLOAT32_ONLY_OPS]


def _matmul_name(node: onnx.NodeProto, producers: dict, names: dict[str, str]) -> str:
    """``attention.K.weighting`` for the value weighting MatMul (traced back to its value projection)."""
    source = producers.get(node.input[1]) if len(node.input) > 1 else None
    while source is not None and source.op_type != "Conv":
        source = producers.get(source.input[0]) if source.input else None
    if source is not None and source.name in names:
        return re.sub(r"\.value$", "", names[source.name]) + ".weighting"
    return node.name


def fp16_layers(fp32_model: onnx.ModelProto) -> list[Layer]:
    """One ``Layer`` per group of nodes the fp16 pass converts (see the module docstring), network order."""
    graph = fp32_model.graph
    blocked = {node.name for node in fp16_blocked_nodes(graph)}
    producers = {output: node for node in graph.node for output in node.output}
    names, macs = layer_display_names(graph), node_macs(fp32_model)
    group_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for node in graph.node:
        if node.name in blocked:
            continue
        if node.op_type in LEADER_OPS:
            group_of[node.name] = node.name
            members[node.name] = [node.name]
            continue
        leader = next((group_of[producers[name].name] for name in node.input
                       if name in producers and producers[name].name in group_of), None)
        if leader is not None:
            group_of[node.name] = leader
            members[leader].append(node.name)
    order = {node.name: i for i, node in enumerate(graph.node)}
    layers = []
    for leader, nodes in members.items():
        node = next(n for n in graph.node if n.name == leader)
        name = names.get(leader) or _matmul_name(node, producers, names)
        count, share = _share(macs, leader)
        layers.append(Layer(name, leader, node.op_type, order[leader], count, share, tuple(nodes)))
    return sorted(layers, key=lambda layer: layer.index)


@dataclass(frozen=True)
class PredictionMap:
    """Prediction map ``index``: the tensor its heads read (the attention unit's output when the model has
    attention units) and its anchors' rows ``[start, stop)`` in ``loc`` / ``conf``."""

    index: int
    tensor: str | None
    size: tuple[int, int]
    start: int
    stop: int


def prediction_maps(fp32_model: onnx.ModelProto, cfg) -> list[PredictionMap]:
    """The maps of ``cfg`` with their tensor in the graph (found from the ``loc_heads.K`` Conv's input)."""
    from assd.models.assd import feature_sizes

    tensors = {}
    for node in fp32_model.graph.node:
        match = re.fullmatch(r"loc_heads\.(\d+)\.weight", node.input[1]) if node.op_type == "Conv" else None
        if match:
            tensors[int(match.group(1))] = node.input[0]
    maps, start = [], 0
    for index, (size, anchors) in enumerate(zip(feature_sizes(cfg), cfg.anchors_per_location)):
        stop = start + size[0] * size[1] * anchors
        maps.append(PredictionMap(index, tensors.get(index), tuple(size), start, stop))
        start = stop
    return maps
