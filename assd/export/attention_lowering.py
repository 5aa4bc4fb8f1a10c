"""ONNX ``Attention`` nodes (``assd export --attention-op``) lowered back to MatMul -> Softmax -> MatMul.

TensorRT cannot build ASSD's ``Attention`` nodes: its ONNX parser has no ``Attention`` importer before
10.14 (the 10.14 parser release notes: "Added support for the Attention operator"), and from 10.14 it
maps the node to ``IAttention``, whose query, key and value share one head size ("key and value follow
the same convention", "Output has the same shape ... as the query input": include/NvInfer.h,
``INetworkDefinition::addAttention`` / ``IAttention``), while ASSD's value has C channels and its
query/key C/8. ``assd build-engine`` therefore rewrites every such node as the chain the default export
writes, computing the same function (ONNX ``Attention``, opset 23, no mask, not causal, no softcap):

    scores = MatMul(Q, Transpose(K, last two axes))      [B, H, S, S]
    scores = Mul(scores, scale)                          (omitted when scale == 1, as for ASSD)
    output = MatMul(Softmax(scores, axis=-1), V)         [B, H, S, Dv]

which TensorRT fuses itself; ``assd.export.fp16`` and the INT8 pass find it like any exported chain.
A node using anything else (mask, past key/value, causal, softcap, extra outputs, 3-D inputs) is
refused with a one-line error: re-export without ``--attention-op``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from assd.errors import UserError

DEFAULTS = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _refusal(node: onnx.NodeProto, tensors: dict[str, tuple[int, int]]) -> str | None:
    """Why ``node`` cannot be lowered exactly, or None."""
    attributes = _attributes(node)
    if len(node.input) > 3 and any(node.input[3:]):
        return "it has a mask or past key/value inputs"
    if len([name for name in node.output if name]) != 1:
        return "it has more than one output"
    for name, default in DEFAULTS.items():
        if attributes.get(name, default) != default:
            return f"{name}={attributes[name]}"
    if "q_num_heads" in attributes or "kv_num_heads" in attributes:
        return "its inputs are 3-D (q_num_heads/kv_num_heads)"
    if "scale" not in attributes:
        return "no scale attribute (the default, 1/sqrt(D), is not what assd exports)"
    if any(tensors.get(name, (4, 0))[0] != 4 for name in node.input[:3]):
        return "its inputs are not 4-D [B, H, S, D]"
    return None


def lower_attention(model: onnx.ModelProto, source: str = "model") -> int:
    """Replace every ``Attention`` node of ``model`` (in place) by the chain in the module docstring;
    returns how many were replaced."""
    graph = model.graph
    if not any(node.op_type == "Attention" for node in graph.node):
        return 0
    tensors = _tensor_info(model)
    lowered, nodes = 0, []
    for node in graph.node:
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        reason = _refusal(node, tensors)
        if reason is not None:
            raise UserError(f"{source}: Attention node {node.name!r} cannot be lowered for TensorRT ({reason}): "
                            "re-export without --attention-op")
        nodes.extend(_chain(graph, node, lowered, tensors.get(node.input[0], (4, onnx.TensorProto.FLOAT))[1]))
        lowered += 1
    if lowered:
        del graph.node[:]
        graph.node.extend(nodes)
    return lowered


def _chain(graph: onnx.GraphProto, node: onnx.NodeProto, index: int, elem_type: int) -> list[onnx.NodeProto]:
    query, key, value = node.input[:3]
    prefix = f"{node.name or 'attention'}/lowered{index}"
    key_t, scores, weights = f"{prefix}/key_t", f"{prefix}/scores", f"{prefix}/weights"
    chain = [helper.make_node("Transpose", [key], [key_t], name=f"{prefix}/Transpose", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", [query, key_t], [scores], name=f"{prefix}/MatMul_scores")]
    scale = _attributes(node)["scale"]
    if scale != 1.0:  # assd exports scale=1.0 (eq. 1 is unscaled); any other scale is applied as given
        scale_name, scaled = f"{prefix}/scale", f"{prefix}/scaled"
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        graph.initializer.append(numpy_helper.from_array(np.array(scale, dtype), scale_name))
        chain.append(helper.make_node("Mul", [scores, scale_name], [scaled], name=f"{prefix}/Mul_scale"))
        scores = scaled
    chain += [helper.make_node("Softmax", [scores], [weights], name=f"{prefix}/Softmax", axis=-1),
              helper.make_node("MatMul", [weights, value], [node.output[0]], name=f"{prefix}/MatMul_values")]
    return chain


def _tensor_info(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """(rank, element type) of every tensor ONNX shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    info = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            info[value.name] = (len(tensor_type.shape.dim), tensor_type.elem_type)
    return info
