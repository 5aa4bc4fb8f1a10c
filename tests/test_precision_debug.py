"""The precision debugger and the accuracy gate on a case where INT8 really hurts (issue 14's "done when").

A tiny assd-mini (128 px) is trained on 8 synthetic images until it detects them (BatchNorm statistics
recomputed afterwards, as after any short run), then one channel of ``backbone.layer3.0.conv1`` is
scaled by 500 and the next Conv's weights for it divided by 500: the network computes the same
function in fp32, but with ``max`` calibration the activation range of ``layer3.0.conv2``'s input is
500x too wide (every other channel rounds to 0) and the channel's weights vanish in their per-channel
int8 scale. Everything is measured with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import torch

from assd.calibration import load_recipe, read_kept_high
from assd.cli import main
from assd.data.synthetic import SyntheticDataset
from assd.evaluation.engine_parity import eval_engine
from assd.export import export_onnx
from assd.models import get_config
from assd.models.checkpoint import load_model, save_checkpoint
from assd.precision.debugger import DebugOptions, debug_precision
from assd.precision.search import ranked
from assd.precision.setup import CalibrationRequest
from assd.runtime.metadata import read_metadata

SIZE, IMAGES, DATA = 128, 8, "synthetic:8"
OUTLIER_LAYER = "backbone.layer3.0.conv2"
TOLERANCE = 1.0


def _recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Exact BatchNorm statistics of ``images`` (a short run leaves the running averages behind the weights)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def _inject_outlier_channel(block, channel: int = 0, factor: float = 500.0) -> None:
    """Scale one output channel of ``block.conv1`` (through its BatchNorm; ReLU commutes with a positive
    scale) and divide ``block.conv2``'s weights for that input channel: the fp32 function is unchanged."""
    with torch.no_grad():
        block.bn1.weight[channel] *= factor
        block.bn1.bias[channel] *= factor
        block.conv2.weight[:, channel] /= factor


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    """(checkpoint, fp32 ONNX, calibration cache path) of the trained assd-mini with the outlier channel; the
    cache (made by the debugger) saves the other commands the calibration pass."""
    from assd.train import TrainOptions, train

    folder = tmp_path_factory.mktemp("outlier")
    samples = SyntheticDataset(IMAGES, 0, train=False, input_size=SIZE)
    cfg = dataclasses.replace(get_config("assd-mini"), input_size=SIZE)
    result = train(TrainOptions(model=cfg, data=samples, out=folder / "run", recipe="quick", epochs=20,
                                milestones=(17,), warmup_epochs=1, lr=2e-3, batch_size=IMAGES, workers=0,
                                device="cpu", progress=False, tensorboard=False))
    model = load_model(str(result.last_checkpoint))
    _recalibrate_batchnorm(model, torch.stack([samples[i][0] for i in range(IMAGES)]))
    _inject_outlier_channel(model.backbone.layer3[0])
    checkpoint, onnx_path = folder / "outlier.pt", folder / "outlier.onnx"
    save_checkpoint(model, checkpoint)
    export_onnx(model, onnx_path)
    return checkpoint, onnx_path, folder / "calib.json"


@pytest.fixture(scope="module")
def debugged(outlier_model, tmp_path_factory):
    checkpoint, onnx_path, cache = outlier_model
    output = tmp_path_factory.mktemp("debugged") / "final.onnx"
    options = DebugOptions(onnx=str(onnx_path), data=DATA, reference=str(checkpoint), output=str(output),
                           precision="int8", tolerance=TOLERANCE, images=IMAGES,
                           calibration=CalibrationRequest(data=DATA, images=IMAGES, method="max", cache=str(cache)))
    return debug_precision(options, echo=lambda _: None), output


def test_debugger_finds_the_outlier_layer_and_keeps_few_layers_high(outlier_model, debugged, tmp_path):
    checkpoint, onnx_path, cache = outlier_model
    debug, output = debugged
    assert debug.setup.reference.mAP > 0.8  # the model really detects its images
    assert debug.all_low.delta_points < -10 * TOLERANCE  # plain INT8 collapses
    assert ranked(debug.sensitivities)[0].layer.name == OUTLIER_LAYER
    kept = [s.layer.name for s in debug.kept]
    assert OUTLIER_LAYER in kept and len(kept) <= 3, kept
    assert debug.met and abs(debug.final.delta_points) <= TOLERANCE
    assert read_kept_high(output) == kept and read_metadata(output).precision == "int8"

    # Measured again on its own, as a user would (assd eval-engine: ONNX Runtime CPU vs the PyTorch model),
    # against the plain INT8 graph with the same calibration.
    plain = tmp_path / "plain.int8.onnx"
    main(["calibrate", str(onnx_path), "--calib-data", DATA, "--calib-images", str(IMAGES), "--calib-method", "max",
          "--calib-cache", str(cache), "-o", str(plain), "--parity-images", "0"])
    final_parity = eval_engine(str(output), DATA, reference=str(checkpoint), tolerance=TOLERANCE, device="cpu",
                               progress=False)
    plain_parity = eval_engine(str(plain), DATA, reference=str(checkpoint), tolerance=TOLERANCE, device="cpu",
                               progress=False)
    assert final_parity.passed and not plain_parity.passed, (final_parity.delta_points, plain_parity.delta_points)


