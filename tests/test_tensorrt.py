"""TensorRT: engine building and the engine runner.

Without a GPU / TensorRT (this CI) only the pure-Python parts and the error paths run: argument and
metadata checks, the precision graph written before the "TensorRT/GPU missing" error, the sidecar and
its compatibility checks, the runner's refusals. The tests marked ``tensorrt`` build and run real
engines (tests/test_tensorrt_gpu.py); conftest skips them with a message where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import assd
from assd.cli import main
from assd.engine.build import BatchRange, CalibrationOptions, EngineOptions, build_engine, check_options
from assd.errors import UserError
from assd.models import feature_sizes, get_config
from assd.runtime.engine_info import EngineInfo, check_compatible, read_engine_info, sidecar_path
from assd.runtime.metadata import OnnxMetadata, read_metadata, set_metadata
from assd.runtime.runners import open_runner
from assd.runtime.tensorrt_runner import TensorRTRunner

CFG = dataclasses.replace(get_config("assd-mini", num_classes=3), input_size=32)


def _tiny_assd_onnx(path, precision="fp32", batch="dynamic", assd_metadata=True):
    """A small graph with the assd I/O contract and metadata: images [B,3,32,32] -> loc [B,A,4], conf [B,A,3]
    (A = CFG's anchor count, which the metadata check compares with the graph)."""
    rng = np.random.default_rng(0)
    anchors = sum(h * w * n for (h, w), n in zip(feature_sizes(CFG), CFG.anchors_per_location))
    inits = [numpy_helper.from_array(rng.normal(size=(4 * anchors, 3, 1, 1)).astype(np.float32), "w_loc"),
             numpy_helper.from_array(rng.normal(size=(3 * anchors, 3, 1, 1)).astype(np.float32), "w_conf"),
             numpy_helper.from_array(np.zeros(3 * anchors, np.float32), "b_conf"),
             numpy_helper.from_array(np.array([0, anchors, -1], np.int64), "shape")]
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"], name="pool"),
             helper.make_node("Conv", ["pooled", "w_loc"], ["loc4"], name="conv_loc"),
             helper.make_node("Conv", ["pooled", "w_conf", "b_conf"], ["conf3"], name="conv_conf"),
             helper.make_node("Reshape", ["loc4", "shape"], ["loc"], name="reshape_loc"),
             helper.make_node("Reshape", ["conf3", "shape"], ["conf"], name="reshape_conf")]
    batch_dim = "batch" if batch == "dynamic" else int(batch)
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch_dim, 3, 32, 32])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, [batch_dim, anchors, 4]),
         helper.make_tensor_value_info("conf", TensorProto.FLOAT, [batch_dim, anchors, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    if assd_metadata:
        set_metadata(model, OnnxMetadata(model_config=CFG, postprocess={"score_threshold": 0.01, "nms_iou": 0.45,
                                                                        "top_k": 200, "max_detections": 200},
                                         outputs="raw", precision=precision, batch=str(batch),
                                         version=assd.__version__))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path):
    return _tiny_assd_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT is not installed (whatever this machine has)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a))


@pytest.fixture
def tensorrt_installed_but_never_imported(monkeypatch):
    """TensorRT looks installed; importing it fails the test (it must not be imported before the GPU check)."""
    real_find, real_import = importlib.util.find_spec, importlib.import_module

    def find_spec(name, *args):
        return importlib.machinery.ModuleSpec("tensorrt", None) if name == "tensorrt" else real_find(name, *args)

    def import_module(name, *args):
        assert name != "tensorrt", "tensorrt imported before the CUDA check"
        return real_import(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib, "import_module", import_module)


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error
    return error


# ------------------------------------------------------------------------------------ build-engine
def test_batch_range_parsing():
    assert BatchRange.parse(None) == BatchRange(1, 8, 32)
    assert BatchRange.parse(None, fixed_batch=4) == BatchRange(4, 4, 4)
    assert BatchRange.parse("1:4:16") == BatchRange(1, 4, 16)
    assert BatchRange.parse("8") == BatchRange(8, 8, 8)
    for bad in ("0:1:2", "4:2:8", "1:2", "a:b:c", "1:2:3:4"):
        with pytest.raises(UserError, match="--batch"):
            BatchRange.parse(bad)
    with pytest.raises(UserError, match="fixed batch of 4"):
        BatchRange.parse("1:4:8", fixed_batch=4)


