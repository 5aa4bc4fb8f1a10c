"""``assd debug-precision --backend openvino``: the search and the verification on the CPU target (issue 24).

Every candidate graph and the final verification must run on OpenVINO (the real graph, compiled as
``eval-engine --backend openvino`` compiles it), with the user's --threads / --performance-hint; the
report and recipe record the backend; bad backends are one line, exit 2, before any work. The plumbing
test runs everywhere (``open_runner`` recorded, OpenVINO stood in for by ONNX Runtime); the end-to-end
run needs the ``openvino`` extra and skips with a message without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import onnx
import pytest
import torch

from assd.cli import main
from assd.data.synthetic import SYNTHETIC_CLASSES
from assd.export import export_onnx
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed (pip install -e '.[openvino]')")
DATA = "synthetic:4"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """(checkpoint, fp32 ONNX) of a seeded random-weight assd-mini with the synthetic classes."""
    folder = tmp_path_factory.mktemp("dp_openvino")
    torch.manual_seed(0)
    model = build_model(get_config("assd-mini", class_names=SYNTHETIC_CLASSES)).eval()
    checkpoint, onnx_path = folder / "mini.pt", folder / "mini.onnx"
    save_checkpoint(model, checkpoint)
    export_onnx(model, onnx_path)
    return checkpoint, onnx_path


def _args(mini, out, *extra: str) -> list[str]:
    checkpoint, onnx_path = mini
    return ["debug-precision", str(onnx_path), "--data", DATA, "--reference", str(checkpoint), "--images", "2",
            "--calib-images", "4", "--method", "max", "-o", str(out / "final.onnx"), *extra]


def _sensitivity_of_first_layers(monkeypatch, count: int) -> None:
    """Cut the sensitivity pass to the first ``count`` layers: OpenVINO compiles one real graph per variant
    (about 2 s each for assd-mini here), and all 60 layers take 4-5 minutes, too long for a unit test; the
    whole pass on the demo's model is measured in docs/cpu.md."""
    from assd.precision import debugger

    real_analyze = debugger.analyze
    monkeypatch.setattr(debugger, "analyze", lambda evaluator, layers, both, progress: real_analyze(
        evaluator, layers[:count], both, progress))


