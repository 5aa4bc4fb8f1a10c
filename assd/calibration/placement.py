"""Q/DQ placement as TensorRT fuses it, and keeping chosen layers in higher precision.

TensorRT's "Q/DQ Layer-Placement Recommendations" (Developer Guide, "Explicit Quantization":
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html),
followed here:

* "Quantize all inputs of weighted operations (Convolution, Transposed Convolution and GEMM)": every
  Conv gets Q/DQ on its input activation (per tensor) and a per-output-channel DQ on its int8 weight
  (``quantize_static`` in ``assd.calibration.quantize`` makes these).
* "By default, do not quantize the outputs of weighted operations": no Q/DQ after a Conv.
* "Quantize the residual input in skip connections": TensorRT fuses an element-wise Add that follows a
  Conv into the Conv; the Add's *other* (residual) input must carry Q/DQ for the fused kernel to run
  in INT8 ("the precision of xf1 is floating point, so the output of the fused convolution is limited
  to floating point"), while Q/DQ on the Conv's own output would split the Conv from the Add (the
  guide's "suboptimal fusion" figure). ``quantize_residual_inputs`` adds exactly that: DQ on the
  residual input, none on the Conv-side input. (ONNX Runtime's Add quantizer puts Q/DQ on *both* Add
  inputs, hence this pass; NVIDIA ModelOpt's ONNX quantizer removes the non-residual one for the same
  reason: ``modelopt.onnx.quantization.qdq_graph.build_non_residual_input_map``.)
* Nothing inside the attention score path (``q^T k`` MatMul, Softmax, ``ā v^T`` MatMul) is quantized.

A *layer* is one quantized Conv with everything TensorRT fuses into its INT8 kernel: its input Q/DQ,
its weight DQ and the residual Q/DQ of the Add it absorbs. ``keep_layers_high`` removes those for
chosen layers (their Conv then runs in float; the ranges of all others stay as calibrated), which is
how the precision debugger and ``--keep-high`` make mixed-precision graphs without re-calibrating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from assd.calibration.cache import Ranges

INT8_MAX = 127.0


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def layer_display_names(fp32_graph: onnx.GraphProto) -> dict[str, str]:
    """``{Conv node name: layer name}``; the layer name is the weight's (the PyTorch module path, e.g.
    ``backbone.layer3.0.conv2``), which stays the same across re-exports; else the node name."""
    initializers = {init.name for init in fp32_graph.initializer}
    names = {}
    for node in fp32_graph.node:
        if node.op_type == "Conv":
            weight = node.input[1]
            names[node.name] = weight.removesuffix(".weight") if weight in initializers else node.name
    return names


def fused_residual_adds(graph: onnx.GraphProto, convs: set[str]) -> dict[str, tuple[onnx.NodeProto, int]]:
    """``{Conv node name: (Add node, index of its residual input)}`` for every Add that TensorRT fuses into
    one of ``convs``: one Add input is that Conv's output (consumed by the Add alone), the other is the
    residual. When both inputs are such Conv outputs (a ResNet block with a downsampling shortcut,
    ``out = conv2(...) + downsample(x)``), the first (the block's main path) is the fused one."""
    producers, consumers = _producers(graph), _consumers(graph)
    initializers = {init.name for init in graph.initializer}
    fused = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or set(node.input) & initializers:
            continue
        for index in (0, 1):
            source = producers.get(node.input[index])
            if (source is not None and source.op_type == "Conv" and source.name in convs
                    and len(consumers.get(node.input[index], [])) == 1 and source.name not in fused):
                fused[source.name] = (node, 1 - index)
                break
    return fused


def _qdq_pairs(graph: onnx.GraphProto) -> dict[str, str]:
    """``{float tensor: output of its DequantizeLinear}`` for every Q -> DQ pair on an activation."""
    producers = _producers(graph)
    pairs = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            quantize = producers.get(node.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                pairs[quantize.input[0]] = node.output[0]
    return pairs


def restore_float_consumers(model: onnx.ModelProto) -> int:
    """Let only quantized Convs read dequantized activations (in place); returns how many inputs changed.

    ONNX Runtime's QDQ quantizer hands the DQ output of a quantized tensor to *every* consumer, so an
    op it did not quantize (the attention unit's residual Add, MaxPool, the fusion's Resize) would read
    an int8-rounded tensor that TensorRT's placement rules do not ask for, and keeping a Conv in float
    would not give float back. Those consumers read the float tensor again; residual Adds get their Q/DQ
    from ``quantize_residual_inputs``."""
    graph = model.graph
    sources = {dequantized: source for source, dequantized in _qdq_pairs(graph).items()}
    producers = _producers(graph)
    changed = 0
    for node in graph.node:
        weighted = node.op_type == "Conv" and getattr(producers.get(node.input[1]), "op_type", "") == "DequantizeLinear"
        for index, name in enumerate(node.input):
            if name in sources and not (weighted and index == 0):
                node.input[index] = sources[name]
                changed += 1
    return changed


def quantize_residual_inputs(model: onnx.ModelProto, ranges: Ranges) -> int:
    """Put Q/DQ on the residual input of every Add fused into a quantized Conv (in place); returns how
    many Adds got one. A residual tensor that already has a Q/DQ pair (it also feeds a Conv) reuses it;
    otherwise a symmetric int8 pair is made from its calibrated range (scale = amax / 127, zero point 0,
    as ONNX Runtime's symmetric quantizer does). Tensors without a range stay float."""
    graph = model.graph
    producers = _producers(graph)
    quantized_convs = {node.name for node in graph.node if node.op_type == "Conv"
                       and getattr(producers.get(node.input[0]), "op_type", "") == "DequantizeLinear"}
    pairs, added, count = _qdq_pairs(graph), [], 0
    for add, index in fused_residual_adds(graph, quantized_convs).values():
        residual = add.input[index]
        if residual not in pairs:
            if residual not in ranges:
                continue
            amax = max(abs(ranges[residual][0]), abs(ranges[residual][1])) or 1.0
            scale, zero = f"{residual}/residual_scale", f"{residual}/residual_zero_point"
            graph.initializer.extend([numpy_helper.from_array(np.array(amax / INT8_MAX, np.float32), scale),
                                      numpy_helper.from_array(np.array(0, np.int8), zero)])
            quantized, dequantized = f"{residual}/residual_q", f"{residual}/residual_dq"
            added.append((add, helper.make_node("QuantizeLinear", [residual, scale, zero], [quantized],
                                                name=f"{residual}/residual_QuantizeLinear")))
            added.append((add, helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized],
                                                name=f"{residual}/residual_DequantizeLinear")))
            pairs[residual] = dequantized
        add.input[index] = pairs[residual]
        count += 1
    for add, node in added:  # insert each new pair just before its Add (keeps the graph topologically sorted)
        position = next(i for i, existing in enumerate(graph.node) if existing is add)
        graph.node.insert(position, node)
    return count


