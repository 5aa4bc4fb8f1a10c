"""``assd bench --report A B C`` merges every file (or refuses in one line) and ``--cuda-graph`` reaches the
TensorRT runner's CUDA-graph path (issue 22, item 3)."""

from __future__ import annotations

import json
import subprocess

import pytest

from assd.bench.report import REPORT_FORMAT
from assd.bench.run import run_bench
from assd.errors import UserError


def run_assd(capsys, *args) -> subprocess.CompletedProcess:
    """The console entry point in this process (exit code, stdout, stderr)."""
    from assd.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def _report(path, device: str, fps: float) -> str:
    row = {"method": "assd-mini", "backbone": "vgg16", "input_size": 128, "artifact": "mini.engine",
           "backend": "tensorrt", "precision": "fp16", "device": device, "num_anchors": 6132, "num_params": 1,
           "batch": 1, "iters": 5, "fps": fps, "fps_model": fps, "latency_ms_p50": 1.0, "latency_ms_p90": 1.0,
           "latency_ms_p99": 1.0, "preprocess_ms": 0.1, "inference_ms": 0.8, "postprocess_ms": 0.1}
    path.write_text(json.dumps({"format": REPORT_FORMAT, "rows": [row]}))
    return str(path)


def test_report_merges_every_file_named_after_it(tmp_path, capsys):
    files = [_report(tmp_path / f"{gpu}.json", gpu, fps) for gpu, fps in (("L4", 100.0), ("A100", 300.0),
                                                                          ("H100", 500.0))]
    result = run_assd(capsys, "bench", "--report", *files, "--markdown", str(tmp_path / "merged.md"))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "merged.md").read_text()
    assert all(f"| {gpu} |" in table for gpu in ("L4", "A100", "H100")), table
    repeated = run_assd(capsys, "bench", "--report", files[0], "--report", files[1], files[2])
    assert repeated.returncode == 0 and all(f"| {gpu} |" in repeated.stdout for gpu in ("L4", "A100", "H100"))


def test_report_mixed_with_artifacts_is_refused_in_one_line(tmp_path, capsys):
    report = _report(tmp_path / "run.json", "L4", 100.0)
    result = run_assd(capsys, "bench", "--report", report, "assd-mini", str(tmp_path / "model.onnx"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "assd-mini, " in result.stderr and "are not" in result.stderr
    missing = run_assd(capsys, "bench", "--report", report, str(tmp_path / "gone.json"))
    assert missing.returncode == 2 and "gone.json: no such file" in missing.stderr


def test_cuda_graph_reaches_the_engine_runner(monkeypatch):
    from assd.bench import run as bench_run

    opened = []

    def open_runner(artifact, **kwargs):
        opened.append((artifact, kwargs["cuda_graph"]))
        raise UserError("stop here")  # what the runner does is tests/test_tensorrt_runner.py's

    monkeypatch.setattr(bench_run, "open_runner", open_runner)
    with pytest.raises(UserError, match="stop here"):
        run_bench(["missing.engine"], [1], cuda_graph=True)
    assert opened == [("missing.engine", True)]
    with pytest.raises(UserError, match="--cuda-graph replays TensorRT engines .* none of assd-mini, m.onnx is one"):
        run_bench(["assd-mini", "m.onnx"], [1], cuda_graph=True)


def test_open_runner_passes_cuda_graph_to_the_tensorrt_runner(monkeypatch):
    from assd.runtime import tensorrt_runner
    from assd.runtime.runners import open_runner

    seen = {}
    monkeypatch.setattr(tensorrt_runner, "TensorRTRunner", lambda path, device, cuda_graph=False: seen.update(
        path=path, cuda_graph=cuda_graph) or "runner")
    assert open_runner("a.engine", device="cpu", cuda_graph=True) == "runner" and seen["cuda_graph"] is True
