"""FP16 and INT8 (Q/DQ) ONNX graphs: structure, numerics on real photos, the calibration cache, the CLI."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

import assd.calibration.quantize as quantize_module
from assd.calibration import quantize_int8
from assd.calibration.entropy import entropy_amax
from assd.calibration.run_set import CALIBRATION_RUN_KEY, graph_run_id
from assd.cli import main
from assd.data import read_rgb_image
from assd.errors import UserError
from assd.export import export_onnx
from assd.export.fp16 import attention_nodes, attention_score_nodes, convert_to_fp16, write_fp16_onnx
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint
from assd.runtime.metadata import read_metadata
from assd.runtime.preprocess import preprocess

FP16_MAX = 65504.0
VOC_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-mini"


@pytest.fixture(scope="module")
def mini_model():
    torch.manual_seed(0)
    return build_model(get_config("assd-mini")).eval()


@pytest.fixture(scope="module")
def fp32_onnx(mini_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "mini.onnx"
    export_onnx(mini_model, path)
    return path


@pytest.fixture(scope="module")
def fp16_onnx(fp32_onnx):
    path = fp32_onnx.with_name("mini.fp16.onnx")
    write_fp16_onnx(str(fp32_onnx), str(path))
    return path


@pytest.fixture
def voc_images_dir(voc_mini_root):
    return voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages"


@pytest.fixture
def voc_batch(voc_images_dir):
    """Six real photos, pre-processed for assd-mini: [6, 3, 256, 256] float32."""
    files = sorted(voc_images_dir.glob("*.jpg"))[10:16]
    cfg = get_config("assd-mini")
    return preprocess([read_rgb_image(str(f)) for f in files], cfg).numpy()


def _run(model_or_path, images: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def _producers(graph):
    return {output: node for node in graph.node for output in node.output}


# ----------------------------------------------------------------------------------------------- fp16
def test_fp16_graph_keeps_attention_scores_and_softmax_in_fp32(fp16_onnx):
    model = onnx.load(str(fp16_onnx))
    graph, producers = model.graph, _producers(model.graph)
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
    score_nodes = attention_score_nodes(graph)
    assert [n.op_type for n in score_nodes].count("Softmax") == 6
    for node in score_nodes:
        assert types[node.output[0]] == TensorProto.FLOAT, node.name
        if node.op_type == "MatMul":  # q^T and k arrive in fp16 and are cast up
            for name in node.input:
                assert producers[name].op_type == "Cast" and producers[name].attribute[0].i == TensorProto.FLOAT
        else:  # the weights go back to fp16 for ā v^T
            consumers = [n for n in graph.node if node.output[0] in n.input]
            assert [(c.op_type, c.attribute[0].i) for c in consumers] == [("Cast", TensorProto.FLOAT16)]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    initializer_types = collections.Counter(init.data_type for init in graph.initializer)
    assert initializer_types[TensorProto.FLOAT16] >= len(convs) and initializer_types[TensorProto.FLOAT] == 0
    assert [v.type.tensor_type.elem_type for v in graph.input] == [TensorProto.FLOAT]
    assert [v.type.tensor_type.elem_type for v in graph.output] == [TensorProto.FLOAT, TensorProto.FLOAT]
    onnx.checker.check_model(model, full_check=True)
    metadata = read_metadata(fp16_onnx)
    assert metadata.precision == "fp16" and metadata.model_config.name == "assd-mini"


def test_fp16_runs_on_real_images_close_to_fp32(fp32_onnx, fp16_onnx, voc_batch):
    reference, half = _run(fp32_onnx, voc_batch), _run(fp16_onnx, voc_batch)
    for name, ref, out in zip(("loc", "conf"), reference, half):
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert np.isfinite(out).all(), name
        diff = np.abs(out - ref)
        assert diff.max() < 0.05 and diff.mean() < 5e-3, (name, diff.max(), diff.mean())


def _scale_query_key_weights(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """Multiply the q and k projection weights of every attention unit (scores grow by factor**2)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    producers, initializers = _producers(model.graph), {i.name: i for i in model.graph.initializer}
    for matmul in (n for n in attention_score_nodes(model.graph) if n.op_type == "MatMul"):
        for name in matmul.input:
            node = producers[name]
            while node.op_type != "Conv":  # back through the Reshape/Transpose to the 1x1 projection
                node = producers[node.input[0]]
            weight = initializers[node.input[1]]
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * factor, weight.name))
    return model


