"""Faithful fp16 previews and the fp16 range audit (issue 22, items 1 and 2).

* ONNX Runtime's CPU provider runs chains of "float16" ops in float32; ``assd.runtime.fp16_preview``
  rounds every float16 tensor as a strongly typed TensorRT engine stores it, so an intermediate beyond
  65504 gives inf/NaN in the preview as on the GPU.
* The engine stage's audit finds such tensors on images, keeps them float32, records them.
* L2Norm's chain stays float32; constants that underflow float16 are flushed, with a warning.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_tensorrt_build import fake_builder  # noqa: F401 - TensorRT faked on an 'L4' (fixture)
from train_helpers import recalibrate_batchnorm

from assd.calibration.fp16_range import FP16_MAX, audit_fp16_range, read_fp16_range
from assd.engine.build import CalibrationOptions
from assd.engine.precision_graph import compose_precision_graph
from assd.export import export_onnx
from assd.export.fp16 import convert_to_fp16, fp16_metadata, fp16_source_tensors, l2norm_nodes
from assd.models import build_model, get_config
from assd.runtime.fp16_preview import preview_session, rounding_graph
from assd.runtime.metadata import read_metadata, set_metadata
from assd.runtime.onnxruntime_runner import OnnxRuntimeRunner
from assd.utils import atomic_write_bytes

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
OUTLIER = 1e7  # activations of ~0.01-1 become ~1e5-1e7 > 65504


def _model(nodes, initializers, opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [2])],
                              [helper.make_tensor_value_info("y", FLOAT, [2])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _cpu(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_preview_overflows_where_a_strongly_typed_engine_would():
    # x -> fp16 -> *1000 -> *0.001 -> fp32. In float16, 100 * 1000 = 1e5 is inf; 1.0004 rounds to 1.0.
    half = [numpy_helper.from_array(np.array(v, np.float16), n) for n, v in (("a", 1000.0), ("b", 1e-3))]
    model = _model([helper.make_node("Cast", ["x"], ["h"], to=FLOAT16), helper.make_node("Mul", ["h", "a"], ["t"]),
                    helper.make_node("Mul", ["t", "b"], ["u"]), helper.make_node("Cast", ["u"], ["y"], to=FLOAT)], half)
    x = np.array([100.0, 1.0], np.float32)
    with np.errstate(over="ignore"):
        expected = (x.astype(np.float16) * np.float16(1000.0)) * np.float16(1e-3)  # numpy: float16 arithmetic
    assert np.isinf(expected[0]) and expected[1] == np.float16(1.0)
    (plain,) = _cpu(model).run(None, {"x": x})
    assert np.isfinite(plain).all()  # what ONNX Runtime alone shows (onnxruntime 1.31): the chain ran in fp32
    (preview,) = preview_session(model).run(None, {"x": x})
    np.testing.assert_array_equal(preview, expected.astype(np.float32))
    rounded = rounding_graph(model)
    assert not any(init.data_type == FLOAT16 for init in rounded.graph.initializer)
    assert [n.op_type for n in rounded.graph.node].count("Cast") == 2 * 4  # a rounding pair per fp16 tensor


def _outlier_channel(model: onnx.ModelProto, factor: float = OUTLIER) -> tuple[onnx.ModelProto, list[str]]:
    """A Conv -> Relu -> Conv chain with one channel scaled by ``factor`` after the first Conv and by
    1/factor in the second: the float32 function is unchanged (ReLU commutes with a positive scale), the
    two tensors in between reach ~factor. Returns (model, [conv output, relu output])."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, inits = model.graph, {i.name: i for i in model.graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for first in (n for n in graph.node if n.op_type == "Conv"):
        relu = readers.get(first.output[0], [])
        if len(relu) != 1 or relu[0].op_type != "Relu":
            continue
        second = readers.get(relu[0].output[0], [])
        if len(second) == 1 and second[0].op_type == "Conv" and second[0].input[1] in inits:
            for name in first.input[1:]:  # weight (and bias)
                values = numpy_helper.to_array(inits[name]).copy()
                values[0] *= factor
                inits[name].CopyFrom(numpy_helper.from_array(values, name))
            weight = numpy_helper.to_array(inits[second[0].input[1]]).copy()
            weight[:, 0] /= factor
            inits[second[0].input[1]].CopyFrom(numpy_helper.from_array(weight, second[0].input[1]))
            return model, [first.output[0], relu[0].output[0]]
    raise AssertionError("no Conv -> Relu -> Conv chain")


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory):
    """(fp32 ONNX with an outlier channel, the two tensors it drives beyond 65504)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("outlier")
    export_onnx(build_model(get_config("assd-mini")).eval(), folder / "plain.onnx")
    model, tensors = _outlier_channel(onnx.load(str(folder / "plain.onnx")))
    atomic_write_bytes(folder / "mini.onnx", model.SerializeToString())
    return folder / "mini.onnx", tensors


def _images(count: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(size=(count, 3, 256, 256)).astype(np.float32))


def test_runner_preview_of_an_overflowing_fp16_graph_gives_inf_and_the_audit_keeps_it_fp32(outlier_onnx, tmp_path):
    fp32_path, tensors = outlier_onnx
    images = _images()
    reference = OnnxRuntimeRunner(str(fp32_path), torch.device("cpu")).infer(images)
    assert all(torch.isfinite(out).all() for out in reference)

    # The plain conversion: the scaled channel is float16 and overflows in the engine, so in the preview.
    fp32 = onnx.load(str(fp32_path))
    naive = convert_to_fp16(fp32)
    assert set(tensors) <= fp16_source_tensors(naive)
    set_metadata(naive, fp16_metadata(read_metadata(fp32_path)))
    atomic_write_bytes(tmp_path / "naive.fp16.onnx", naive.SerializeToString())
    preview = OnnxRuntimeRunner(str(tmp_path / "naive.fp16.onnx"), torch.device("cpu")).infer(images)
    assert not all(torch.isfinite(out).all() for out in preview)

    # The engine stage's graph: the audit names both tensors, keeps them fp32 and records them.
    lines = []
    graph = compose_precision_graph(str(fp32_path), str(tmp_path / "mini.engine"), read_metadata(fp32_path), "fp16",
                                    CalibrationOptions(data="synthetic:4", images=4), echo=lines.append)
    kept = read_fp16_range(graph)
    assert set(tensors) <= set(kept) and all(value > FP16_MAX for value in kept.values()), kept
    assert any(tensors[0] in line for line in lines)
    assert not set(tensors) & fp16_source_tensors(onnx.load(graph))
    loc, conf = OnnxRuntimeRunner(graph, torch.device("cpu")).infer(images)
    for out, ref in zip((loc, conf), reference):
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() <= 2e-2 * max(1.0, float(ref.abs().max()))


def test_audit_reports_underflowing_tensors_too():
    tiny = numpy_helper.from_array(np.array(1e-9, np.float32), "tiny")
    model = _model([helper.make_node("Mul", ["x", "tiny"], ["small"]), helper.make_node("Div", ["small", "tiny"], ["y"])],
                   [tiny])
    model.graph.input[0].name = "images"  # the audit feeds "images", as every assd graph's input is named
    for node in model.graph.node:
        node.input[:] = ["images" if name == "x" else name for name in node.input]
    audit = audit_fp16_range(model, {"small", "y"}, [np.array([3.0, 1.0], np.float32)], source="test")
    assert set(audit.underflow) == {"small"} and not audit.overflow
    assert audit.kept_fp32 == ["small"]


def _l2norm_model() -> onnx.ModelProto:
    """``y = 20 * x / max(||x||_2, 1e-12)`` over axis 1, as the torch exporter writes SSD's L2Norm."""
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
             numpy_helper.from_array(np.array(20.0, np.float32), "scale")]
    nodes = [helper.make_node("ReduceL2", ["x", "axes"], ["norm"], keepdims=1),
             helper.make_node("Clip", ["norm", "eps"], ["clamped"]),
             helper.make_node("Div", ["x", "clamped"], ["unit"]),
             helper.make_node("Mul", ["unit", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "l2", [helper.make_tensor_value_info("x", FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_l2norm_stays_fp32_so_an_all_zero_feature_gives_zero_not_nan():
    model = _l2norm_model()
    assert [n.op_type for n in l2norm_nodes(model.graph)] == ["ReduceL2", "Clip", "Div"]
    zeros = np.zeros((1, 4), np.float32)
    (converted,) = preview_session(convert_to_fp16(model)).run(None, {"x": zeros})
    assert np.array_equal(converted, zeros)
    # Before: only ReduceL2 float32, the Clip in float16 with its epsilon rounded to 0 -> 0/0.
    old = convert_to_fp16(model, block=[n for n in model.graph.node if n.op_type == "ReduceL2"])
    eps = next(i for i in old.graph.initializer if i.name == "eps")
    assert numpy_helper.to_array(eps) > 0  # now flushed to fp16's smallest subnormal instead of 0
    eps.CopyFrom(numpy_helper.from_array(np.array(0, np.float16), "eps"))  # what the old conversion wrote
    (before,) = preview_session(old).run(None, {"x": zeros})
    assert np.isnan(before).all()


def test_constants_that_underflow_or_overflow_fp16_are_flushed_or_clipped_with_a_warning():
    inits = [numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
             numpy_helper.from_array(np.array(1e6, np.float32), "big")]
    model = _model([helper.make_node("Add", ["x", "eps"], ["t"]), helper.make_node("Min", ["t", "big"], ["y"])], inits)
    notes = []
    converted = convert_to_fp16(model, notes=notes)
    values = {i.name: float(numpy_helper.to_array(i)) for i in converted.graph.initializer}
    assert values["eps"] == float(np.finfo(np.float16).smallest_subnormal) and values["big"] == FP16_MAX
    assert any("eps" in note and "flushed" in note for note in notes)
    assert any("big" in note and "clipped" in note for note in notes)


def test_a_premade_fp16_graph_that_overflows_is_refused_naming_the_tensor(outlier_onnx, tmp_path):
    from assd.errors import UserError
    from assd.export.fp16 import write_fp16_onnx

    fp32_path, tensors = outlier_onnx
    fp16_path = tmp_path / "mini.fp16.onnx"
    write_fp16_onnx(str(fp32_path), str(fp16_path), echo=lambda _: None)
    with pytest.raises(UserError, match=tensors[0]) as error:
        compose_precision_graph(str(fp16_path), str(tmp_path / "mini.engine"), read_metadata(fp16_path), "fp16",
                                CalibrationOptions(data="synthetic:2", images=2), echo=lambda _: None)
    assert "--fp16" in str(error.value) and not (tmp_path / "mini.fp16.fp16.onnx").exists()


def test_debug_precision_reports_the_fp16_range_audit(outlier_onnx):
    from assd.data import parse_data_spec
    from assd.precision.debugger import report_fp16_range
    from assd.precision.evaluator import EvalImages

    fp32_path, tensors = outlier_onnx
    lines = []
    audit = report_fp16_range(onnx.load(str(fp32_path)), read_metadata(fp32_path),
                              EvalImages(parse_data_spec("synthetic:2"), 2), "synthetic:2", echo=lines.append)
    assert set(tensors) <= set(audit.overflow)
    assert "build-engine --fp16 keeps in float32" in lines[0] and any(tensors[1] in line for line in lines[1:])


@pytest.mark.slow
def test_audit_names_the_overflowing_tensors_of_random_weight_assd321(tmp_path):
    """Full size: random-weight assd321's head outputs reach ~1e5 (issue 22); the audit must name them."""
    torch.manual_seed(0)
    fp32_path = tmp_path / "assd321.onnx"
    export_onnx(build_model(get_config("assd321")).eval(), fp32_path)
    lines = []
    graph = compose_precision_graph(str(fp32_path), str(tmp_path / "assd321.engine"), read_metadata(fp32_path),
                                    "fp16", CalibrationOptions(data="synthetic:1", images=1), echo=lines.append)
    kept = read_fp16_range(graph)
    assert kept and max(kept.values()) > FP16_MAX, lines
    fp32 = onnx.load(str(fp32_path))
    heads = {n.output[0] for n in fp32.graph.node if n.op_type == "Conv" and n.input[1].startswith("conf_heads.")}
    assert heads & set(kept), (sorted(kept)[:5], lines[:3])
    assert not set(kept) & fp16_source_tensors(onnx.load(graph))


@pytest.mark.slow
def test_faithful_fp16_preview_of_a_trained_assd_mini_still_agrees(tmp_path):
    """The rounding preview changes numbers only where fp16 really rounds: a trained model's fp16 graph
    (composed by the engine stage) keeps its mAP and its detections."""
    import dataclasses

    from assd.data.synthetic import SyntheticDataset
    from assd.evaluation.engine_parity import eval_engine
    from assd.train import TrainOptions, train

    samples = SyntheticDataset(8, 0, train=False, input_size=128)
    cfg = dataclasses.replace(get_config("assd-mini"), input_size=128)
    result = train(TrainOptions(model=cfg, data=samples, out=tmp_path / "run", recipe="quick", epochs=20,
                                milestones=(17,), warmup_epochs=1, lr=2e-3, batch_size=8, workers=0, device="cpu",
                                progress=False, tensorboard=False))
    from assd.models.checkpoint import load_model, save_checkpoint

    model = load_model(str(result.last_checkpoint))
    recalibrate_batchnorm(model, torch.stack([samples[i][0] for i in range(8)]))
    checkpoint, fp32_path = tmp_path / "trained.pt", tmp_path / "mini.onnx"
    save_checkpoint(model, checkpoint)
    export_onnx(model, fp32_path)
    graph = compose_precision_graph(str(fp32_path), str(tmp_path / "mini.engine"), read_metadata(fp32_path), "fp16",
                                    CalibrationOptions(data="synthetic:8", images=8), echo=lambda _: None)
    parity = eval_engine(graph, "synthetic:8", reference=str(checkpoint), tolerance=0.3, device="cpu",
                         progress=False)
    assert parity.reference.mAP > 0.5, parity.reference.mAP  # the model detects its images
    assert parity.passed and parity.agreement >= 0.9, (parity.delta_points, parity.agreement)


def test_the_engine_sidecar_records_the_tensors_the_audit_kept_fp32(outlier_onnx, fake_builder, tmp_path):  # noqa: F811
    from assd.engine.build import EngineOptions, build_engine
    from assd.runtime.engine_info import read_engine_info

    fp32_path, tensors = outlier_onnx
    engine = tmp_path / "mini.engine"
    build_engine(str(fp32_path), str(engine), EngineOptions(precision="fp16", calibration=CalibrationOptions(
        data="synthetic:2", images=2)), echo=lambda _: None)
    kept = read_engine_info(engine).fp16_range_kept
    assert set(tensors) <= set(kept) and kept == read_fp16_range(tmp_path / "mini.fp16.onnx")