@dataclass(frozen=True)
class QdqLayer:
    """One quantized Conv and the Q/DQ that TensorRT fuses into its INT8 kernel.

    ``activation``: (DQ output feeding the Conv, the float tensor before its Q);
    ``weight``: (DQ output feeding the Conv, the fp32 weight initializer's name);
    ``residual``: (Add node name, input index, DQ output, float tensor) of the Add fused into it, or None.
    """

    node: str
    name: str
    activation: tuple[str, str]
    weight: tuple[str, str]
    residual: tuple[str, int, str, str] | None


def qdq_layers(qdq_model: onnx.ModelProto, fp32_model: onnx.ModelProto) -> list[QdqLayer]:
    """The quantized Convs of ``qdq_model`` (made from ``fp32_model``) in network order."""
    graph = qdq_model.graph
    producers = _producers(graph)
    fp32_weights = {node.name: node.input[1] for node in fp32_model.graph.node if node.op_type == "Conv"}
    names = layer_display_names(fp32_model.graph)
    layers, convs = [], {}
    for node in graph.node:
        if node.op_type != "Conv" or node.name not in fp32_weights:
            continue
        activation, weight = producers.get(node.input[0]), producers.get(node.input[1])
        if getattr(activation, "op_type", "") != "DequantizeLinear" or getattr(weight, "op_type", "") != "DequantizeLinear":
            continue
        quantize = producers.get(activation.input[0])
        if getattr(quantize, "op_type", "") != "QuantizeLinear":
            continue
        convs[node.name] = ((activation.output[0], quantize.input[0]), (weight.output[0], fp32_weights[node.name]))
    fused = fused_residual_adds(graph, set(convs))
    for node in graph.node:
        if node.name not in convs:
            continue
        residual = None
        if node.name in fused:
            add, index = fused[node.name]
            dequantize = producers.get(add.input[index])
            quantize = producers.get(dequantize.input[0]) if getattr(dequantize, "op_type", "") == "DequantizeLinear" else None
            if getattr(quantize, "op_type", "") == "QuantizeLinear":
                residual = (add.name, index, add.input[index], quantize.input[0])
        activation, weight = convs[node.name]
        layers.append(QdqLayer(node.name, names[node.name], activation, weight, residual))
    return layers


def _add_fp32_weights(model: onnx.ModelProto, fp32_model: onnx.ModelProto, names: set[str]) -> None:
    present = {init.name for init in model.graph.initializer}
    for init in fp32_model.graph.initializer:
        if init.name in names and init.name not in present:
            model.graph.initializer.append(init)


def _names_read(nodes) -> set[str]:
    """Every tensor name the nodes read, including inside their subgraphs (If branches read outer tensors)."""
    names = set()
    for node in nodes:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                names |= _names_read(subgraph.node)
    return names


def prune_unused(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers no node reads (in place)."""
    graph = model.graph
    outputs = {value.name for value in graph.output}
    while True:
        used = _names_read(graph.node) | outputs
        dead = [i for i, node in enumerate(graph.node) if not any(name in used for name in node.output if name)]
        if not dead:
            break
        for index in reversed(dead):
            del graph.node[index]
    used = _names_read(graph.node) | outputs
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def keep_layers_high(qdq_model: onnx.ModelProto, fp32_model: onnx.ModelProto, layer_nodes) -> onnx.ModelProto:
    """A copy of ``qdq_model`` where the Convs named in ``layer_nodes`` (node names) run in float: their
    input and residual inputs read the float tensors, their weights are the fp32 ones."""
    keep = set(layer_nodes)
    model = onnx.ModelProto.FromString(qdq_model.SerializeToString())
    layers = [layer for layer in qdq_layers(model, fp32_model) if layer.node in keep]
    nodes = {node.name: node for node in model.graph.node}
    for layer in layers:
        conv = nodes[layer.node]
        conv.input[0], conv.input[1] = layer.activation[1], layer.weight[1]
        if layer.residual is not None:
            add_name, index, _dq, source = layer.residual
            nodes[add_name].input[index] = source
    _add_fp32_weights(model, fp32_model, {layer.weight[1] for layer in layers})
    prune_unused(model)
    return model


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so that every node follows the producers of its inputs (in place; stable)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress, waiting = False, []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                waiting.append(node)
        if not progress:  # a cycle or a missing input: keep the rest as it is (ONNX checks will name it)
            ordered.extend(waiting)
            break
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
