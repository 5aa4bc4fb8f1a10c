"""The OpenVINO runner (extra ``openvino``) and the ``--backend`` convention: assd-mini's fp32, fp16 and
int8 graphs on OpenVINO against ONNX Runtime fp32, the CLI's backend choice and its bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from assd.calibration import quantize_int8
from assd.cli import main
from assd.data import SyntheticDataset
from assd.data.synthetic import SYNTHETIC_CLASSES
from assd.errors import UserError
from assd.export import export_onnx
from assd.export.fp16 import write_fp16_onnx
from assd.export.parity import match_detections
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint
from assd.runtime.postprocess import PostprocessConfig, detect
from assd.runtime.runners import open_runner

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed (pip install -e '.[openvino]')")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """assd-mini (seeded random weights) as checkpoint, fp32, fp16 and int8 (calibrated on 8 synthetic images)."""
    folder = tmp_path_factory.mktemp("openvino")
    torch.manual_seed(0)
    model = build_model(get_config("assd-mini", class_names=SYNTHETIC_CLASSES)).eval()
    paths = {name: folder / f"mini.{name}" for name in ("pt", "onnx", "fp16.onnx", "int8.onnx")}
    save_checkpoint(model, paths["pt"])
    export_onnx(model, paths["onnx"])
    write_fp16_onnx(str(paths["onnx"]), str(paths["fp16.onnx"]))
    quantize_int8(str(paths["onnx"]), str(paths["int8.onnx"]), "synthetic:8", num_images=8, method="max",
                  echo=lambda _: None)
    return paths


@pytest.fixture(scope="module")
def images(graphs):
    """Four synthetic images, pre-processed for assd-mini: [4, 3, 256, 256] float32."""
    from assd.runtime.preprocess import preprocess

    dataset = SyntheticDataset(4, 500, train=False, input_size=256)
    return preprocess([dataset.load_image(i) for i in range(4)], get_config("assd-mini", class_names=SYNTHETIC_CLASSES))


def _agreement(reference, candidate, cfg) -> float:
    """Fraction of the reference outputs' detections (score > 0.01) the candidate reproduces (eval-engine's
    rule: same class, IoU >= 0.9)."""
    pp = PostprocessConfig()
    ref_dets, cand_dets = detect(*reference, cfg, pp), detect(*candidate, cfg, pp)
    matched = sum(match_detections(ref, cand)[0] for ref, cand in zip(ref_dets, cand_dets))
    total = sum(len(ref.scores) for ref in ref_dets)
    assert total > 0
    return matched / total


@needs_openvino
@pytest.mark.parametrize("name", ["onnx", "fp16.onnx"])
def test_float_graphs_match_onnxruntime(graphs, images, name):
    ort_runner = open_runner(str(graphs["onnx"]), backend="onnxruntime")
    ov_runner = open_runner(str(graphs[name]), backend="openvino")
    assert ov_runner.backend == "openvino" and ov_runner.precision == name.split(".")[0].replace("onnx", "fp32")
    assert ov_runner.cfg == ort_runner.cfg and ov_runner.postprocess == ort_runner.postprocess  # from metadata
    reference, outputs = ort_runner.infer(images), ov_runner.infer(images)
    tolerance = 1e-4 if name == "onnx" else 2e-2
    for ref, out in zip(reference, outputs):
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert (out - ref).abs().max() <= tolerance * ref.abs().max()
    assert _agreement(reference, outputs, ov_runner.cfg) >= (0.999 if name == "onnx" else 0.98)


@needs_openvino
def test_int8_graph_on_openvino_is_as_close_to_fp32_as_onnxruntimes_int8(graphs, images):
    """OpenVINO runs the Q/DQ graph with int8 kernels, ONNX Runtime simulates it in fp32: both approximate
    fp32 equally well (on random weights, where rounding flips are amplified most: docs/benchmarks.md)."""
    reference = open_runner(str(graphs["onnx"]), backend="onnxruntime").infer(images)
    ort_int8 = open_runner(str(graphs["int8.onnx"]), backend="onnxruntime").infer(images)
    ov_runner = open_runner(str(graphs["int8.onnx"]), backend="openvino")
    assert ov_runner.precision == "int8"
    ov_int8 = ov_runner.infer(images)
    for ref, ort_out, ov_out in zip(reference, ort_int8, ov_int8):
        assert torch.isfinite(ov_out).all()
        ort_error, ov_error = (ort_out - ref).abs().mean(), (ov_out - ref).abs().mean()
        assert ov_error <= 1.5 * ort_error + 1e-6
        assert np.corrcoef(ov_out.ravel(), ref.ravel())[0, 1] > 0.98


@needs_openvino
def test_eval_engine_on_openvino_reproduces_the_checkpoint(graphs):
    from assd.evaluation.engine_parity import eval_engine

    parity = eval_engine(str(graphs["onnx"]), "synthetic:4", reference=str(graphs["pt"]), device="cpu",
                         progress=False, runner_options={"backend": "openvino", "threads": 1})
    assert parity.backend == "openvino" and parity.passed
    assert parity.reference_detections > 0 and parity.agreement >= 0.999


@needs_openvino
def test_cli_runs_openvino_with_its_options(graphs, tmp_path, capsys):
    main(["bench", str(graphs["onnx"]), "--backend", "onnxruntime,openvino", "--iters", "1", "--warmup", "0",
          "--device", "cpu", "--threads", "1", "--performance-hint", "throughput",
          "--json", str(tmp_path / "bench.json")])
    import json

    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [row["backend"] for row in rows] == ["onnxruntime", "openvino"]
    capsys.readouterr()
    main(["predict", "--model", str(graphs["int8.onnx"]), "--backend", "openvino", str(_one_image(tmp_path)),
          "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "detections.json").exists()


def _one_image(tmp_path):
    import cv2

    path = tmp_path / "image.png"
    cv2.imwrite(str(path), SyntheticDataset(1, 0, train=False, input_size=256).load_image(0)[:, :, ::-1])
    return path


def test_bench_times_each_artifact_on_the_backends_that_run_it(graphs):
    from assd.bench.run import artifact_backends

    assert artifact_backends(str(graphs["onnx"]), ["onnxruntime", "openvino"]) == ["onnxruntime", "openvino"]
    assert artifact_backends(str(graphs["pt"]), ["onnxruntime", "openvino"]) == ["torch"]
    assert artifact_backends(str(graphs["onnx"]), ["auto", "onnxruntime"]) == ["onnxruntime"]
    assert artifact_backends(str(graphs["onnx"]), None) == ["onnxruntime"]
    everything = ["torch", "torch-compile", "onnxruntime", "openvino"]
    assert artifact_backends(str(graphs["pt"]), everything) == ["torch", "torch-compile"]
    assert artifact_backends(str(graphs["onnx"]), everything) == ["onnxruntime", "openvino"]


def test_torch_compile_is_a_backend_of_checkpoints(graphs):
    """``--backend torch-compile`` (bench: beside ``torch``, one interleaved run) compiles the checkpoint."""
    eager = open_runner(str(graphs["pt"]), backend="torch")
    compiled = open_runner(str(graphs["pt"]), backend="torch-compile")
    assert (eager.backend, compiled.backend) == ("torch", "torch-compile")
    assert eager.module is not compiled.module and hasattr(compiled.module, "_orig_mod")
    with pytest.raises(UserError, match="cannot run an ONNX graph"):
        open_runner(str(graphs["onnx"]), backend="torch-compile")


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "openvino"], "cannot run a checkpoint (it runs on torch or torch-compile)"),
    (["--backend", "tvm"], "--backend tvm: use auto, torch, torch-compile, onnxruntime, openvino, tensorrt"),
    (["--backend", "onnxruntime,openvino"], "runs the artifact on one backend"),
    (["--threads", "0"], "--threads"),
])
def test_bad_backend_options_are_one_line_exit_2(graphs, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(graphs["pt"]), "--data", "synthetic:2", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_openvino_is_one_line_with_the_install_command(graphs, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(UserError, match=r"needs OpenVINO, which is not installed: pip install 'assd\[openvino\]'"):
        open_runner(str(graphs["onnx"]), backend="openvino")
