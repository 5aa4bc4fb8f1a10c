"""build-engine's accuracy gate verifies the graph the engine is built from (issues 22 + 26, the merge gap).

The gate searches on fp32-based variants, but a strongly typed engine computes the graph the engine stage
composes (int8 Convs on an fp16 base, fp32 islands). These tests run a gated build against the fake
TensorRT builder (TensorRT 10 and 11 bindings' shapes, tests/fake_tensorrt.py) and check, on the CPU,
that the bytes the gate's verification ran are the bytes the builder parsed, that those bytes are the
composed graph (fp16 base, range audit recorded) and not the fp32-based one, and the files' names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import onnx
import pytest
import torch
from fake_tensorrt import FakeBuilder, FakeOnnxParser
from test_tensorrt_build import fake_builder  # noqa: F401 - the fixture

from assd.calibration.fp16_range import FP16_RANGE_KEY
from assd.data.synthetic import SYNTHETIC_CLASSES
from assd.engine.build import CalibrationOptions, EngineOptions, build_engine
from assd.engine.precision_graph import precision_graph_path
from assd.errors import UserError
from assd.export import export_onnx
from assd.export.onnx_export import check_and_serialize
from assd.models import build_model, get_config
from assd.precision import verify
from assd.precision.gate import GateRequest
from assd.runtime.engine_info import read_engine_info
from assd.runtime.fp16_preview import has_float16
from assd.runtime.metadata import metadata_from_model

SIZE, DATA = 96, "synthetic:4"


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_config("assd-mini"), input_size=SIZE, num_classes=len(SYNTHETIC_CLASSES) + 1,
                              class_names=SYNTHETIC_CLASSES)
    model = build_model(cfg).eval()
    with torch.no_grad():  # moderate logits: random ResNet-style stacks otherwise reach ~1e5
        for head in model.conf_heads:
            head.weight.mul_(0.05)
    path = tmp_path_factory.mktemp("gate") / "mini.onnx"
    export_onnx(model, path)
    return path


@pytest.fixture
def recorded(monkeypatch):
    """SHA-256s of the graphs the gate verifies (``Verifier.verify`` -> ``graph_detections``) and of the
    files the fake TensorRT parser reads, with the verified graphs themselves."""
    seen = {"verified": [], "models": [], "parsed": []}
    real_detections, real_parse = verify.graph_detections, FakeOnnxParser.parse_from_file

    def detections(model, dataset, metadata, *runner_options):
        seen["verified"].append(hashlib.sha256(check_and_serialize(model)).hexdigest())
        seen["models"].append(model)
        return real_detections(model, dataset, metadata, *runner_options)

    def parse(self, path):
        with open(path, "rb") as file:
            seen["parsed"].append(hashlib.sha256(file.read()).hexdigest())
        return real_parse(self, path)

    monkeypatch.setattr(verify, "graph_detections", detections)
    monkeypatch.setattr(FakeOnnxParser, "parse_from_file", parse)
    return seen


def _options(precision: str, **gate) -> EngineOptions:
    calibration = CalibrationOptions(data=DATA, images=4, method="max") if precision == "int8" else CalibrationOptions()
    return EngineOptions(precision=precision, batch="1", calibration=calibration,
                         gate=GateRequest(eval_data=DATA, eval_images=2, accept="point", **gate))


@pytest.mark.parametrize("version", ["10.16.1", "11.1.0"])
def test_gated_int8_build_hands_the_builder_the_very_graph_the_gate_verified(mini_onnx, fake_builder, recorded,  # noqa: F811
                                                                            tmp_path, version):
    from fake_tensorrt import fake_builder_module

    fake_builder["module"] = fake_builder_module(version)
    engine = tmp_path / "out" / "mini.int8.engine"
    engine.parent.mkdir()
    lines: list[str] = []
    info = build_engine(str(mini_onnx), str(engine), _options("int8", max_delta_map=100.0), echo=lines.append)

    graph = tmp_path / "out" / "mini.int8.onnx"
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    assert recorded["parsed"] == [digest]  # the builder read the gate's file, once
    assert recorded["verified"][-1] == digest  # ... which is byte for byte the graph the gate verified
    verified = recorded["models"][-1]  # and that graph is the composed one, not the fp32-based Q/DQ graph:
    assert has_float16(verified) and any(node.op_type == "QuantizeLinear" for node in verified.graph.node)
    assert any(prop.key == FP16_RANGE_KEY for prop in verified.metadata_props)
    assert metadata_from_model(verified).precision == "int8"
    # TensorRT 10 and 11: strongly typed, no precision builder flags: the graph's types are the engine's
    assert FakeBuilder.network.strongly_typed
    flags = FakeBuilder.trt.BuilderFlag
    assert not any(FakeBuilder.last.get_flag(getattr(flags, name)) for name in ("FP16", "INT8") if hasattr(flags, name))
    # the sidecar names the verified graph and its Δ
    sidecar = read_engine_info(engine)
    assert sidecar.onnx_sha256 == digest == sidecar.accuracy_gate["graph_sha256"] == info.accuracy_gate["graph_sha256"]
    assert sidecar.onnx_file == "mini.int8.onnx" == sidecar.accuracy_gate["graph"]
    gate = sidecar.accuracy_gate
    assert gate["verification"]["images"] == 4 and gate["delta_map_points"] == gate["verification"]["delta_map_points"]
    assert any(line.startswith(f"wrote the int8 graph {graph}: verified: Δ") for line in lines), lines
    assert f"built from {graph}; accuracy gate: mini.int8.onnx verified, Δ mAP" in lines[-1]
    # one graph, sensibly named: no second composition (mini.int8.int8.onnx)
    assert sorted(p.name for p in engine.parent.iterdir()) == ["mini.int8.engine", "mini.int8.engine.json",
                                                             "mini.int8.onnx"]


def test_gated_fp16_build_verifies_the_composed_graph_with_its_range_audit(mini_onnx, fake_builder, recorded,  # noqa: F811
                                                                          tmp_path):
    engine = tmp_path / "mini.fp16.engine"
    build_engine(str(mini_onnx), str(engine), _options("fp16", max_delta_map=100.0), echo=lambda _: None)
    graph = tmp_path / "mini.fp16.onnx"
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    assert recorded["parsed"] == [digest] == recorded["verified"][-1:]
    verified = recorded["models"][-1]  # the engine stage's fp16 graph (audited), not the gate's own conversion
    assert any(prop.key == FP16_RANGE_KEY for prop in verified.metadata_props)
    assert read_engine_info(engine).accuracy_gate["graph_sha256"] == digest


def test_a_gated_build_checks_every_output_before_the_gate_runs(mini_onnx, tmp_path, monkeypatch):
    from assd.precision import gate

    def expensive(*_args, **_kwargs):
        raise AssertionError("the gate started")

    monkeypatch.setattr(gate, "gate_graph", expensive)
    engine = tmp_path / "m.engine"
    graph = precision_graph_path(str(mini_onnx), str(engine), "int8")
    options = dataclasses.replace(_options("int8", max_delta_map=1.0), timing_cache=str(graph))
    with pytest.raises(UserError, match="--timing-cache"):
        build_engine(str(mini_onnx), str(engine), options, echo=lambda _: None)
    with pytest.raises(UserError, match="--max-delta-map / --keep-high: choose --int8 or --fp16"):
        build_engine(str(mini_onnx), str(engine), dataclasses.replace(_options("int8"), precision="fp32"),
                     echo=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_composed_graph_names_never_repeat_the_precision(tmp_path):
    models, out = tmp_path / "models", tmp_path / "out"
    assert precision_graph_path(str(models / "m.onnx"), str(out / "m.engine"), "int8") == out / "m.int8.onnx"
    # calibrate's (or a gate's) m.int8.onnx composed for an engine elsewhere: m.int8.onnx there
    assert precision_graph_path(str(models / "m.int8.onnx"), str(out / "e.engine"), "int8") == out / "m.int8.onnx"
    assert precision_graph_path(str(models / "m.fp16.onnx"), str(out / "e.engine"), "fp16") == out / "m.fp16.onnx"
    # ... and in its own folder (the demo's model.int8.onnx -> model.int8.engine): never onto the input
    assert (precision_graph_path(str(models / "m.int8.onnx"), str(models / "m.int8.engine"), "int8")
            == models / "m.int8.engine.onnx")


def test_a_sidecar_whose_accuracy_gate_is_not_an_object_is_damaged(tmp_path):
    from test_tensorrt import _info

    from assd.runtime.engine_info import EngineInfo

    data = _info().to_dict()
    assert EngineInfo.from_dict(json.loads(json.dumps(data))).accuracy_gate == {}
    with pytest.raises(UserError, match="accuracy_gate"):
        EngineInfo.from_dict({**data, "accuracy_gate": ["x"]})
    older = {key: value for key, value in data.items() if key != "accuracy_gate"}
    assert EngineInfo.from_dict(older).accuracy_gate == {}  # sidecars written before the field still load


def test_the_verified_graph_differs_from_the_fp32_based_graph_the_search_uses(mini_onnx):
    """What the test above guards: the fp32-based Q/DQ graph has no fp16 tensor, so a gate verifying it
    again would fail ``has_float16`` there."""
    from assd.calibration.quantize import quantize_int8

    folder = mini_onnx.parent / "fp32-based"
    folder.mkdir(exist_ok=True)
    quantize_int8(str(mini_onnx), str(folder / "mini.int8.onnx"), DATA, num_images=4, method="max", echo=lambda _: None)
    assert not has_float16(onnx.load(str(folder / "mini.int8.onnx")))


def test_a_graph_changed_between_the_gate_and_the_builder_is_not_built(mini_onnx, fake_builder, recorded,  # noqa: F811
                                                                      tmp_path, monkeypatch):
    from assd.precision import gate
    from assd.precision.gate import GateResult

    def gate_then_edit(onnx_path, output, precision, calibration, request, echo, finish):
        blob = (tmp_path / "verified.onnx").read_bytes()
        (tmp_path / output).write_bytes(blob + b" ")  # edited after verification (here: at once)
        return GateResult(output, precision, sha256=hashlib.sha256(blob).hexdigest(), delta_final=0.0)

    (tmp_path / "verified.onnx").write_bytes(mini_onnx.read_bytes())
    monkeypatch.setattr(gate, "gate_graph", gate_then_edit)
    engine = tmp_path / "out" / "m.engine"
    engine.parent.mkdir()
    with pytest.raises(UserError, match="changed after the accuracy gate verified it"):
        build_engine(str(mini_onnx), str(engine), _options("fp16", max_delta_map=1.0), echo=lambda _: None)
    assert recorded["parsed"] == [] and not engine.exists()
