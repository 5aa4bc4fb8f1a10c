"""The graphs build-engine hands to TensorRT, checked with ONNX Runtime on a CPU (issue 13 items 6 and 7).

* ``--attention-op`` exports: their ``Attention`` nodes are lowered to MatMul -> Softmax -> MatMul
  (TensorRT's IAttention needs equal Q/K/V head sizes) and compute the same numbers.
* ``--with-postprocess`` graphs: the NMS candidates are capped (TensorRT's NMS sees at most 5000 boxes
  per image, its TopK takes K below 3840: assd caps at 3000) and the capped graph gives the torch post-processing's detections
  even where the cap decides which candidates enter NMS.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from assd.engine.build import EngineOptions, build_engine
from assd.errors import UserError
from assd.export import export_onnx
from assd.export.attention_lowering import lower_attention
from assd.export.nms_graph import append_postprocess
from assd.export.parity import match_detections
from assd.models import build_model, get_config
from assd.models.assd import priors_for
from assd.runtime.metadata import read_metadata
from assd.runtime.postprocess import MAX_NMS_CANDIDATES, Detections, PostprocessConfig, postprocess


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------ 6: Attention lowering
@pytest.fixture(scope="module")
def attention_op_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(get_config("assd-mini", class_names=["a", "b", "c"])).eval()
    path = tmp_path_factory.mktemp("attention") / "mini.att.onnx"
    export_onnx(model, path, attention_op=True, opset=23)
    return path


def test_lowered_attention_graph_computes_the_same_numbers(attention_op_onnx):
    original = onnx.load(str(attention_op_onnx))
    lowered = onnx.load(str(attention_op_onnx))
    assert lower_attention(lowered) == 6
    kinds = [node.op_type for node in lowered.graph.node]
    assert "Attention" not in kinds and kinds.count("Softmax") == 6 and kinds.count("MatMul") == 12
    onnx.checker.check_model(lowered, full_check=True)
    images = np.random.default_rng(0).normal(size=(2, 3, 256, 256)).astype(np.float32)
    expected = _session(original).run(None, {"images": images})
    got = _session(lowered).run(None, {"images": images})
    for want, have in zip(expected, got):
        scale = max(1.0, float(np.abs(want).max()))
        assert np.abs(want - have).max() <= 1e-5 * scale


def test_build_engine_lowers_attention_before_saying_tensorrt_is_missing(attention_op_onnx, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a))
    with pytest.raises(UserError, match="not installed") as error:
        build_engine(str(attention_op_onnx), str(tmp_path / "mini.engine"), EngineOptions(), echo=lambda _: None)
    lowered = tmp_path / "mini.att.fp32.onnx"  # the composed graph beside the engine, named by its precision
    assert str(lowered) in str(error.value)
    graph = onnx.load(str(lowered))
    assert not any(node.op_type == "Attention" for node in graph.graph.node)
    assert [e.version for e in graph.opset_import if e.domain in ("", "ai.onnx")] == [18]  # not the export's 23
    assert read_metadata(lowered).model_config.name == "assd-mini"  # the metadata travels with it


def test_the_lowered_graph_never_replaces_the_timing_cache(attention_op_onnx, tmp_path):
    cache = tmp_path / "mini.att.fp32.onnx"  # named like the lowered graph the build would write
    cache.write_bytes(b"timing cache")
    with pytest.raises(UserError, match="timing-cache"):
        build_engine(str(attention_op_onnx), str(tmp_path / "mini.engine"), EngineOptions(timing_cache=str(cache)),
                     echo=lambda _: None)
    assert cache.read_bytes() == b"timing cache"


def _attention_graph(scale: float | None = 0.5, mask: bool = False, causal: int = 0) -> onnx.ModelProto:
    shapes = {"q": [2, 1, 6, 4], "k": [2, 1, 6, 4], "v": [2, 1, 6, 8]}
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]
    names = ["q", "k", "v"]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [6, 6]))
        names.append("mask")
    attributes = {"is_causal": causal} | ({"scale": scale} if scale is not None else {})
    node = helper.make_node("Attention", names, ["out"], name="att", **attributes)
    graph = helper.make_graph([node], "att", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def test_lowering_applies_a_scale_exactly_and_refuses_what_it_cannot_express():
    rng = np.random.default_rng(1)
    feed = {"q": rng.normal(size=(2, 1, 6, 4)), "k": rng.normal(size=(2, 1, 6, 4)), "v": rng.normal(size=(2, 1, 6, 8))}
    feed = {name: value.astype(np.float32) for name, value in feed.items()}
    original = _attention_graph()
    lowered = _attention_graph()
    assert lower_attention(lowered) == 1
    np.testing.assert_allclose(_session(lowered).run(None, feed)[0], _session(original).run(None, feed)[0],
                               rtol=1e-5, atol=1e-6)
    for graph, reason in [(_attention_graph(mask=True), "it has a mask"), (_attention_graph(causal=1), "is_causal=1"),
                          (_attention_graph(scale=None), "no scale attribute")]:
        with pytest.raises(UserError, match=f"cannot be lowered for TensorRT \\({reason}.*re-export without "
                                            "--attention-op"):
            lower_attention(graph, source="m.onnx")


# ------------------------------------------------------------------------------------ 7: capped NMS
def _postprocess_graph(cfg, pp: PostprocessConfig) -> onnx.ModelProto:
    """The --with-postprocess stage alone: inputs images (for the batch size), loc and conf."""
    anchors = len(priors_for(cfg))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, cfg.input_size, cfg.input_size]),
              helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", anchors, 4]),
              helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch", anchors, cfg.num_classes])]
    graph = helper.make_graph([], "pp", inputs, [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return append_postprocess(model, cfg, pp)


def test_capped_postprocess_graph_gives_the_torch_detections_where_the_cap_decides():
    cfg = dataclasses.replace(get_config("assd-mini", num_classes=31), input_size=128)
    pp = PostprocessConfig(score_threshold=0.01, top_k=200, max_detections=100)
    priors = priors_for(cfg)
    rng = np.random.default_rng(4)
    loc = (0.5 * rng.normal(size=(2, len(priors), 4))).astype(np.float32)
    conf = (0.5 * rng.normal(size=(2, len(priors), cfg.num_classes))).astype(np.float32)
    scores = torch.softmax(torch.from_numpy(conf), -1)[..., 1:]
    per_class = scores.transpose(1, 2).topk(min(pp.top_k, len(priors)), dim=2).values
    assert ((per_class > pp.score_threshold).sum(dim=(1, 2)) > MAX_NMS_CANDIDATES).all()  # the cap decides here

    model = _postprocess_graph(cfg, pp)
    nms = next(node for node in model.graph.node if node.op_type == "NonMaxSuppression")
    model.graph.output.append(helper.make_tensor_value_info(nms.input[1], TensorProto.FLOAT, None))
    images = np.zeros((2, 3, cfg.input_size, cfg.input_size), np.float32)
    boxes, out_scores, classes, count, nms_scores = _session(model).run(
        None, {"images": images, "loc": loc, "conf": conf})
    assert ((nms_scores > 0).sum(axis=(1, 2)) <= MAX_NMS_CANDIDATES).all()  # what TensorRT's NMS may see
    assert boxes.shape == (2, 100, 4) and out_scores.shape == (2, 100) and classes.shape == (2, 100)
    expected = postprocess(loc, conf, priors, cfg.variances, pp)
    for index, dets in enumerate(expected):
        n = int(count[index])
        assert n == len(dets) > 0
        graph_dets = Detections(boxes[index, :n], out_scores[index, :n], classes[index, :n])
        matched, score_diff = match_detections(dets, graph_dets, iou_threshold=0.999)
        assert matched == n and score_diff < 1e-5
    top_k_nodes = [node for node in model.graph.node if node.op_type == "TopK"]
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    # TensorRT's TopK: "up to 3840" (NvInfer.h), "less than 3840" (onnx-tensorrt): kept clearly below both
    assert max(int(constants[node.input[1]].max()) for node in top_k_nodes) == MAX_NMS_CANDIDATES <= 0.8 * 3840


def test_postprocess_graph_outputs_have_a_fixed_shape_for_every_batch():
    cfg = dataclasses.replace(get_config("assd-mini", num_classes=3), input_size=64)
    pp = PostprocessConfig(max_detections=7)
    session = _session(_postprocess_graph(cfg, pp))
    anchors = len(priors_for(cfg))
    for batch in (1, 3):
        outputs = session.run(None, {"images": np.zeros((batch, 3, 64, 64), np.float32),
                                     "loc": np.zeros((batch, anchors, 4), np.float32),
                                     "conf": np.zeros((batch, anchors, 3), np.float32)})
        assert [o.shape for o in outputs] == [(batch, 7, 4), (batch, 7), (batch, 7), (batch,)]


# ------------------------------------------------------------------------------------ 7: detections runners
def _tiny_network(cfg) -> onnx.ModelProto:
    """images [B, 3, S, S] -> loc [B, A, 4], conf [B, A, C] (pooled colour through 1x1 convs): the raw contract
    at the anchor count of ``cfg``, cheap to run."""
    anchors, classes = len(priors_for(cfg)), cfg.num_classes
    rng = np.random.default_rng(7)
    weights = {"w_loc": rng.normal(size=(anchors * 4, 3, 1, 1)), "w_conf": 3 * rng.normal(size=(anchors * classes, 3, 1, 1))}
    inits = [onnx.numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    inits += [onnx.numpy_helper.from_array(np.array(shape, np.int64), name)
              for name, shape in (("loc_shape", [0, anchors, 4]), ("conf_shape", [0, anchors, classes]))]
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
             helper.make_node("Conv", ["pooled", "w_loc"], ["loc_flat"]),
             helper.make_node("Conv", ["pooled", "w_conf"], ["conf_flat"]),
             helper.make_node("Reshape", ["loc_flat", "loc_shape"], ["loc"]),
             helper.make_node("Reshape", ["conf_flat", "conf_shape"], ["conf"])]
    size = cfg.input_size
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", anchors, 4]),
                               helper.make_tensor_value_info("conf", TensorProto.FLOAT, ["batch", anchors, classes])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


class _Images:
    """Three RGB images of different sizes, served like a dataset."""

    def __init__(self):
        self.images = [np.random.default_rng(i).integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8)
                       for i in range(3)]

    def __len__(self):
        return len(self.images)

    def load_image(self, index):
        return self.images[index]


def test_predict_with_a_detections_artifact_gives_the_raw_artifacts_detections(tmp_path):
    import assd
    from assd.evaluation.evaluate import predict_dataset
    from assd.runtime.metadata import OnnxMetadata, set_metadata
    from assd.runtime.runners import open_runner

    cfg = dataclasses.replace(get_config("assd-mini", class_names=["a", "b", "c"]), input_size=64)
    pp = PostprocessConfig(max_detections=20)
    for name, outputs in (("raw", "raw"), ("pp", "detections")):
        model = _tiny_network(cfg)
        if outputs == "detections":
            model = append_postprocess(model, cfg, pp)
        set_metadata(model, OnnxMetadata(cfg, pp.to_dict(), outputs, "fp32", "dynamic", assd.__version__))
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    raw, detections = open_runner(str(tmp_path / "raw.onnx")), open_runner(str(tmp_path / "pp.onnx"))
    assert detections.outputs == "detections"
    with pytest.raises(UserError, match="outputs detections, not \\(loc, conf\\)"):
        detections.infer(torch.zeros(1, 3, 64, 64))
    for requested in (pp, PostprocessConfig(score_threshold=0.3, max_detections=5)):
        expected = predict_dataset(raw.infer_outputs, _Images(), raw.cfg, requested, batch_size=2)
        got = predict_dataset(detections.infer_outputs, _Images(), detections.cfg, requested, batch_size=2)
        assert sum(len(d) for d in expected) > 0
        for want, have in zip(expected, got):
            assert len(want) == len(have)
            matched, score_diff = match_detections(want, have, iou_threshold=0.999)
            assert matched == len(want) and score_diff < 1e-5
    with pytest.raises(UserError, match="post-processing is part of the graph"):
        predict_dataset(detections.infer_outputs, _Images(), detections.cfg, PostprocessConfig(), batch_size=2)
