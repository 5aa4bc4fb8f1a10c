"""build-engine against a fake TensorRT builder, engine compatibility rules, versions, install hints and
ONNX Runtime's actual providers (issue 13 items 5, 8, 9, 10, 12, 13)."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import logging

import pytest
import torch
from fake_tensorrt import FakeBuilder, fake_builder_module
from test_tensorrt import _info, _tiny_assd_onnx

from assd.engine.build import EngineOptions, build_engine
from assd.errors import UserError
from assd.runtime import tensorrt_support
from assd.runtime.engine_info import check_build_target, check_compatible, parse_version, read_engine_info


@pytest.fixture
def fake_builder(monkeypatch):
    """TensorRT 'installed' as a fake builder on an 'L4' (sm_89); returns a setter for the version."""
    state = {"module": fake_builder_module()}
    real_find, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        importlib.machinery.ModuleSpec("tensorrt", None) if name == "tensorrt" else real_find(name, *a)))
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (
        state["module"] if name == "tensorrt" else real_import(name, *a)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state.get("cc", (8, 9)))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    FakeBuilder.refuse_profile = False
    return state


# ------------------------------------------------------------------------------------ 12: TF32
@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_off_unless_asked_and_the_sidecar_says_which(fake_builder, tmp_path, tf32):
    onnx_path = _tiny_assd_onnx(tmp_path / "tiny.onnx")
    engine = tmp_path / "tiny.engine"
    info = build_engine(str(onnx_path), str(engine), EngineOptions(tf32=tf32), echo=lambda _: None)
    assert FakeBuilder.last.get_flag(FakeBuilder.trt.BuilderFlag.TF32) is tf32
    assert info.tf32 is tf32 and read_engine_info(engine).tf32 is tf32
    assert FakeBuilder.last.profiles[0].shapes["images"] == ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))


# ------------------------------------------------------------------------------------ 5: builder results
def test_refused_optimization_profile_is_a_one_line_error_and_writes_nothing(fake_builder, tmp_path):
    onnx_path = _tiny_assd_onnx(tmp_path / "tiny.onnx")
    FakeBuilder.refuse_profile = True
    with pytest.raises(UserError, match="TensorRT refused the optimization profile"):
        build_engine(str(onnx_path), str(tmp_path / "tiny.engine"), EngineOptions(), echo=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


# ------------------------------------------------------------------------------------ 10: build targets
@pytest.mark.parametrize("version, cc, options, message", [
    ("10.8.0", (8, 9), EngineOptions(hardware_compat="same-cc"), "same-cc needs TensorRT 10.9 or newer"),
    ("10.16.1", (7, 5), EngineOptions(hardware_compat="ampere+"), "compute capability >= 8.0"),
    ("10.16.1", (7, 0), EngineOptions(hardware_compat="same-cc"), "compute capability >= 7.5"),
    ("8.6.1", (8, 9), EngineOptions(), "TensorRT 8.6.1 is too old"),
])
def test_builds_tensorrt_or_the_gpu_cannot_do_are_refused_up_front(fake_builder, tmp_path, version, cc, options,
                                                                   message):
    fake_builder["module"] = fake_builder_module(version)
    fake_builder["cc"] = cc
    with pytest.raises(UserError, match=message.replace("+", r"\+").replace(".", r"\.")):
        build_engine(str(_tiny_assd_onnx(tmp_path / "tiny.onnx")), str(tmp_path / "t.engine"), options,
                     echo=lambda _: None)
    assert not (tmp_path / "t.engine").exists()


def test_build_target_rules():
    check_build_target("same-cc", False, "10.9.0", (7, 5), "T4")
    check_build_target("ampere+", True, "10.0.1", (8, 0), "A100")
    check_build_target("none", True, "11.1.0", (12, 0), "B200")


# ------------------------------------------------------------------------------------ 10: runtime rules
def test_version_compatible_engines_run_on_the_same_major_or_10_on_11_only():
    compatible = _info(version_compatible=True, tensorrt_version="10.3.0")
    for newer in ("10.3.0", "10.16.1.11", "11.1.0.106"):
        check_compatible(compatible, newer, (8, 0), "NVIDIA A100")
    with pytest.raises(UserError, match="TensorRT 12 cannot run TensorRT 10 engines"):
        check_compatible(compatible, "12.0.0", (8, 0), "NVIDIA A100")
    with pytest.raises(UserError, match="that version or newer"):
        check_compatible(compatible, "10.2.9", (8, 0), "NVIDIA A100")
    eleven = _info(version_compatible=True, tensorrt_version="11.0.0")
    check_compatible(eleven, "11.4.0.106", (8, 0), "NVIDIA A100")
    with pytest.raises(UserError, match="on that version or newer"):
        check_compatible(eleven, "10.16.1", (8, 0), "NVIDIA A100")


def test_hardware_compatibility_none_means_this_gpu_model():
    check_compatible(_info(), "10.3.0", (8, 0), "NVIDIA A100")
    with pytest.raises(UserError, match="built for the NVIDIA A100; this GPU is a NVIDIA A30 .*--hardware-compat same-cc"):
        check_compatible(_info(), "10.3.0", (8, 0), "NVIDIA A30")
    check_compatible(_info(hardware_compatibility="same-cc"), "10.3.0", (8, 0), "NVIDIA A30")
    with pytest.raises(UserError, match="compute capability 8.0"):
        check_compatible(_info(hardware_compatibility="same-cc"), "10.3.0", (8, 6), "NVIDIA A10")
    check_compatible(_info(hardware_compatibility="ampere+"), "10.3.0", (12, 0), "NVIDIA B200")


# ------------------------------------------------------------------------------------ 9: versions
@pytest.mark.parametrize("text, expected", [
    ("10.3.0.26", (10, 3, 0, 26)), ("10.3.0.post1", (10, 3, 0)), ("10.14.1.48.post1", (10, 14, 1, 48)),
    ("10.3.0+cuda12", (10, 3, 0)), ("11.1.0rc2", (11, 1, 0)), ("8.9", (8, 9)),
])
def test_version_parsing_takes_the_leading_numbers_only(text, expected):
    assert parse_version(text) == expected


def test_a_post_release_is_the_same_tensorrt_version():
    check_compatible(_info(tensorrt_version="10.3.0"), "10.3.0.post1", (8, 0), "NVIDIA A100")


@pytest.mark.parametrize("built, here", [("10.3.0", "10.3.0.26"), ("10.3.0.26", "10.3.0"), ("10.3", "10.3.0.26")])
@pytest.mark.parametrize("version_compatible", [False, True])
def test_the_build_number_does_not_make_another_tensorrt(built, here, version_compatible):
    """The tensorrt wheel says 10.3.0, its libraries and bindings 10.3.0.26: one release."""
    check_compatible(_info(tensorrt_version=built, version_compatible=version_compatible), here, (8, 0), "NVIDIA A100")
    if not version_compatible:
        with pytest.raises(UserError, match="this machine has TensorRT 10.3.1"):
            check_compatible(_info(tensorrt_version=built), "10.3.1", (8, 0), "NVIDIA A100")


# ------------------------------------------------------------------------------------ 13: extras
@pytest.mark.parametrize("cuda, extra", [("12.8", "tensorrt-cu12"), ("13.0", "tensorrt-cu13")])
def test_install_hint_names_the_extra_for_torchs_cuda_major(monkeypatch, cuda, extra):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    assert f"pip install -e '.[{extra}]'" in tensorrt_support.install_hint()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "tensorrt-cu12" in tensorrt_support.install_hint() and "CPU-only" in tensorrt_support.install_hint()


def test_pyproject_offers_one_tensorrt_extra_per_cuda_major():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for name in tensorrt_support.EXTRAS.values():
        line = next(line for line in text.splitlines() if line.startswith(f"{name} = "))
        assert f'["{name}>=10' in line, line
    block = text[text.index("tensorrt-cu12 = "):text.index("tensorrt-cu13 = ")]
    assert '"onnxruntime-gpu>=1.22,<1.27;' in block  # 1.26: the last CUDA 12 build on PyPI
    block = text[text.index("tensorrt-cu13 = "):]
    assert '"onnxruntime-gpu>=1.27;' in block.split("]")[0]  # 1.27+: CUDA 13 builds


# ------------------------------------------------------------------------------------ 8: ORT providers
def test_onnxruntime_runner_reports_the_provider_it_actually_uses(monkeypatch, tmp_path, caplog):
    import onnxruntime as ort

    from assd.runtime.onnxruntime_runner import (
        OnnxRuntimeRunner,
        requested_providers,
        tensorrt_cache_dir,
        tensorrt_options,
    )

    assert requested_providers("tensorrt") == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               "CPUExecutionProvider"]
    assert requested_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    asked = {}
    real_session = ort.InferenceSession

    def session(path, sess_options=None, providers=None):  # TensorRT EP failed to load: ORT falls back quietly
        asked["providers"] = providers
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: requested_providers("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ASSD_ORT_TRT_CACHE", str(tmp_path / "trt-cache"))
    with caplog.at_level(logging.WARNING, logger="assd.runtime"):
        runner = OnnxRuntimeRunner(str(_tiny_assd_onnx(tmp_path / "t.onnx")), torch.device("cuda"), provider="tensorrt")
    (name, options), *rest = asked["providers"]
    assert [name, *rest] == requested_providers("tensorrt")
    cache_dir = tensorrt_cache_dir(tmp_path / "t.onnx")
    assert cache_dir.parent == tmp_path / "trt-cache" and cache_dir.is_dir()
    assert options == tensorrt_options(32, None, cache_dir)
    assert runner.backend == "onnxruntime" and runner.device.type == "cpu" and runner.providers == [
        "CPUExecutionProvider"]
    assert any("could not use TensorrtExecutionProvider" in r.getMessage() for r in caplog.records)
    loc, conf = runner.infer(torch.zeros(2, 3, 32, 32))
    assert loc.shape == (2, 108, 4) and conf.shape == (2, 108, 3)  # the tiny graph has its real anchors


def test_sidecar_of_another_format_version_is_refused(tmp_path):
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "old.engine.json").write_text(json.dumps({**_info().to_dict(), "version": 1}))
    with pytest.raises(UserError, match="sidecar version 1 is not supported"):
        read_engine_info(engine)


def test_onnxruntime_tensorrt_provider_gets_caches_and_the_profile(tmp_path):
    from assd.runtime.onnxruntime_runner import tensorrt_options

    dynamic = tensorrt_options(300, None, tmp_path)
    assert dynamic == {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path),
                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path),
                       "trt_profile_min_shapes": "images:1x3x300x300", "trt_profile_opt_shapes": "images:8x3x300x300",
                       "trt_profile_max_shapes": "images:32x3x300x300"}
    fixed = tensorrt_options(512, 4, tmp_path)
    assert {fixed[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")} == {"images:4x3x512x512"}


def test_a_provider_onnxruntime_cannot_load_is_not_reported_as_used(monkeypatch, tmp_path, caplog):
    """No mock of the session: this onnxruntime-gpu lists CUDA among its available providers, yet on a
    machine without a usable CUDA its session runs on the CPU; the runner says so and reports the CPU."""
    import onnxruntime as ort

    from assd.runtime.onnxruntime_runner import OnnxRuntimeRunner

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider compiled in")
    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here: the CUDA provider would load")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # ask for CUDA as on a GPU machine
    with caplog.at_level(logging.WARNING, logger="assd.runtime"):
        runner = OnnxRuntimeRunner(str(_tiny_assd_onnx(tmp_path / "t.onnx")), torch.device("cuda"), provider="cuda")
    assert runner.providers == ["CPUExecutionProvider"] and runner.backend == "onnxruntime"
    assert any("could not use CUDAExecutionProvider and runs on CPUExecutionProvider" in r.getMessage()
               for r in caplog.records)


def test_calibration_says_which_provider_its_session_really_uses(tmp_path):
    import onnxruntime as ort

    from assd.calibration.quantize import _say_provider

    if "CUDAExecutionProvider" not in ort.get_available_providers() or torch.cuda.is_available():
        pytest.skip("needs an onnxruntime-gpu whose CUDA provider cannot load (a machine without CUDA)")
    session = ort.InferenceSession(str(_tiny_assd_onnx(tmp_path / "t.onnx")),
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    said = []
    _say_provider(session, "CUDAExecutionProvider", said.append)
    assert said[0].startswith("calibration runs on ONNX Runtime's CPUExecutionProvider: CUDAExecutionProvider does "
                              "not load here")