@pytest.mark.parametrize("options, output, message", [
    (EngineOptions(), "model.onnx", "must end in .engine"),
    (EngineOptions(hardware_compat="turing+"), "m.engine", "--hardware-compat turing+"),
    (EngineOptions(workspace_gb=0), "m.engine", "--workspace 0"),
    (EngineOptions(precision="int8"), "m.engine", "needs calibration images"),
    (EngineOptions(precision="int8", calibration=CalibrationOptions(data="synthetic:2", method="mse")), "m.engine",
     "--calib-method mse"),
    (EngineOptions(batch="4:2:1"), "m.engine", "--batch 4:2:1"),
])
def test_build_engine_checks_arguments_before_tensorrt(tiny_onnx, tmp_path, options, output, message,
                                                       tensorrt_installed_but_never_imported):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("+", r"\+")):
        build_engine(str(tiny_onnx), str(tmp_path / output), options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_build_engine_refuses_foreign_and_lower_precision_sources(tmp_path):
    foreign = _tiny_assd_onnx(tmp_path / "foreign.onnx", assd_metadata=False)
    with pytest.raises(UserError, match="no assd metadata"):
        check_options(str(foreign), str(tmp_path / "m.engine"), EngineOptions())
    half = _tiny_assd_onnx(tmp_path / "half.onnx", precision="fp16")
    with pytest.raises(UserError, match="is a fp16 graph; --int8 starts from the fp32 export"):
        check_options(str(half), str(tmp_path / "m.engine"), EngineOptions(precision="int8"))
    metadata, precision, batch = check_options(str(half), str(tmp_path / "m.engine"), EngineOptions())
    assert precision == "fp16" and batch == BatchRange(1, 8, 32) and metadata.model_config == CFG
    fixed = _tiny_assd_onnx(tmp_path / "fixed.onnx", batch=2)
    assert check_options(str(fixed), str(tmp_path / "m.engine"), EngineOptions())[2] == BatchRange(2, 2, 2)
    with pytest.raises(UserError, match="ONNX file not found"):
        check_options(str(tmp_path / "missing.onnx"), str(tmp_path / "m.engine"), EngineOptions())


def test_build_engine_without_tensorrt_writes_the_fp16_graph_then_says_what_is_missing(
        tiny_onnx, tmp_path, capsys, no_tensorrt):
    engine = tmp_path / "out" / "tiny.engine"
    error = _one_line_error(capsys, ["build-engine", str(tiny_onnx), "--fp16", "-o", str(engine)])
    graph = tmp_path / "out" / "tiny.fp16.onnx"
    assert "TensorRT, which is not installed" in error and "pip install -e '.[tensorrt-cu" in error
    assert str(graph) in error  # says where the graph to take to a GPU machine is
    assert read_metadata(graph).precision == "fp16"
    assert not engine.exists() and not sidecar_path(engine).exists()


def test_build_engine_without_cuda_writes_the_int8_graph_and_never_imports_tensorrt(
        tiny_onnx, tmp_path, monkeypatch, tensorrt_installed_but_never_imported):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = EngineOptions(precision="int8", calibration=CalibrationOptions(data="synthetic:2", images=2,
                                                                             method="max"))
    with pytest.raises(UserError, match="needs a CUDA GPU; none is available") as error:
        build_engine(str(tiny_onnx), str(tmp_path / "tiny.engine"), options, echo=lambda _: None)
    graph = tmp_path / "tiny.int8.onnx"
    assert str(graph) in str(error.value) and read_metadata(graph).precision == "int8"
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(graph)).graph.node)
    assert not (tmp_path / "tiny.engine").exists()


def test_build_engine_fp32_source_without_precision_flag_builds_it_as_is(tiny_onnx, tmp_path, capsys, no_tensorrt):
    error = _one_line_error(capsys, ["build-engine", str(tiny_onnx), "-o", str(tmp_path / "t.engine")])
    assert f"the fp32 graph is {tiny_onnx}" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


# ------------------------------------------------------------------------------------ sidecar
def _info(**changes) -> EngineInfo:
    info = EngineInfo(tensorrt_version="10.3.0", gpu_name="NVIDIA A100", compute_capability="8.0", precision="fp16",
                      input_shape=[3, 32, 32], batch_min=1, batch_opt=4, batch_max=8, onnx_sha256="0" * 64,
                      onnx_file="tiny.fp16.onnx", model_config=json.loads(CFG.to_json()),
                      postprocess={"score_threshold": 0.01},
                      class_names=list(CFG.class_names))
    return dataclasses.replace(info, **changes)


def _write_engine(tmp_path, info: EngineInfo | None = None, name="tiny.engine"):
    engine = tmp_path / name
    engine.write_bytes(b"not a real plan")
    if info is not None:
        sidecar_path(engine).write_text(json.dumps(info.to_dict()))
    return engine