def _score_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every attention score tensor added as an output of the type the graph gives it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for matmul in (n for n in attention_score_nodes(model.graph) if n.op_type == "MatMul"):
        model.graph.output.append(onnx.helper.make_tensor_value_info(matmul.output[0], types[matmul.output[0]], None))
    return model


def test_unscaled_attention_scores_overflow_fp16_unless_kept_in_fp32(fp32_onnx, voc_batch):
    # Scores x3600 (the magnitudes a trained model can reach): in an fp16-typed tensor they become inf.
    scaled = _scale_query_key_weights(onnx.load(str(fp32_onnx)), 60.0)
    reference_scores = _run(_score_outputs(scaled), voc_batch[:2])[2:]
    assert max(np.abs(s).max() for s in reference_scores) > FP16_MAX
    naive_scores = _run(_score_outputs(convert_to_fp16(scaled, block=[])), voc_batch[:2])[2:]
    assert any(s.dtype == np.float16 and not np.isfinite(s).all() for s in naive_scores)
    outputs = _run(_score_outputs(convert_to_fp16(scaled)), voc_batch[:2])
    for ref, scores in zip(reference_scores, outputs[2:]):
        assert scores.dtype == np.float32 and np.isfinite(scores).all()
        assert np.abs(scores - ref).max() <= 5e-3 * np.abs(ref).max()  # only q, k were rounded to fp16
    assert all(np.isfinite(out).all() for out in outputs[:2])


def test_fp16_conversion_refuses_non_fp32_input(fp16_onnx, tmp_path):
    with pytest.raises(UserError, match="fp16 graph"):
        write_fp16_onnx(str(fp16_onnx), str(tmp_path / "again.onnx"))
    assert not (tmp_path / "again.onnx").exists()


def test_export_cli_writes_fp16_graph_with_parity(mini_model, voc_images_dir, tmp_path, capsys):
    checkpoint = tmp_path / "mini.pt"
    save_checkpoint(mini_model, checkpoint)
    output = tmp_path / "mini.fp16.onnx"
    main(["export", str(checkpoint), "--onnx", "--precision", "fp16", "-o", str(output),
          "--parity-images", str(voc_images_dir)])
    printed = capsys.readouterr().out
    assert "fp16" in printed and "parity OK" in printed
    assert read_metadata(output).precision == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.fp16.onnx", "mini.pt"]  # no fp32 leftover


# ----------------------------------------------------------------------------------------------- int8
@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx):
    folder = VOC_MINI  # module scope: the voc_mini_root fixture is per test
    if not folder.exists():
        pytest.skip(f"real test data not found at {folder}")
    path = fp32_onnx.with_name("mini.int8.onnx")
    result = quantize_int8(str(fp32_onnx), str(path), f"voc:{folder}", num_images=6, method="percentile",
                           echo=lambda _: None, num_bins=512)
    return path, result


