"""Q/DQ placement on the full-size assd321 graph follows TensorRT's fusion rules (assd.calibration.placement).

The graph is exported once (random weights: placement does not depend on them) and quantized with
made-up ranges, so no calibration pass is needed.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from assd.calibration.paths import private_workdir
from assd.calibration.placement import fused_residual_adds
from assd.calibration.quantize import build_qdq_model, private_copy
from assd.export import export_onnx
from assd.export.fp16 import attention_nodes
from assd.models import build_model, get_config

pytestmark = pytest.mark.slow


def _float_tensor_names(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT}


@pytest.fixture(scope="module")
def assd321(tmp_path_factory):
    """(fp32 graph, Q/DQ graph) of assd321."""
    path = tmp_path_factory.mktemp("assd321") / "assd321.onnx"
    torch.manual_seed(0)
    export_onnx(build_model(get_config("assd321")).eval(), path)
    fp32 = onnx.load(str(path))
    ranges = {name: (-4.0, 4.0) for name in _float_tensor_names(fp32)}
    with private_workdir() as workdir:
        qdq = build_qdq_model(private_copy(path, workdir), ranges, workdir)
    return fp32, qdq


def _graph_maps(graph):
    producers = {out: node for node in graph.node for out in node.output}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return producers, consumers, {init.name: init for init in graph.initializer}


def test_every_conv_has_per_tensor_input_and_per_channel_weight_qdq(assd321):
    _fp32, qdq = assd321
    producers, _consumers, initializers = _graph_maps(qdq.graph)
    convs = [node for node in qdq.graph.node if node.op_type == "Conv"]
    assert len(convs) > 100  # ResNet101 backbone, extras, fusion, attention projections, heads
    for conv in convs:
        activation, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert activation.op_type == "DequantizeLinear" and producers[activation.input[0]].op_type == "QuantizeLinear"
        assert numpy_helper.to_array(initializers[activation.input[1]]).shape == ()  # per tensor
        assert weight.op_type == "DequantizeLinear" and initializers[weight.input[0]].data_type == TensorProto.INT8
        scales = numpy_helper.to_array(initializers[weight.input[1]])
        assert scales.shape == (initializers[weight.input[0]].dims[0],)  # per output channel
        assert len(conv.input) < 3 or initializers[conv.input[2]].data_type == TensorProto.FLOAT  # bias stays float
    for node in qdq.graph.node:  # symmetric int8: every zero point is an int8 zero
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = initializers[node.input[2]]
            assert zero.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero).any()


def test_residual_adds_fuse_into_their_conv(assd321):
    _fp32, qdq = assd321
    producers, consumers, _initializers = _graph_maps(qdq.graph)
    convs = {node.name for node in qdq.graph.node if node.op_type == "Conv"}
    fused = fused_residual_adds(qdq.graph, convs)
    assert len(fused) == 3 + 4 + 23 + 3  # every bottleneck block of ResNet101
    for conv_name, (add, residual_index) in fused.items():
        conv_side = add.input[1 - residual_index]
        assert producers[conv_side].name == conv_name  # the Conv's own output: no Q/DQ (it would split the fusion)
        residual = producers[add.input[residual_index]]
        assert residual.op_type == "DequantizeLinear" and producers[residual.input[0]].op_type == "QuantizeLinear"
    for node in qdq.graph.node:  # a Conv output is quantized only as the residual input of a fused Add
        if node.op_type == "QuantizeLinear" and getattr(producers.get(node.input[0]), "op_type", "") == "Conv":
            dequantized = consumers[node.output[0]][0].output[0]
            assert all(c.op_type == "Add" and c in [add for add, _ in fused.values()] for c in consumers[dequantized])


def test_only_weighted_ops_and_fused_residuals_read_dequantized_tensors(assd321):
    _fp32, qdq = assd321
    producers, consumers, _initializers = _graph_maps(qdq.graph)
    convs = {node.name for node in qdq.graph.node if node.op_type == "Conv"}
    residual_inputs = {(add.name, index) for add, index in fused_residual_adds(qdq.graph, convs).values()}
    for node in qdq.graph.node:
        for index, name in enumerate(node.input):
            if getattr(producers.get(name), "op_type", "") == "DequantizeLinear":
                assert node.op_type in ("Conv", "QuantizeLinear") or (node.name, index) in residual_inputs, node.name
    attention = attention_nodes(qdq.graph)
    assert len(attention) == 3 * 6  # score MatMul, Softmax, weighting MatMul per prediction map
    for node in attention:  # nothing quantized inside the attention score path
        assert all(getattr(producers.get(name), "op_type", "") not in ("DequantizeLinear", "QuantizeLinear")
                   for name in node.input), node.name
        assert all(c.op_type != "QuantizeLinear" for c in consumers[node.output[0]]), node.name


def test_qdq_graph_is_valid_and_runs(assd321):
    import onnxruntime as ort

    fp32, qdq = assd321
    onnx.checker.check_model(qdq)
    images = np.random.default_rng(0).uniform(-2, 2, size=(1, 3, 321, 321)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    outputs = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
               .run(["conf"], {"images": images})[0] for m in (fp32, qdq)]
    assert np.isfinite(outputs[1]).all() and outputs[1].shape == outputs[0].shape
