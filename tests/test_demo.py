"""``assd demo``: the whole pipeline in quick mode (one real run, then a run that reuses every step),
the reuse rules of its state file, its data plan and its one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import cv2
import pytest

from assd.cli import main
from assd.demo import BUDGETS, DemoOptions, plan_data
from assd.demo.report import format_seconds
from assd.demo.state import DemoState, fingerprint
from assd.errors import UserError

ARTIFACTS = ["train/last.pt", "model.onnx", "model.fp16.onnx", "model.int8.onnx"]


def run_cli_demo(out, *extra):
    return subprocess.run([sys.executable, "-m", "assd.cli", "demo", "--quick", "--out", str(out), "--no-progress",
                           *extra], check=False, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    first = run_cli_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, first


def test_quick_demo_reports_every_artifact(quick_demo):
    out, first = quick_demo
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "assd-demo-report" and report["budget"]["name"] == "cpu-quick"
    assert report["data"]["train"] == "synthetic:96:0" and report["data"]["val"] == "synthetic:16:96"
    rows = {row["artifact"]: row for row in report["artifacts"] if row["backend"] != "openvino"}
    assert list(rows) == ARTIFACTS
    openvino_rows = [row["artifact"] for row in report["artifacts"] if row["backend"] == "openvino"]
    # the ONNX graphs on OpenVINO too, when its extra is installed (dev installs it)
    assert openvino_rows == (ARTIFACTS[1:] if importlib.util.find_spec("openvino") else []), openvino_rows
    for name, row in rows.items():
        assert math.isfinite(row["mAP"]) and 0.0 <= row["mAP"] <= 1.0, name
        assert math.isfinite(row["fps"]["1"]) and row["fps"]["1"] > 0, name
        assert math.isfinite(row["latency_ms_p50"]) and row["latency_ms_p50"] > 0, name
        if name != "train/last.pt":
            assert math.isfinite(row["delta_mAP_points"]) and 0.0 <= row["detection_agreement"] <= 1.0, name
    # the fp32 graph matches PyTorch: raw outputs (export parity) and mAP (eval-engine)
    parity = report["export_parity"]
    assert parity["passed"] and parity["parity"]["agreement"] >= 0.95
    assert rows["model.onnx"]["passed"]
    assert abs(rows["model.onnx"]["delta_mAP_points"]) <= rows["model.onnx"]["tolerance_points"]
    assert report["checks"]["passed"]
    # the printed summary: one table row per artifact, the parity verdict, the files
    for name in ARTIFACTS:
        assert f"| {name} |" in first.stdout
    assert "ONNX export parity (fp32 vs PyTorch, 4 images): OK" in first.stdout
    assert f"Files in `{out}`" in first.stdout
    assert "TensorRT engines: " in first.stdout


def test_quick_demo_writes_its_files(quick_demo):
    out, _ = quick_demo
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert "| Artifact | Backend | Precision |" in markdown and "## Steps" in markdown
    for names in report["files"].values():
        for name in names:
            assert (out / name).is_file(), name
    json.loads((out / "bench.json").read_text())
    images = report["files"]["images"]
    assert "images/predictions.png" in images and any(name.endswith("attention_grid.png") for name in images)
    for name in images:
        picture = cv2.imread(str(out / name))
        assert picture is not None and picture.shape[0] > 0 and picture.shape[2] == 3, name


def test_second_run_reuses_every_step(quick_demo):
    out, first = quick_demo
    checkpoint_before = fingerprint(out / "train/last.pt")
    second = run_cli_demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    step_lines = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert len(step_lines) == 9 and all(line.endswith("(reused)") for line in step_lines), step_lines
    assert fingerprint(out / "train/last.pt") == checkpoint_before  # not retrained
    report = json.loads((out / "report.json").read_text())
    assert all(step["reused"] for step in report["steps"].values())
    first_rows = [line for line in first.stdout.splitlines() if line.startswith("| model.")]
    assert first_rows == [line for line in second.stdout.splitlines() if line.startswith("| model.")]


def test_state_reuses_a_step_only_with_same_key_and_files(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    state = DemoState(tmp_path)
    state.record("step", {"x": 1, "inputs": {"a.txt": fingerprint(tmp_path / "a.txt")}}, {"line": "ok"},
                 ["a.txt"], 1.0)
    key = {"x": 1, "inputs": {"a.txt": fingerprint(tmp_path / "a.txt")}}
    assert DemoState(tmp_path).reusable("step", key)["result"] == {"line": "ok"}
    assert DemoState(tmp_path).reusable("step", {**key, "x": 2}) is None
    assert DemoState(tmp_path, force=True).reusable("step", key) is None
    (tmp_path / "a.txt").unlink()
    assert DemoState(tmp_path).reusable("step", key) is None
    (tmp_path / "demo_state.json").write_text("{not json")
    assert DemoState(tmp_path).steps == {}


def test_data_plan_validates_synthetic_on_held_out_images():
    budget = BUDGETS["cpu"]
    plan = plan_data(DemoOptions(), budget)
    assert plan.train == f"synthetic:{budget.train_images}:0"
    assert plan.val == f"synthetic:{budget.val_images}:{budget.train_images}" and "held-out" in plan.val_note
    plan = plan_data(DemoOptions(data="synthetic:50:10"), budget)
    assert plan.train == "synthetic:50:10" and plan.val.endswith(":60") and plan.val_limit is None


def test_data_plan_for_voc_says_it_validates_on_the_training_set(voc_mini_root):
    plan = plan_data(DemoOptions(data=f"voc:{voc_mini_root}"), BUDGETS["cpu-quick"])
    assert plan.val == plan.train and "training set itself" in plan.val_note
    assert plan.val_limit == BUDGETS["cpu-quick"].val_images
    with pytest.raises(UserError, match="classes"):
        plan_data(DemoOptions(data=f"voc:{voc_mini_root}", val_data="synthetic:10"), BUDGETS["cpu-quick"])


@pytest.mark.parametrize("args, message", [
    (["--data", "bogus:1"], "unknown data kind"),
    (["--data", "synthetic:0"], "1 <= N <= 1000000000"),
    (["--device", "gpu"], "not a device"),
    (["--val-data", "synthetic:x"], "--val-data"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--out", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and message in error
    assert not (tmp_path / "out").exists()  # nothing written before the input is checked


def test_unwritable_out_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--quick", "--out", str(out)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {out}") and "\n" not in error


def test_format_seconds_never_prints_60_seconds():
    assert [format_seconds(s) for s in (5.04, 59.96, 119.6, 179.6, 3725.0)] == ["5.0 s", "1m00s", "2m00s", "3m00s",
                                                                              "62m05s"]