def test_qdq_graph_quantizes_every_conv_and_leaves_attention_in_float(int8_onnx):
    path, result = int8_onnx
    graph = onnx.load(str(path)).graph
    producers, initializers = _producers(graph), {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert result.quantized_nodes == len(convs) == 60
    for conv in convs:
        activation, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert activation.op_type == "DequantizeLinear" and producers[activation.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear"
        int8_weight = initializers[weight.input[0]]
        assert int8_weight.data_type == TensorProto.INT8
        scales = numpy_helper.to_array(initializers[weight.input[1]])
        assert scales.shape == (int8_weight.dims[0],)  # per output channel
        if len(conv.input) > 2:  # bias stays float
            assert initializers[conv.input[2]].data_type == TensorProto.FLOAT
    for node in graph.node:  # symmetric: every zero point is 0
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            assert not numpy_helper.to_array(initializers[node.input[2]]).any()
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    for node in attention_nodes(graph):  # 6 x (score MatMul, Softmax, weighting MatMul)
        assert all(producers[name].op_type not in ("DequantizeLinear", "QuantizeLinear")
                   for name in node.input if name in producers), node.name
        assert all(c.op_type != "QuantizeLinear" for c in consumers[node.output[0]]), node.name
    assert len(attention_nodes(graph)) == 18 == len(result.excluded_nodes)
    assert read_metadata(path).precision == "int8"


def test_int8_graph_runs_close_to_fp32_on_real_images(fp32_onnx, int8_onnx, voc_batch):
    reference, quantized = _run(fp32_onnx, voc_batch), _run(int8_onnx[0], voc_batch)
    for ref, out in zip(reference, quantized):
        assert np.isfinite(out).all()
        assert np.abs(out - ref).mean() < 0.1 * np.abs(ref).mean()
        assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_calibration_cache_is_reused_and_invalidated(fp32_onnx, voc_images_dir, tmp_path, monkeypatch):
    calls = []
    measure = quantize_module.measure_ranges

    def counting(*args, **kwargs):
        calls.append(args[2].num_bins)
        return measure(*args, **kwargs)

    monkeypatch.setattr(quantize_module, "measure_ranges", counting)
    cache, messages = tmp_path / "calib.json", []
    run = {"num_images": 3, "cache_path": str(cache), "echo": messages.append, "num_bins": 256}
    first = quantize_int8(str(fp32_onnx), str(tmp_path / "a.onnx"), str(voc_images_dir), method="max", **run)
    second = quantize_int8(str(fp32_onnx), str(tmp_path / "b.onnx"), str(voc_images_dir), method="max", **run)
    assert calls == [256] and not first.cache_reused and second.cache_reused
    assert any("reusing the ranges" in m for m in messages)
    graphs = [onnx.load(str(tmp_path / name)) for name in ("a.onnx", "b.onnx")]
    assert graphs[0].graph.SerializeToString() == graphs[1].graph.SerializeToString()  # the same scales
    runs = [graph_run_id(graph) for graph in graphs]  # two runs, one set of ranges: the first run's
    assert runs[0] != runs[1] and [graph_run_id(g, CALIBRATION_RUN_KEY) for g in graphs] == [runs[0]] * 2
    content = json.loads(cache.read_text())
    assert content["settings"]["num_bins"] == 256 and len(content["onnx_sha256"]) == 64
    assert set(content["ranges"]) == {"entropy", "percentile", "max"}  # one pass gives every method
    for ranges in content["ranges"].values():
        assert all(lo <= hi for lo, hi in ranges.values()) and "images" in ranges
    max_amax = max(abs(v) for v in content["ranges"]["max"]["images"])
    assert max(abs(v) for v in content["ranges"]["percentile"]["images"]) <= max_amax + 1e-6

    percentile = quantize_int8(str(fp32_onnx), str(tmp_path / "c.onnx"), str(voc_images_dir), method="percentile", **run)
    assert calls == [256] and percentile.cache_reused  # another method: same cache
    quantize_int8(str(fp32_onnx), str(tmp_path / "d.onnx"), str(voc_images_dir), method="percentile",
                  **{**run, "num_bins": 512})
    assert calls == [256, 512] and "other settings" in " ".join(messages)
    other = tmp_path / "other.onnx"  # another ONNX file (same metadata, different bytes): recomputed
    model = onnx.load(str(fp32_onnx))
    model.doc_string = "changed"
    onnx.save(model, str(other))
    seen = len(messages)
    quantize_int8(str(other), str(tmp_path / "e.onnx"), str(voc_images_dir), method="max", **{**run, "num_bins": 512})
    assert calls == [256, 512, 512] and "another ONNX file" in " ".join(messages[seen:])


def test_entropy_calibration_end_to_end(fp32_onnx, voc_images_dir, tmp_path):
    result = quantize_int8(str(fp32_onnx), str(tmp_path / "e.onnx"), str(voc_images_dir), num_images=2,
                           method="entropy", cache_path=str(tmp_path / "e.json"), echo=lambda _: None, num_bins=384)
    ranges = json.loads((tmp_path / "e.json").read_text())["ranges"]["entropy"]
    assert result.images_used == 2 and len(ranges) > 60
    assert all(np.isfinite([lo, hi]).all() and lo <= hi for lo, hi in ranges.values())


def test_entropy_threshold_clips_outliers_but_keeps_the_bulk():
    rng = np.random.default_rng(0)
    gaussian = np.abs(rng.normal(size=200_000))
    with_outliers = np.concatenate([gaussian, [40.0, 50.0]])  # two far outliers
    hist, edges = np.histogram(with_outliers, bins=2048)
    amax = entropy_amax(hist, edges)
    assert 3.0 < amax < 10.0  # the bulk (|x| <~ 4.5) kept, the outliers clipped
    uniform = rng.uniform(0, 1, size=200_000)
    hist, edges = np.histogram(uniform, bins=2048)
    assert entropy_amax(hist, edges) > 0.95  # nothing to gain from clipping a uniform distribution


def test_calibrate_cli_reports_parity_and_rejects_bad_input(fp32_onnx, fp16_onnx, voc_images_dir, tmp_path, capsys):
    output = tmp_path / "mini.int8.onnx"
    main(["calibrate", str(fp32_onnx), "--calib-data", str(voc_images_dir), "--calib-images", "2",
          "--calib-method", "max", "-o", str(output), "--parity-images", "2"])
    printed = capsys.readouterr().out
    assert "int8 vs fp32" in printed and "parity on 2 images" in printed
    assert read_metadata(output).precision == "int8"

    (tmp_path / "empty").mkdir()  # not tmp_path itself: -o may not go inside an input folder
    for args, message in [
        (["--calib-data", str(tmp_path / "missing")], "no such folder, and not a data spec"),
        (["--calib-data", str(tmp_path / "empty")], "no .jpg/.png/.bmp images"),
        (["--calib-data", str(voc_images_dir), "--calib-images", "0"], "--calib-images 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["calibrate", str(fp32_onnx), "-o", str(tmp_path / "bad.onnx"), *args])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error:") and message in error and "\n" not in error
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(fp16_onnx), "--calib-data", str(voc_images_dir), "-o", str(tmp_path / "bad.onnx")])
    assert exit_info.value.code == 2 and "the int8 graph is made from the fp32 export" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------------ switchable graphs (debugger)
def _exact_run(model: onnx.ModelProto, images: np.ndarray, feed: dict | None = None) -> list[np.ndarray]:
    """Outputs with ONNX Runtime's graph optimizations off: two graphs that compute the same thing give
    the same bits (with them on, kernels chosen per graph differ in the last bits, which int8 rounding
    can amplify)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["loc", "conf"], {"images": images, **(feed or {})})


def test_int8_switchable_graph_computes_exactly_the_kept_high_graphs(fp32_onnx, int8_onnx, voc_batch):
    from assd.calibration.placement import keep_layers_high, qdq_layers
    from assd.precision.switch import flags, int8_switchable

    fp32, qdq = onnx.load(str(fp32_onnx)), onnx.load(str(int8_onnx[0]))
    layers = qdq_layers(qdq, fp32)
    switchable = int8_switchable(qdq, fp32, layers)
    onnx.checker.check_model(switchable)
    images, everything = voc_batch[:2], set(range(len(layers)))
    with_residual = next(i for i, layer in enumerate(layers) if layer.residual)
    cases = [(everything, qdq), (set(), fp32),
             (everything - {with_residual}, keep_layers_high(qdq, fp32, [layers[with_residual].node])),
             ({0, 5}, keep_layers_high(qdq, fp32, [layer.node for i, layer in enumerate(layers) if i not in (0, 5)]))]
    for low, real in cases:
        for switched, expected in zip(_exact_run(switchable, images, flags(len(layers), low)), _exact_run(real, images)):
            np.testing.assert_array_equal(switched, expected)
    kept = keep_layers_high(qdq, fp32, [layers[with_residual].node])
    conv = next(n for n in kept.graph.node if n.name == layers[with_residual].node)
    assert list(conv.input[:2]) == [layers[with_residual].activation[1], layers[with_residual].weight[1]]
    add = next(n for n in kept.graph.node if n.name == layers[with_residual].residual[0])
    assert add.input[layers[with_residual].residual[1]] == layers[with_residual].residual[3]  # the float residual


def test_fp16_switchable_graph_matches_the_fp16_conversion(fp32_onnx, voc_batch):
    from assd.precision.layers import fp16_layers
    from assd.precision.switch import flags, fp16_switchable

    fp32 = onnx.load(str(fp32_onnx))
    layers = fp16_layers(fp32)
    assert [layer.name for layer in layers if layer.op_type == "MatMul"] == [f"attention.{k}.weighting" for k in range(6)]
    switchable = fp16_switchable(fp32, layers)
    images = voc_batch[:2]
    high = _exact_run(switchable, images, flags(len(layers), set()))
    for out, ref in zip(high, _exact_run(fp32, images)):
        np.testing.assert_array_equal(out, ref)
    low = _exact_run(switchable, images, flags(len(layers), set(range(len(layers)))))
    for out, ref, real in zip(low, _exact_run(fp32, images), _exact_run(convert_to_fp16(fp32), images)):
        emulated, converted = np.linalg.norm(out - ref), np.linalg.norm(real - ref)
        # fp16 rounding of the same size as the real conversion's (another realization of it), far below the
        # outputs' magnitude
        assert 0.3 * converted < emulated < 3 * converted and emulated < 1e-2 * np.linalg.norm(ref), (emulated, converted)
