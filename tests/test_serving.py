"""``assd serve`` end to end: one real Triton server (nvidia-pytriton's tritonserver) per module, serving
a small assd-mini ONNX file on ONNX Runtime CPU, on free loopback ports chosen at runtime.

Real VOC photos over HTTP and gRPC give the direct runner's detections; concurrent clients are batched;
bad requests get errors while the server keeps serving; mAP through the server equals the direct
runner's; SIGTERM leaves no process behind. Skipped where the serve extra is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed (pip install -e '.[serve]')")

from assd.export import export_onnx
from assd.models import build_model
from assd.models.presets import get_config
from assd.remote.client import DetectionClient, error_message, parse_server_url
from assd.serving.environment import free_port

IMAGES = 6  # real photos compared request by request
EVAL_IMAGES = 16  # images of the mAP comparison


def run_assd(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "assd.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


class ServeProcess:
    """``assd serve`` as a subprocess, its log in a file."""

    def __init__(self, artifact: Path, log: Path):
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "assd.cli", "serve", str(artifact), "--device", "cpu", "--max-batch", "4",
             "--max-queue-delay-us", "50000", "--http-port", str(self.http), "--grpc-port", str(self.grpc),
             "--metrics-port", str(self.metrics)], stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "ready (Ctrl-C" not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"assd serve did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def url(self, protocol: str) -> str:
        return f"{protocol}://127.0.0.1:{self.http if protocol == 'http' else self.grpc}/assd"

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """assd-mini at 128 pixels with VOC's classes, unsaturated (untied) scores and boxes near the priors
    (random offsets would put every box off target: mAP 0, which proves nothing)."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_config("assd-mini"), input_size=128)).eval()
    with torch.no_grad():
        for head in model.conf_heads:
            head.weight.mul_(0.2)
        for head in model.loc_heads:
            head.weight.mul_(0.01)
    path = tmp_path_factory.mktemp("served") / "small.onnx"
    export_onnx(model, path)
    return path