def test_sidecar_round_trip_and_damage(tmp_path):
    engine = _write_engine(tmp_path, _info())
    info = read_engine_info(engine)
    assert info == _info() and info.config == CFG
    with pytest.raises(UserError, match="engine file not found"):
        read_engine_info(tmp_path / "missing.engine")
    bare = _write_engine(tmp_path, name="bare.engine")
    with pytest.raises(UserError, match="no sidecar bare.engine.json"):
        read_engine_info(bare)
    sidecar_path(bare).write_text("{not json")
    with pytest.raises(UserError, match="unreadable engine sidecar"):
        read_engine_info(bare)
    sidecar_path(bare).write_text(json.dumps({**_info().to_dict(), "format": "other"}))
    with pytest.raises(UserError, match="not an assd engine sidecar"):
        read_engine_info(bare)
    sidecar_path(bare).write_text(json.dumps({**_info().to_dict(), "batch_max": None, "unknown_key": 1}))
    with pytest.raises(UserError, match="damaged engine sidecar"):
        read_engine_info(bare)
    sidecar_path(bare).write_text(json.dumps({**_info().to_dict(), "fp16_range_kept": ["conv1"]}))
    with pytest.raises(UserError, match="fp16_range_kept"):
        read_engine_info(bare)


def test_compatibility_rules():
    check_compatible(_info(), "10.3.0", (8, 0), "NVIDIA A100")
    with pytest.raises(UserError, match="built with TensorRT 10.3.0, this machine has TensorRT 10.4.0"):
        check_compatible(_info(), "10.4.0", (8, 0), "NVIDIA A100")
    check_compatible(_info(version_compatible=True), "11.1.0", (8, 0), "NVIDIA A100")  # newer runtime: fine
    with pytest.raises(UserError, match="that version or newer"):
        check_compatible(_info(version_compatible=True), "10.2.0", (8, 0), "NVIDIA A100")
    with pytest.raises(UserError, match=r"built for compute capability 8.0 \(NVIDIA A100\); this GPU \(L4\) is 8.9"):
        check_compatible(_info(), "10.3.0", (8, 9), "L4")
    check_compatible(_info(hardware_compatibility="ampere+"), "10.3.0", (9, 0), "H100")
    with pytest.raises(UserError, match="Ampere or newer"):
        check_compatible(_info(hardware_compatibility="ampere+"), "10.3.0", (7, 5), "T4")
    with pytest.raises(UserError, match="compute capability 8.0"):
        check_compatible(_info(hardware_compatibility="same-cc"), "10.3.0", (8, 6), "A10")


# ------------------------------------------------------------------------------------ runner
def test_runner_refuses_without_sidecar_tensorrt_or_gpu(tmp_path, monkeypatch, no_tensorrt):
    with pytest.raises(UserError, match="no sidecar"):
        TensorRTRunner(str(_write_engine(tmp_path, name="bare.engine")), "cuda")
    engine = _write_engine(tmp_path, _info())
    with pytest.raises(UserError, match=r"TensorRT, which is not installed: pip install -e '\.\[tensorrt-cu"):
        TensorRTRunner(str(engine), "cuda")


def test_runner_checks_gpu_before_importing_tensorrt(tmp_path, monkeypatch, tensorrt_installed_but_never_imported):
    engine = _write_engine(tmp_path, _info())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU; none is available"):
        TensorRTRunner(str(engine))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="run on a CUDA GPU, not on cpu: use --device cuda"):
        open_runner(str(engine), device="cpu")  # .engine dispatches to TensorRTRunner


def test_runner_refuses_an_engine_for_another_gpu_or_tensorrt_before_loading_it(tmp_path, monkeypatch):
    fake_tensorrt = types.SimpleNamespace(__version__="10.3.0")  # no Runtime: loading would fail loudly
    real_find, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        importlib.machinery.ModuleSpec("tensorrt", None) if name == "tensorrt" else real_find(name, *a)))
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (
        fake_tensorrt if name == "tensorrt" else real_import(name, *a)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    with pytest.raises(UserError, match=r"built for compute capability 8.0 \(NVIDIA A100\); this GPU \(NVIDIA L4\)"):
        TensorRTRunner(str(_write_engine(tmp_path, _info())), "cuda")
    fake_tensorrt.__version__ = "10.4.1"
    with pytest.raises(UserError, match="built with TensorRT 10.3.0, this machine has TensorRT 10.4.1"):
        TensorRTRunner(str(_write_engine(tmp_path, _info(compute_capability="8.9"))), "cuda")
