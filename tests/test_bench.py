"""``assd bench`` and ``assd eval-engine``: they run, report what they must, and refuse bad input.
(Speed is measured by benchmarks, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from assd.export import export_onnx
from assd.models import build_model
from assd.models.checkpoint import save_checkpoint


def run_assd(*args):
    return subprocess.run([sys.executable, "-m", "assd.cli", *args], check=False, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model = build_model("assd-mini").eval()
    with torch.no_grad():  # unsaturated scores: a random net's softmax is otherwise 1.0 (ties) everywhere
        for head in model.conf_heads:
            head.weight.mul_(0.02)
    save_checkpoint(model, folder / "mini.pt")
    export_onnx(model, folder / "mini.onnx")
    return folder


def test_bench_compares_checkpoint_and_onnx_and_writes_reports(artifacts, tmp_path):
    result = run_assd("bench", str(artifacts / "mini.pt"), str(artifacts / "mini.onnx"), "--batch", "1,2",
                      "--iters", "2", "--warmup", "1", "--device", "cpu", "--json", str(tmp_path / "run.json"),
                      "--markdown", str(tmp_path / "run.md"), "--csv", str(tmp_path / "run.csv"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run.json").read_text())
    rows = report["rows"]
    assert len(rows) == 4 and {r["backend"] for r in rows} == {"torch", "onnxruntime"}
    for row in rows:
        assert row["fps"] > 0 and row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert row["num_anchors"] == 6132 and row["num_params"] == 14_995_886
        assert row["inference_ms"] > 0 and row["postprocess_ms"] > 0 and row["preprocess_ms"] > 0
    assert [r["speedup"] for r in rows if r["backend"] == "torch"] == [1.0, 1.0]
    assert "| FPS |" in (tmp_path / "run.md").read_text()
    merged = run_assd("bench", "--report", str(tmp_path / "run.json"), "--report", str(tmp_path / "run.json"),
                      "--markdown", str(tmp_path / "merged.md"))
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / "merged.md").read_text().count("| assd-mini |") == 4  # duplicates merged


def test_bench_bad_inputs(artifacts, tmp_path):
    for args, needle in [(("bench",), "at least one artifact"),
                         (("bench", "assd-mini", "--batch", "0"), "--batch 0"),
                         (("bench", str(tmp_path / "missing.onnx")), "ONNX file not found"),
                         (("bench", "--report", str(artifacts / "mini.pt")), "not a readable benchmark JSON")]:
        result = run_assd(*args)
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_eval_engine_fp32_onnx_matches_the_reference(artifacts, voc_mini_root, tmp_path):
    result = run_assd("eval-engine", str(artifacts / "mini.onnx"), "--data", f"voc:{voc_mini_root}",
                      "--reference", str(artifacts / "mini.pt"), "--limit", "8", "--batch-size", "4",
                      "--json", str(tmp_path / "ee.json"))
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "ee.json").read_text())
    assert abs(data["delta_mAP_points"]) <= 0.1 and data["passed"]
    assert data["detection_agreement"] >= 0.99 and data["precision"] == "fp32"
    assert "Δ mAP" in result.stdout


def test_eval_engine_fails_when_delta_exceeds_tolerance(artifacts, tmp_path):
    """A different network (other random weights) must be caught: exit 1 with a tolerance of 0."""
    other = tmp_path / "other.pt"
    save_checkpoint(build_model("assd-mini"), other)
    result = run_assd("eval-engine", str(other), "--data", "synthetic:6", "--reference", str(artifacts / "mini.pt"),
                      "--tolerance", "0", "--limit", "6")
    # class names differ (synthetic vs VOC): a clear one-line error first
    assert result.returncode == 2 and "differ from the classes" in result.stderr


def test_bench_images_are_smooth_like_photos_not_raw_noise():
    """Raw uniform noise drives the random-weight presets' unscaled attention into denormal floats, which
    ONNX Runtime and PyTorch compute 2.5x slower on a CPU (OpenVINO does not): bench times smooth images,
    deterministic, full range, VOC's size (docs/benchmarks.md)."""
    import numpy as np

    from assd.bench.timing import synthetic_images

    images = synthetic_images(3)
    assert all(image.shape == (375, 500, 3) and image.dtype == np.uint8 for image in images)
    assert all(image.min() == 0 and image.max() == 255 for image in images)
    neighbour_step = [float(np.abs(np.diff(image.astype(np.int16), axis=1)).mean()) for image in images]
    assert max(neighbour_step) < 5  # raw noise: ~85 grey levels between neighbouring pixels
    assert not np.array_equal(images[0], images[1])
    assert all(np.array_equal(a, b) for a, b in zip(images, synthetic_images(3)))
