"""One ONNX graph in which every layer's precision is a run-time switch, and the real graphs it predicts.

The debugger evaluates hundreds of precision variants. Instead of building (and loading into ONNX
Runtime) one graph per variant, it builds one *switchable* graph: each layer ``i`` gets a boolean
scalar input ``assd_low_i``, and every tensor the lower precision would change is chosen by an
``If(assd_low_i)`` node: its ``then`` branch computes the lowered tensor, its ``else`` branch passes the
original through, and ONNX Runtime runs only the branch taken (so a layer kept high costs no
quantize/dequantize work). One ONNX Runtime session then runs any variant by its feed: nothing is
re-calibrated, re-quantized or re-loaded between variants.

* INT8: the ``then`` branch is the Q/DQ graph's own QuantizeLinear -> DequantizeLinear of the layer's
  Conv input / weight / residual input, the ``else`` branch the float tensor or the fp32 weight, so
  a variant computes exactly what ``assd.calibration.placement.keep_layers_high`` builds.
* FP16: the lowered tensor is rounded to float16 (``Cast`` to fp16 and back; weights clipped to
  fp16's range as the fp16 pass does) on every float input and output of the group's nodes: the
  values a float16 tensor can hold, the arithmetic inside each node in fp32, as ONNX Runtime's CPU
  provider computes fp16 graphs. The final graph is always the real fp16 conversion, evaluated on its
  own (``assd.precision.debugger``).

Extra graph outputs expose each prediction map's tensor (the attention units' outputs), so the error
of every map is measured with the same run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from assd.calibration.placement import QdqLayer, prune_unused
from assd.export.fp16 import FLOAT32_ONLY_INPUTS, FP16_MAX, tensor_types
from assd.precision.layers import Layer

FLAG_PREFIX = "assd_low_"


def flag_name(index: int) -> str:
    return f"{FLAG_PREFIX}{index}"


def _add_flag_inputs(graph: onnx.GraphProto, count: int) -> None:
    graph.input.extend(helper.make_tensor_value_info(flag_name(i), TensorProto.BOOL, []) for i in range(count))


def add_outputs(model: onnx.ModelProto, names: list[str], float_names: set[str] | None = None) -> list[str]:
    """Expose these tensors as extra float32 graph outputs (in place; a float16 tensor through a Cast).
    ``float_names``: tensors known to be float32 (skips shape inference). Returns the output names."""
    present = {value.name for value in model.graph.output}
    types = {name: TensorProto.FLOAT for name in names} if float_names is not None and set(names) <= float_names \
        else tensor_types(model)
    exposed = []
    for name in names:
        if types.get(name) == TensorProto.FLOAT16:
            cast = f"{name}/output_fp32"
            model.graph.node.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT, name=f"{cast}_node"))
            name = cast
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
        exposed.append(name)
    return exposed


def _switch(flag: str, then_nodes: list[onnx.NodeProto], lowered: str, original: str, out: str) -> onnx.NodeProto:
    """``out = If(flag) then <then_nodes, giving lowered> else original``."""
    branch_out, high_out = f"{out}/low", f"{out}/high"
    then_nodes = [onnx.NodeProto.FromString(node.SerializeToString()) for node in then_nodes]
    local = {name for node in then_nodes for name in node.output}
    for node in then_nodes:  # branch-local names for the branch's own tensors
        node.name = f"{node.name}/{out}"
        node.input[:] = [f"{name}/{out}" if name in local else name for name in node.input]
        node.output[:] = [f"{name}/{out}" for name in node.output]
    if then_nodes:
        then_nodes[-1].output[0] = branch_out
    else:
        then_nodes = [helper.make_node("Identity", [lowered], [branch_out], name=f"{branch_out}_node")]
    then_graph = helper.make_graph(then_nodes, f"{out}/then", [], [helper.make_tensor_value_info(
        branch_out, TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Identity", [original], [high_out], name=f"{high_out}_node")],
                                   f"{out}/else", [], [helper.make_tensor_value_info(high_out, TensorProto.FLOAT, None)])
    return helper.make_node("If", [flag], [out], name=f"{out}_if", then_branch=then_graph, else_branch=else_graph)


def _chain(producers: dict[str, onnx.NodeProto], dequantized: str) -> list[onnx.NodeProto]:
    """The DequantizeLinear making ``dequantized``, with the QuantizeLinear before it when there is one."""
    dequantize = producers[dequantized]
    quantize = producers.get(dequantize.input[0])
    return [quantize, dequantize] if quantize is not None and quantize.op_type == "QuantizeLinear" else [dequantize]


def int8_switchable(qdq_model: onnx.ModelProto, fp32_model: onnx.ModelProto, layers: list[QdqLayer]) -> onnx.ModelProto:
    """The Q/DQ graph with a switch per layer (``layers[i]`` is switched by ``assd_low_i``)."""
    model = onnx.ModelProto.FromString(qdq_model.SerializeToString())
    graph = model.graph
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> If nodes to emit just before it
    nodes = {node.name: node for node in graph.node}
    producers = {output: node for node in graph.node for output in node.output}
    for index, layer in enumerate(layers):
        flag, conv = flag_name(index), nodes[layer.node]
        switched = [(conv, 0, layer.activation), (conv, 1, layer.weight)]
        if layer.residual is not None:
            switched.append((nodes[layer.residual[0]], layer.residual[1], layer.residual[2:]))
        for node, position, (lowered, original) in switched:
            out = f"{lowered}/switch_{index}"
            before.setdefault(node.name, []).append(_switch(flag, _chain(producers, lowered), lowered, original, out))
            node.input[position] = out
    present = {init.name for init in graph.initializer}
    graph.initializer.extend(init for init in fp32_model.graph.initializer
                             if init.name in {layer.weight[1] for layer in layers} and init.name not in present)
    ordered = []
    for node in graph.node:
        ordered.extend(before.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    prune_unused(model)  # the shared Q/DQ nodes now live inside the branches
    _add_flag_inputs(graph, len(layers))
    return model


def _round_to_fp16(name: str) -> list[onnx.NodeProto]:
    """Cast ``name`` to float16 and back (the branch computing the float16-rounded tensor)."""
    return [helper.make_node("Cast", [name], [f"{name}/as_fp16"], to=TensorProto.FLOAT16, name=f"{name}/as_fp16_node"),
            helper.make_node("Cast", [f"{name}/as_fp16"], [f"{name}/fp16"], to=TensorProto.FLOAT, name=f"{name}/fp16_node")]


def fp16_switchable(fp32_model: onnx.ModelProto, layers: list[Layer]) -> onnx.ModelProto:
    """The fp32 graph with a switch per fp16 node group (``layers[i]`` is switched by ``assd_low_i``)."""
    model = onnx.ModelProto.FromString(fp32_model.SerializeToString())
    graph = model.graph
    is_float = {name for name, elem in tensor_types(model).items() if elem == TensorProto.FLOAT}
    initializers = {init.name: init for init in graph.initializer}
    group = {node: index for index, layer in enumerate(layers) for node in layer.nodes}
    produced_in_group = {out: group[node.name] for node in graph.node if node.name in group for out in node.output}
    rounded_weights = {}
    new_nodes = []
    for node in list(graph.node):
        index = group.get(node.name)
        if index is None:
            new_nodes.append(node)
            continue
        flag = flag_name(index)
        for position, name in enumerate(node.input):
            if (name not in is_float or position in FLOAT32_ONLY_INPUTS.get(node.op_type, ())
                    or produced_in_group.get(name) == index):
                continue  # not float, float32 by the spec, or already rounded by this group's output switch
            out = f"{name}/switch_{index}"
            if name in initializers:  # weights: rounded once here, clipped to fp16's range as the fp16 pass does
                if name not in rounded_weights:
                    values = numpy_helper.to_array(initializers[name])
                    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
                    rounded_weights[name] = numpy_helper.from_array(half, f"{name}/fp16")
                new_nodes.append(_switch(flag, [], f"{name}/fp16", name, out))
            else:
                new_nodes.append(_switch(flag, _round_to_fp16(name), name, name, out))
            node.input[position] = out
        new_nodes.append(node)
        for position, name in enumerate(node.output):
            if name in is_float:
                raw = f"{name}/fp32"
                node.output[position] = raw
                new_nodes.append(_switch(flag, _round_to_fp16(raw), raw, raw, name))
    graph.initializer.extend(rounded_weights.values())
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]  # renamed tensors: let ONNX Runtime infer the shapes again
    _add_flag_inputs(graph, len(layers))
    return model


def flags(count: int, low: set[int]) -> dict[str, np.ndarray]:
    """The feed that lowers the layers whose indices are in ``low`` (all others stay high)."""
    return {flag_name(i): np.array(i in low) for i in range(count)}