@pytest.fixture(scope="module")
def server(small_onnx, tmp_path_factory):
    process = ServeProcess(small_onnx, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield process
    process.stop()


@pytest.fixture
def photos(voc_mini_root):
    return sorted((voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[:IMAGES]


def detect_all(url: str, images: list, concurrency: int = 1):
    async def run():
        async with DetectionClient(parse_server_url(url)) as client:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(image):
                async with semaphore:
                    return await client.detect(image)

            return await asyncio.gather(*(one(image) for image in images))

    return asyncio.run(run())


def statistics(url: str) -> dict:
    async def run():
        async with DetectionClient(parse_server_url(url)) as client:
            return await client.statistics()

    return asyncio.run(run())


def test_real_photos_over_http_and_grpc_give_the_direct_runners_detections(server, small_onnx, photos):
    from assd.evaluation.predict import predict_images
    from assd.runtime.postprocess import PostprocessConfig
    from assd.runtime.runners import open_runner

    runner = open_runner(str(small_onnx), device="cpu")
    direct = predict_images(runner.infer, photos, runner.cfg, PostprocessConfig.from_dict(runner.postprocess),
                            runner.device, batch_size=1)
    encoded = [path.read_bytes() for path in photos]
    from assd.data.dataset import read_rgb_image

    pixels = [read_rgb_image(str(path)) for path in photos]
    for url, images in [(server.url("http"), encoded), (server.url("grpc"), encoded), (server.url("http"), pixels)]:
        served = detect_all(url, images, concurrency=3)  # batched with each other: results must not depend on it
        for mine, theirs in zip(served, direct):
            assert len(mine) == len(theirs) > 0
            np.testing.assert_array_equal(mine.labels, theirs.labels)
            np.testing.assert_allclose(mine.scores, theirs.scores, rtol=0, atol=1e-5)
            np.testing.assert_allclose(mine.boxes, theirs.boxes, rtol=0, atol=1e-2)  # pixels


def test_concurrent_clients_are_batched(server, photos):
    before = {s["batch_size"]: int(s["compute_infer"]["count"]) for s in statistics(server.url("http"))["batch_stats"]}
    detect_all(server.url("grpc"), [path.read_bytes() for path in photos] * 2, concurrency=8)
    after = statistics(server.url("http"))
    batched = {int(s["batch_size"]): int(s["compute_infer"]["count"]) - before.get(s["batch_size"], 0)
               for s in after["batch_stats"]}
    assert any(size > 1 and count > 0 for size, count in batched.items()), batched
    assert max(batched) <= 4  # --max-batch


def test_bad_requests_get_errors_and_the_server_keeps_serving(server, photos):
    good = photos[0].read_bytes()

    async def run():
        outcomes = {}
        async with DetectionClient(parse_server_url(server.url("http"))) as client:
            module = client.module

            async def attempt(what, inputs, model="assd"):
                try:
                    await client.client.infer(model, inputs, outputs=[module.InferRequestedOutput("count")])
                    outcomes[what] = None
                except Exception as exc:  # noqa: BLE001 - every refusal is an InferenceServerException
                    outcomes[what] = error_message(exc)
                outcomes[f"{what}, then a good image"] = len(await client.detect(good))

            def tensor(name, array, datatype):
                item = module.InferInput(name, list(array.shape), datatype)
                item.set_data_from_numpy(array)
                return [item]

            await attempt("not an image", tensor("image_bytes", np.array([[b"<html>no</html>"]], np.object_), "BYTES"))
            await attempt("wrong dtype", tensor("image", np.zeros((1, 8, 8, 3), np.float32), "FP32"))
            await attempt("wrong shape", tensor("image", np.zeros((1, 8, 8, 4), np.uint8), "UINT8"))
            huge = np.array([[os.urandom(50 * 2**20)]], np.object_)  # a 50 MB body
            await attempt("50 MB body", tensor("image_bytes", huge, "BYTES"))
            await attempt("unknown model", tensor("image_bytes", np.array([[good]], np.object_), "BYTES"), "nope")
        return outcomes

    outcomes = asyncio.run(run())
    assert "cannot decode" in outcomes["not an image"]
    assert "FP32" in outcomes["wrong dtype"] and "UINT8" in outcomes["wrong dtype"]
    assert "shape" in outcomes["wrong shape"] or "dims" in outcomes["wrong shape"]
    assert outcomes["50 MB body"] is not None and outcomes["unknown model"] is not None
    assert "nope" in outcomes["unknown model"]
    assert all(count > 0 for what, count in outcomes.items() if what.endswith("then a good image")), outcomes


def test_eval_through_the_server_equals_the_direct_runner(server, small_onnx, voc_mini_root, tmp_path):
    data = f"voc:{voc_mini_root}"
    served, direct = tmp_path / "served.json", tmp_path / "direct.json"
    result = run_assd("eval", "--model", server.url("http"), "--data", data, "--limit", str(EVAL_IMAGES),
                      "--batch-size", "4", "--json", str(served))
    assert result.returncode == 0, result.stderr
    result = run_assd("eval", "--model", str(small_onnx), "--data", data, "--limit", str(EVAL_IMAGES), "--device", "cpu",
                      "--json", str(direct))
    assert result.returncode == 0, result.stderr
    served_result, direct_result = json.loads(served.read_text()), json.loads(direct.read_text())
    assert served_result["mAP"] > 0 and served_result["num_images"] == EVAL_IMAGES
    assert served_result["mAP"] == pytest.approx(direct_result["mAP"], abs=1e-9)
    assert served_result["per_class"] == pytest.approx(direct_result["per_class"], abs=1e-9)


def test_eval_engine_with_a_server_as_artifact(server, small_onnx, voc_mini_root, tmp_path):
    out = tmp_path / "parity.json"
    result = run_assd("eval-engine", server.url("grpc"), "--data", f"voc:{voc_mini_root}", "--limit", "8",
                      "--reference", str(small_onnx), "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    parity = json.loads(out.read_text())
    assert parity["delta_mAP_points"] == pytest.approx(0, abs=1e-7) and parity["detection_agreement"] == 1.0
    assert parity["passed"] and "PASS" in result.stdout


def test_bench_server_reports_throughput_latency_and_triton_statistics(server, tmp_path):
    out = tmp_path / "load.json"
    result = run_assd("bench", "--server", server.url("grpc"), "--concurrency", "1,3", "--requests", "6",
                      "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| Concurrency | Requests |" in result.stdout
    report = json.loads(out.read_text())
    assert report["format"] == "assd-bench-server" and [row["concurrency"] for row in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["requests"] == 6 and row["errors"] == 0 and row["throughput"] > 0
        assert row["latency_ms_p50"] <= row["latency_ms_p99"] and row["server_compute_ms"] > 0
        assert row["server_queue_ms"] >= 0 and row["avg_batch"] >= 1


def test_sigterm_stops_the_server_and_leaves_no_process(server):
    """Runs last in this module: it stops the module's server."""
    below = {pid: command_line(pid) for pid in descendants(server.process.pid)}
    assert any("tritonserver" in command for command in below.values()), below
    assert server.stop(signal.SIGTERM) == 0
    deadline = time.monotonic() + 30  # the stub's helpers exit when their pipes close, shortly after it
    while (left := {pid: command for pid, command in below.items() if command_line(pid) == command}) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left
    assert "stopped" in server.log.read_text()