def _one_line_exit_2(args: list[str], capsys, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and message in err, err


def test_bad_backends_are_one_line_before_any_work(mini, tmp_path, capsys, monkeypatch):
    from assd.precision import debugger
    from assd.runtime import openvino_runner

    def expensive(*_args, **_kwargs):
        raise AssertionError("the debugger started its work")

    monkeypatch.setattr(debugger, "load_fp32_source", expensive)
    _one_line_exit_2(_args(mini, tmp_path, "--backend", "tensorrt"), capsys,
                     "--backend tensorrt cannot run an ONNX graph (it runs on onnxruntime or openvino)")
    _one_line_exit_2(_args(mini, tmp_path, "--backend", "torch"), capsys, "--backend torch cannot run an ONNX graph")
    _one_line_exit_2(_args(mini, tmp_path, "--backend", "vulkan"), capsys, "--backend vulkan: use auto, torch")
    _one_line_exit_2(_args(mini, tmp_path, "--backend", "onnxruntime,openvino"), capsys, "name one")
    _one_line_exit_2(_args(mini, tmp_path, "--threads", "0"), capsys, "--threads")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError: the extra is absent
    _one_line_exit_2(_args(mini, tmp_path, "--backend", "openvino"), capsys,
                     "--backend openvino needs OpenVINO, which is not installed: pip install 'assd[openvino]'")
    monkeypatch.setattr(openvino_runner, "openvino_available", lambda: True)
    _one_line_exit_2(_args(mini, tmp_path, "--backend", "openvino", "--precision", "fp16"), capsys,
                     "--precision fp16 --backend openvino: OpenVINO's CPU plugin runs fp16 layers at its inference "
                     "precision")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_evaluation_and_the_verification_run_on_the_chosen_backend(mini, tmp_path, capsys, monkeypatch):
    """``open_runner`` recorded: each variant of the search (a real graph on OpenVINO: no switchable session)
    and each verification asks for openvino with the user's threads and hint. OpenVINO itself is stood in
    for by ONNX Runtime, so this runs without the extra; the sensitivity pass is cut to 3 layers to keep it
    fast (the real, whole run: the next test)."""
    from assd.runtime import openvino_runner, runners

    real_open, calls = runners.open_runner, []

    def recording_open(artifact, **kwargs):
        calls.append((artifact, dict(kwargs)))
        if kwargs.get("backend") == "openvino":
            kwargs = {**kwargs, "backend": "onnxruntime", "performance_hint": None}
        return real_open(artifact, **kwargs)

    monkeypatch.setattr(runners, "open_runner", recording_open)
    monkeypatch.setattr(openvino_runner, "openvino_available", lambda: True)
    _sensitivity_of_first_layers(monkeypatch, 3)
    main(_args(mini, tmp_path, "--backend", "openvino", "--threads", "1", "--performance-hint", "throughput",
               "--tolerance", "100"))  # random weights: the search's result is not the point here
    out = capsys.readouterr().out
    variants = [kwargs for artifact, kwargs in calls if artifact.endswith("variant.onnx")]
    verified = [kwargs for artifact, kwargs in calls if artifact.endswith("verified.onnx")]
    others = [artifact for artifact, kwargs in calls if not artifact.endswith(("variant.onnx", "verified.onnx"))]
    expected = {"backend": "openvino", "threads": 1, "performance_hint": "throughput"}
    assert len(variants) >= 3 * 2 + 1 and verified and others == [str(mini[0])] * 2  # the reference: its own runner
    assert all({key: kwargs.get(key) for key in expected} == expected for kwargs in variants + verified), calls
    report = json.loads((tmp_path / "final.precision" / "table.json").read_text())
    assert report["variants_evaluated"] == len(variants)  # every evaluation compiled one real graph
    assert report["backend"]["name"] == "openvino" and report["backend"]["performance_hint"] == "throughput"
    assert report["backend"]["threads"] == 1 and report["backend"]["kept_high_precision"] == "fp32"
    assert report["verification"]["backend"] == "openvino" and report["recipe"]["backend"]["name"] == "openvino"
    recipe = json.loads((tmp_path / "final.precision" / "recipe.json").read_text())
    assert recipe["backend"]["name"] == "openvino"
    assert "OpenVINO" in out and "final graph on OpenVINO:" in out, out
    assert "backend: OpenVINO" in (tmp_path / "final.precision" / "table.md").read_text()


@needs_openvino
def test_debug_precision_on_openvino_end_to_end_agrees_with_eval_engine(mini, tmp_path, capsys, monkeypatch):
    """The run on OpenVINO itself (calibration, sensitivities of the first 4 layers, the search, the
    verification, the report); its verification is what ``eval-engine --backend openvino`` measures on the
    same data, and the layers the graph keeps high are fp32 (no float16 anywhere)."""
    from assd.evaluation.engine_parity import eval_engine

    _sensitivity_of_first_layers(monkeypatch, 4)
    main(_args(mini, tmp_path, "--backend", "openvino", "--threads", "2", "--accept", "point", "--tolerance", "5"))
    out = capsys.readouterr().out
    assert "60 int8 layers; OpenVINO" in out and ", 2 threads" in out and "final graph on OpenVINO:" in out, out
    report = json.loads((tmp_path / "final.precision" / "table.json").read_text())
    assert report["backend"]["name"] == "openvino" and report["backend"]["version"]
    assert report["backend"]["threads"] == 2 and report["verification"]["backend"] == "openvino"
    assert report["variants_evaluated"] >= 2 * 4 + 1
    final = tmp_path / "final.onnx"
    parity = eval_engine(str(final), DATA, reference=str(mini[0]), progress=False, device="cpu",
                         runner_options={"backend": "openvino", "threads": 2})
    assert parity.backend == "openvino"
    assert parity.artifact.mAP == pytest.approx(report["verification"]["mAP"] / 100, abs=1e-12)
    assert parity.reference.mAP == pytest.approx(report["verification"]["reference_mAP"] / 100, abs=1e-12)
    graph = onnx.load(str(final))  # the CPU target's high precision is fp32: no float16 tensor anywhere
    assert not [init.name for init in graph.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16]
    assert not [n.name for n in graph.graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)]


def _conv_precisions(runner) -> set[str]:
    """The precisions OpenVINO's compiled model runs its Convolutions in (runtime model's rt_info)."""
    found = set()
    for op in runner.compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            found.add(info["runtimePrecision"].astype(str))
    return found


@needs_openvino
def test_openvino_runs_fp16_layers_in_fp32_so_the_cpu_target_keeps_layers_fp32(mini, tmp_path):
    """Why --precision fp16 is refused on OpenVINO and kept layers are fp32 (docs/cpu.md): with the runner's
    INFERENCE_PRECISION_HINT f32 an fp16 graph's Convs run in f32, while the int8 graph's run in i8."""
    from assd.calibration import quantize_int8
    from assd.export.fp16 import write_fp16_onnx
    from assd.runtime.runners import open_runner

    _checkpoint, onnx_path = mini
    fp16, int8 = tmp_path / "mini.fp16.onnx", tmp_path / "mini.int8.onnx"
    write_fp16_onnx(str(onnx_path), str(fp16))
    quantize_int8(str(onnx_path), str(int8), DATA, num_images=4, method="max", echo=lambda _: None)
    assert _conv_precisions(open_runner(str(fp16), backend="openvino")) == {"f32"}
    assert _conv_precisions(open_runner(str(int8), backend="openvino")) == {"i8"}