def test_debugger_report_has_table_plot_recipe_and_per_map_and_class_deltas(debugged):
    debug, _output = debugged
    files = debug.files
    table = Path(files["table"]).read_text()
    assert f"| 1 | `{OUTLIER_LAYER}` |" in table and "## Per prediction map" in table and "## Per class AP" in table
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(files["json"]).read_text())
    assert report["layers"][0]["layer"] == OUTLIER_LAYER and len(report["layers"]) == len(debug.setup.layers) == 60
    assert all(0 < layer["macs_share"] < 1 for layer in report["layers"])
    assert [entry["map"] for entry in report["all_low"]["per_map"]] == list(range(6))
    assert sum(e["conf_error"] for e in report["final"]["per_map"]) < sum(e["conf_error"] for e in report["all_low"]["per_map"])
    classes = {row["class"] for row in report["per_class"]}
    assert classes and classes <= {"circle", "square", "triangle", "cross"}
    recipe = load_recipe(files["recipe"])
    assert recipe.precision == "int8" and OUTLIER_LAYER in recipe.layer_names
    assert all(kept.why and kept.node for kept in recipe.kept_high)


def test_build_engine_gate_searches_before_tensorrt_and_records_kept_layers(outlier_model, tmp_path, capsys):
    _checkpoint, onnx_path, cache = outlier_model
    engine = tmp_path / "model.engine"
    with pytest.raises(SystemExit) as exit_info:
        main(["build-engine", str(onnx_path), "--int8", "--calib-data", DATA, "--calib-images", str(IMAGES),
              "--calib-method", "max", "--calib-cache", str(cache), "--max-delta-map", str(TOLERANCE),
              "--eval-images", str(IMAGES), "-o", str(engine)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "TensorRT" in captured.err and "\n" not in captured.err.strip()
    graph = tmp_path / "outlier.int8.onnx"
    assert "over budget" in captured.out and str(graph) in captured.err
    assert OUTLIER_LAYER in read_kept_high(graph) and not engine.exists()


def test_recipe_makes_builds_reproducible_and_auto_compares_three_methods(outlier_model, debugged, tmp_path, capsys):
    _checkpoint, onnx_path, cache = outlier_model
    debug, _output = debugged
    recipe = debug.files["recipe"]
    output = tmp_path / "auto.int8.onnx"
    main(["calibrate", str(onnx_path), "--calib-data", DATA, "--calib-images", str(IMAGES), "--calib-method", "auto",
          "--calib-cache", str(cache), "--keep-high", recipe, "--max-delta-map", str(TOLERANCE), "--eval-images", str(IMAGES), "-o", str(output),
          "--parity-images", "0"])
    printed = capsys.readouterr().out
    assert all(f"  {method}" in printed for method in ("entropy", "percentile", "max")) and "--method auto: kept" in printed
    assert read_kept_high(output) == load_recipe(recipe).layer_names

    with pytest.raises(SystemExit) as exit_info:  # the same layers in an engine build, no search
        main(["build-engine", str(onnx_path), "--int8", "--calib-data", DATA, "--calib-images", str(IMAGES),
              "--calib-method", "max", "--calib-cache", str(cache), "--keep-high", recipe,
              "-o", str(tmp_path / "again.engine")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "TensorRT" in captured.err and "over budget" not in captured.out
    assert read_kept_high(tmp_path / "outlier.int8.onnx") == load_recipe(recipe).layer_names


def test_fp16_gate_keeps_nothing_when_fp16_is_within_budget(outlier_model, tmp_path, capsys):
    _checkpoint, onnx_path, _cache = outlier_model
    with pytest.raises(SystemExit) as exit_info:
        main(["build-engine", str(onnx_path), "--fp16", "--max-delta-map", "0.3", "--eval-data", DATA,
              "--eval-images", str(IMAGES), "-o", str(tmp_path / "model.engine")])
    assert exit_info.value.code == 2 and "TensorRT" in capsys.readouterr().err
    graph = onnx.load(str(tmp_path / "outlier.fp16.onnx"))
    assert read_kept_high(graph) == [] and read_metadata(tmp_path / "outlier.fp16.onnx").precision == "fp16"


def test_engine_sidecar_carries_the_kept_layers():
    from assd.runtime.engine_info import EngineInfo

    fields = {"tensorrt_version": "10.3.0", "gpu_name": "GPU", "compute_capability": "8.9", "precision": "int8",
              "input_shape": [3, SIZE, SIZE], "batch_min": 1, "batch_opt": 8, "batch_max": 32, "onnx_sha256": "0" * 64,
              "onnx_file": "m.int8.onnx", "model_config": json.loads(get_config("assd-mini").to_json()),
              "postprocess": {}}
    info = EngineInfo(**fields, kept_high=[OUTLIER_LAYER])
    assert EngineInfo.from_dict(info.to_dict()).kept_high == [OUTLIER_LAYER]
    older = {key: value for key, value in info.to_dict().items() if key != "kept_high"}
    assert EngineInfo.from_dict(older).kept_high == []  # sidecars written before the field still load
