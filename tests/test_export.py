"""ONNX export: graph structure, metadata, parity with PyTorch, in-graph NMS, bad inputs."""

from __future__ import annotations

import collections
import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from assd.errors import UserError
from assd.export import export_onnx
from assd.export.fold import fold_bn_into_following_conv, fold_for_export
from assd.export.parity import match_detections
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint
from assd.runtime.metadata import read_metadata
from assd.runtime.postprocess import Detections, PostprocessConfig, postprocess
from assd.runtime.runners import OnnxRuntimeRunner, TorchRunner, open_runner


def _randomize_bn(model):
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def mini_model():
    return _randomize_bn(build_model(get_config("assd-mini", class_names=["a", "b", "c"])))


@pytest.fixture(scope="module")
def mini_onnx(mini_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "mini.onnx"
    export_onnx(mini_model, path)
    return path


def test_graph_keeps_one_attention_chain_per_map_and_folds_every_bn(mini_onnx):
    graph = onnx.load(str(mini_onnx)).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["Softmax"] == 6 and ops["MatMul"] == 12  # assd-mini has 6 maps
    assert ops["BatchNormalization"] == 0
    producers = {out: node for node in graph.node for out in node.output}
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        assert producers[softmax.input[0]].op_type == "MatMul"  # scores = q^T k feed the softmax
        consumers = [n for n in graph.node if softmax.output[0] in n.input]
        assert [n.op_type for n in consumers] == ["MatMul"]  # ... which weighs the values


def test_input_output_contract_and_dynamic_batch(mini_onnx):
    model = onnx.load(str(mini_onnx), load_external_data=False)
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    assert dims(model.graph.input[0]) == ["batch", 3, 256, 256]
    assert [o.name for o in model.graph.output] == ["loc", "conf"]
    assert dims(model.graph.output[1])[1:] == [6132, 4]


def test_metadata_round_trip(mini_onnx, mini_model):
    metadata = read_metadata(mini_onnx)
    assert metadata.model_config == mini_model.cfg
    assert metadata.precision == "fp32" and metadata.outputs == "raw" and metadata.batch == "dynamic"
    assert PostprocessConfig.from_dict(metadata.postprocess) == PostprocessConfig()
    props = {p.key: p.value for p in onnx.load(str(mini_onnx), load_external_data=False).metadata_props}
    assert json.loads(props["assd.class_names"]) == ["a", "b", "c"]


def test_onnxruntime_matches_pytorch(mini_onnx, mini_model):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 256, 256)
    onnx_loc, onnx_conf = OnnxRuntimeRunner(str(mini_onnx), torch.device("cpu")).infer(images)
    torch_loc, torch_conf = TorchRunner(mini_model, "mini", torch.device("cpu")).infer(images)
    torch.testing.assert_close(onnx_loc, torch_loc, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(onnx_conf, torch_conf, atol=2e-3, rtol=1e-3)


def test_fold_bn_into_following_conv_is_exact():
    torch.manual_seed(0)
    bn = _randomize_bn(torch.nn.BatchNorm2d(6))
    conv = torch.nn.Conv2d(6, 4, 1)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(fold_bn_into_following_conv(bn, conv)(x), conv(bn(x)), atol=1e-5, rtol=1e-5)


def test_folded_model_equals_original(mini_model):
    torch.manual_seed(2)
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for original, folded in zip(mini_model(images), fold_for_export(mini_model)(images)):
            # Folding reorders float sums: the error scales with the outputs' magnitude (unscaled attention).
            scale = float(original.abs().max())
            torch.testing.assert_close(folded, original, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


def test_with_postprocess_graph_gives_the_torch_detections(tmp_path):
    torch.manual_seed(3)
    mini_model = build_model(get_config("assd-mini", class_names=["a", "b", "c"])).eval()
    with torch.no_grad():  # unsaturated, distinct scores: a random net's softmax is otherwise 1.0 everywhere
        for head in mini_model.conf_heads:
            head.weight.mul_(0.02)
    path = tmp_path / "pp.onnx"
    pp = PostprocessConfig(max_detections=50)
    export_onnx(mini_model, path, with_postprocess=True, postprocess=pp.to_dict())
    import onnxruntime as ort

    torch.manual_seed(2)
    images = torch.randn(2, 3, 256, 256)
    boxes, scores, classes, count = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    assert boxes.shape == (2, 50, 4) and scores.shape == (2, 50) and classes.shape == (2, 50)
    with torch.no_grad():
        loc, conf = mini_model(images)
    expected = postprocess(loc, conf, mini_model.priors_cxcywh, mini_model.cfg.variances, pp)
    for index, dets in enumerate(expected):
        n = int(count[index])
        assert n == len(dets.scores)
        np.testing.assert_allclose(scores[index, :n], dets.scores, atol=1e-4)  # both sorted by score
        graph_dets = Detections(boxes=boxes[index, :n], scores=scores[index, :n], labels=classes[index, :n])
        matched, score_diff = match_detections(dets, graph_dets, iou_threshold=0.999)  # ties may swap order
        assert matched == n and score_diff < 1e-4
        assert (scores[index, n:] == 0).all() and (classes[index, n:] == 0).all()


def test_attention_op_needs_opset_23(mini_model, tmp_path):
    with pytest.raises(UserError, match="opset 23"):
        export_onnx(mini_model, tmp_path / "x.onnx", attention_op=True, opset=18)


def test_foreign_and_corrupt_onnx_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="not a readable ONNX file"):
        open_runner(str(corrupt))
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(UserError, match="no assd metadata"):
        open_runner(str(foreign))


def test_fixed_batch_artifact_refuses_larger_batches(mini_model, tmp_path):
    path = tmp_path / "b1.onnx"
    export_onnx(mini_model, path, batch=1)
    runner = open_runner(str(path))
    assert runner.max_batch == 1
    with pytest.raises(UserError, match="larger than this artifact accepts"):
        runner.infer(torch.zeros(2, 3, 256, 256))


def test_export_cli_prints_parity_on_real_images(voc_mini_root, tmp_path):
    checkpoint = tmp_path / "mini.pt"
    save_checkpoint(build_model("assd-mini"), checkpoint)
    out = tmp_path / "mini.onnx"
    images = voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    result = subprocess.run([sys.executable, "-m", "assd.cli", "export", "--onnx", str(checkpoint), "-o", str(out),
                             "--parity-images", str(images)], check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "parity on 4 images" in result.stdout and "parity OK" in result.stdout
    assert out.is_file()
    assert "random weights" not in result.stdout  # a checkpoint: detection agreement is binding


def test_export_of_a_preset_checks_raw_outputs_only(tmp_path):
    """Random weights tie scores at 1.0, so only the raw outputs are binding for a preset."""
    out = tmp_path / "preset.onnx"
    result = subprocess.run([sys.executable, "-m", "assd.cli", "export", "--onnx", "assd-mini", "-o", str(out)],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "note: random weights" in result.stdout and "parity OK" in result.stdout


def test_export_cli_bad_inputs(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "assd.cli", "export", *args], check=False, capture_output=True, text=True,
                              timeout=300)

    for args, needle in [(("--onnx", "nope", "-o", str(tmp_path / "a.onnx")), "neither a checkpoint"),
                         (("assd-mini", "-o", str(tmp_path / "a.onnx")), "--onnx"),
                         (("--onnx", "assd-mini", "-o", str(tmp_path / "a.onnx"), "--batch", "0"), "--batch 0")]:
        result = run(*args)
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a.onnx").exists()


def test_match_detections_matches_equal_zero_area_boxes():
    # Boxes clipped flat against the image edge have no area (IoU undefined): equal ones still match.
    flat = Detections(np.array([[1.0, 0.2, 1.0, 0.6], [0.1, 0.1, 0.3, 0.3]], np.float32),
                      np.array([0.9, 0.5], np.float32), np.array([1, 2]))
    assert match_detections(flat, flat) == (2, 0.0)
    moved = Detections(flat.boxes + np.float32(0.001), flat.scores, flat.labels)
    assert match_detections(flat, moved)[0] == 1  # the flat box moved: no match; the other one IoU 0.98


def test_match_detections_with_several_flat_boxes_of_one_class_and_duplicates():
    """Two flat boxes of one class made every IoU row NaN somewhere, and NaN wins torch's max: a model
    compared with itself reproduced 97.6 % of its detections. Duplicates pair with the nearest score."""
    boxes = np.array([[1.0, 0.0, 1.0, 0.5], [1.0, 0.5, 1.0, 0.9], [1.0, 0.0, 1.0, 0.5]], np.float32)
    dets = Detections(boxes, np.array([0.9, 0.5, 0.2], np.float32), np.array([3, 3, 3]))
    assert match_detections(dets, dets) == (3, 0.0)


def test_fixed_batch_larger_than_the_parity_images_is_checked_on_whole_batches(tmp_path):
    from assd.export.workflow import export_and_check

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_config("assd-mini"), input_size=64)).eval()
    save_checkpoint(model, tmp_path / "mini.pt")
    lines = []
    report = export_and_check(str(tmp_path / "mini.pt"), str(tmp_path / "b8.onnx"), batch=8, echo=lines.append)
    assert report.images == 8 and read_metadata(tmp_path / "b8.onnx").fixed_batch == 8  # 4 photos, cycled
    assert lines[-1] == "parity OK"
