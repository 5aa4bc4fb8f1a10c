"""``assd calibrate --target cpu`` (issue 24): ONNX Runtime's own QDQ graph for CPU runtimes.

On assd-mini: the graph has Q/DQ on Conv outputs, per-channel weights and ``assd.int8`` target ``cpu`` in its
metadata; ONNX Runtime fuses it into int8 kernels (``QLinearConv``), which it cannot do with the TensorRT
graph; it runs on ONNX Runtime and OpenVINO (skipped without the extra); on a tiny trained model its mAP is
within eval-engine's int8 tolerance of the checkpoint's on both; everything that would hand it to TensorRT
refuses it in one line (exit 2).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from train_helpers import recalibrate_batchnorm

from assd.calibration import quantize_int8
from assd.calibration.cpu_target import conv_weight_scales, int8_nodes, quantize_int8_cpu
from assd.cli import main
from assd.data.synthetic import SYNTHETIC_CLASSES, SyntheticDataset
from assd.errors import UserError
from assd.export import export_onnx
from assd.models import build_model, get_config
from assd.runtime.int8_target import INT8_KEY, int8_layout, read_int8_target
from assd.runtime.runners import open_runner

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed (pip install -e '.[openvino]')")
QUIET = {"echo": lambda _: None}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """assd-mini (seeded random weights): fp32, TensorRT-target and cpu-target int8 (8 synthetic images)."""
    folder = tmp_path_factory.mktemp("cpu_target")
    torch.manual_seed(0)
    model = build_model(get_config("assd-mini", class_names=SYNTHETIC_CLASSES)).eval()
    paths = {name: folder / f"mini.{name}.onnx" for name in ("fp32", "trt", "cpu")}
    export_onnx(model, paths["fp32"])
    cache = str(folder / "calib.json")
    quantize_int8(str(paths["fp32"]), str(paths["trt"]), "synthetic:8", num_images=8, method="max", cache_path=cache,
                  **QUIET)
    quantize_int8_cpu(str(paths["fp32"]), str(paths["cpu"]), "synthetic:8", num_images=8, method="max",
                      cache_path=cache, **QUIET)
    return paths


@pytest.fixture(scope="module")
def images():
    from assd.runtime.preprocess import preprocess

    dataset = SyntheticDataset(4, 500, train=False, input_size=256)
    return preprocess([dataset.load_image(i) for i in range(4)], get_config("assd-mini", class_names=SYNTHETIC_CLASSES))


def test_cpu_graph_quantizes_conv_outputs_with_per_channel_weights(graphs):
    model, trt = onnx.load(str(graphs["cpu"])), onnx.load(str(graphs["trt"]))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(int8_nodes(model, "Conv")) >= len(convs) - 4  # the attention units' q/k/v Convs may stay float
    # TensorRT's pattern: no Q on Conv outputs, but for the downsample Convs feeding a residual Add's quantized input
    assert len(int8_nodes(trt, "Conv")) < len(convs) // 4
    weights = {init.name: init for init in model.graph.initializer}
    scales = conv_weight_scales(model)
    assert scales and all(scale.ndim == 1 for scale in scales)  # per output channel
    assert {scale.size for scale in scales} == {w.dims[0] for w in weights.values() if w.data_type == onnx.TensorProto.INT8
                                                and len(w.dims) == 4}
    assert all(node.op_type != "Softmax" or "DequantizeLinear" not in node.input[0] for node in model.graph.node)


def test_metadata_says_target_and_per_channel(graphs):
    layout = int8_layout(onnx.load(str(graphs["cpu"]), load_external_data=False))
    assert layout.target == "cpu" and layout.format == "onnxruntime-qdq"
    assert layout.weights == "int8 symmetric per-channel" and layout.activations.startswith("uint8")
    assert read_int8_target(graphs["cpu"]) == "cpu"
    assert read_int8_target(graphs["trt"]) == "tensorrt"  # calibrate's default graph says so too
    assert int8_layout(onnx.load(str(graphs["trt"]), load_external_data=False)).format == "tensorrt-explicit-qdq"
    assert read_int8_target(graphs["fp32"]) is None


def test_int8_graph_without_the_key_is_tensorrt_and_a_damaged_key_is_one_line(graphs, tmp_path):
    model = onnx.load(str(graphs["trt"]))
    kept = [prop for prop in model.metadata_props if prop.key != INT8_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "old.onnx")
    assert read_int8_target(tmp_path / "old.onnx") == "tensorrt"
    model.metadata_props.add(key=INT8_KEY, value=json.dumps({"target": "gpu"}))
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="damaged assd.int8 metadata"):
        read_int8_target(tmp_path / "bad.onnx")


def _optimized_ops(path, folder) -> set[str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(str(folder / "optimized.onnx")).graph.node}


def test_onnxruntime_fuses_the_cpu_graph_into_int8_kernels(graphs, tmp_path):
    assert "QLinearConv" in _optimized_ops(graphs["cpu"], tmp_path)
    assert "QLinearConv" not in _optimized_ops(graphs["trt"], tmp_path)  # why the cpu target exists


def _close_to_fp32(reference, outputs):
    for ref, out in zip(reference, outputs):
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.98


def test_cpu_graph_runs_on_onnxruntime_close_to_fp32(graphs, images):
    runner = open_runner(str(graphs["cpu"]), backend="onnxruntime")
    assert runner.precision == "int8"
    _close_to_fp32(open_runner(str(graphs["fp32"]), backend="onnxruntime").infer(images), runner.infer(images))


@needs_openvino
def test_cpu_graph_runs_on_openvino_close_to_fp32(graphs, images):
    runner = open_runner(str(graphs["cpu"]), backend="openvino")
    assert runner.precision == "int8" and runner.backend == "openvino"
    _close_to_fp32(open_runner(str(graphs["fp32"]), backend="onnxruntime").infer(images), runner.infer(images))


def _exit_2(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


def test_build_engine_refuses_the_cpu_graph(graphs, tmp_path, capsys):
    err = _exit_2(["build-engine", str(graphs["cpu"]), "-o", str(tmp_path / "mini.engine")], capsys)
    assert "calibrate --target cpu" in err and "--target tensorrt" in err
    assert not (tmp_path / "mini.engine").exists()


@pytest.mark.parametrize("command", [["eval-engine", "{cpu}", "--data", "synthetic:2"],
                                     ["bench", "{cpu}", "--iters", "1"],
                                     ["predict", "--model", "{cpu}", "x.png", "--out", "{out}"]])
def test_runners_refuse_the_cpu_graph_for_tensorrt(graphs, tmp_path, capsys, command):
    import cv2

    image = tmp_path / "x.png"
    cv2.imwrite(str(image), SyntheticDataset(1, 0, train=False, input_size=256).load_image(0)[:, :, ::-1])
    args = [arg.format(cpu=graphs["cpu"], out=tmp_path / "out") for arg in command]
    args = [str(image) if arg == "x.png" else arg for arg in args]
    err = _exit_2([*args, "--backend", "tensorrt"], capsys)
    assert "calibrate --target cpu" in err


def test_onnxruntime_tensorrt_provider_refuses_the_cpu_graph(graphs, monkeypatch):
    import onnxruntime as ort

    from assd.runtime.onnxruntime_runner import OnnxRuntimeRunner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # get past "needs a CUDA GPU"
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UserError, match="ONNX Runtime's TensorRT provider needs TensorRT's Q/DQ pattern"):
        OnnxRuntimeRunner(str(graphs["cpu"]), torch.device("cpu"), provider="tensorrt")


def test_calibrate_cli_writes_the_cpu_graph_and_refuses_the_gate(graphs, tmp_path, capsys):
    output = tmp_path / "cli.int8.onnx"
    main(["calibrate", str(graphs["fp32"]), "--target", "cpu", "--calib-data", "synthetic:4", "--calib-images", "4",
          "--calib-method", "max", "--parity-images", "2", "-o", str(output)])
    out = capsys.readouterr().out
    assert "ONNX Runtime's QDQ format" in out and "int8 vs fp32" in out
    assert read_int8_target(output) == "cpu"
    for option in (["--max-delta-map", "1"], ["--calib-method", "auto"]):
        err = _exit_2(["calibrate", str(graphs["fp32"]), "--target", "cpu", "--calib-data", "synthetic:4",
                       "-o", str(tmp_path / "gated.onnx"), *option], capsys)
        assert "--target cpu" in err and "TensorRT-target graph only" in err
    assert not (tmp_path / "gated.onnx").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, cpu-target int8 graph) of a tiny assd-mini (128 px) trained until it detects its 16 images."""
    from assd.models.checkpoint import save_checkpoint
    from assd.train import TrainOptions, train

    folder = tmp_path_factory.mktemp("trained")
    samples = SyntheticDataset(16, 0, train=False, input_size=128)
    cfg = dataclasses.replace(get_config("assd-mini"), input_size=128)
    result = train(TrainOptions(model=cfg, data=samples, out=folder / "run", recipe="quick", epochs=20,
                                milestones=(17,), warmup_epochs=1, lr=2e-3, batch_size=8, workers=0,
                                device="cpu", progress=False, tensorboard=False))
    from assd.models.checkpoint import load_model

    model = load_model(str(result.last_checkpoint))
    recalibrate_batchnorm(model, torch.stack([samples[i][0] for i in range(16)]))
    checkpoint, fp32, int8 = folder / "mini.pt", folder / "mini.onnx", folder / "mini.int8cpu.onnx"
    save_checkpoint(model, checkpoint)
    export_onnx(model, fp32)
    quantize_int8_cpu(str(fp32), str(int8), "synthetic:16", num_images=16, method="max", **QUIET)
    return checkpoint, int8


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_trained_model_cpu_graph_passes_eval_engine(trained, backend):
    from assd.evaluation.engine_parity import eval_engine

    checkpoint, int8 = trained
    parity = eval_engine(str(int8), "synthetic:16", reference=str(checkpoint), device="cpu", progress=False,
                         runner_options={"backend": backend, "threads": 1})
    assert parity.reference.mAP > 0.5  # the model detects its images: Δ mAP measures something
    assert parity.precision == "int8" and parity.tolerance_points == 1.0 and parity.passed, parity.delta_points
