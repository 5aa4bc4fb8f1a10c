"""``assd.Detector`` on every artifact kind and every input kind (assd-mini at 64 pixels), and ``assd predict``
on videos and streams: the same detections as ``Detector``, files finished cleanly, bad input in one line.

Videos are made here from the real photos in ../shared/data (cv2.VideoWriter); an MJPEG stream is served
on 127.0.0.1 by the test itself.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import VOC_MINI
from test_tensorrt_runner import _info, fake  # noqa: F401 - the fake TensorRT fixture

from assd import Detector
from assd.errors import UserError
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint

SIZE = 64
FRAMES = 6
VIDEO_SIZE = (96, 72)


@dataclasses.dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_assd(capsys):
    """``assd ARGS`` in this process (as the console script runs it): exit code, stdout, stderr."""
    from assd.cli import main

    def run(*args):
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """FRAMES real VOC photos, resized to VIDEO_SIZE and saved as PNG (lossless: every reader sees the same pixels)."""
    root = Path(os.environ.get("ASSD_TEST_VOC_MINI", VOC_MINI))  # a worktree elsewhere can point to the photos
    found = sorted(root.rglob("*.jpg"))[:FRAMES]
    if len(found) < FRAMES:
        pytest.skip(f"real test data not found at {root} (needs {FRAMES} VOC photos of ../shared/data/voc-mini)")
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, path in enumerate(found):
        image = cv2.resize(cv2.imread(str(path)), VIDEO_SIZE, interpolation=cv2.INTER_AREA)
        paths.append(folder / f"photo{index}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def write_video(path: Path, photos, fourcc: str = "mp4v", fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, VIDEO_SIZE)
    assert writer.isOpened()
    for photo in photos:
        writer.write(cv2.imread(str(photo)))
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """The video's frames as OpenCV's FFMPEG backend decodes them (BGR)."""
    capture, frames = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def video(photos, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", photos)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, photos):
    """{kind: path} of assd-mini at SIZE pixels: checkpoint, ONNX fp32 / fp16 / int8 / --with-postprocess."""
    from assd.calibration import quantize_int8
    from assd.export import export_onnx
    from assd.export.fp16 import write_fp16_onnx

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_config("assd-mini"), input_size=SIZE)).eval()
    folder = tmp_path_factory.mktemp("artifacts")
    paths = {"checkpoint": folder / "mini.pt", "onnx": folder / "mini.onnx", "onnx-fp16": folder / "mini.fp16.onnx",
             "onnx-int8": folder / "mini.int8.onnx", "onnx-postprocess": folder / "mini.nms.onnx"}
    save_checkpoint(model, paths["checkpoint"])
    export_onnx(model, paths["onnx"])
    export_onnx(model, paths["onnx-postprocess"], with_postprocess=True)
    write_fp16_onnx(str(paths["onnx"]), str(paths["onnx-fp16"]))
    quantize_int8(str(paths["onnx"]), str(paths["onnx-int8"]), str(photos[0].parent), num_images=2, method="max",
                  echo=lambda _: None, num_bins=256)
    return {kind: str(path) for kind, path in paths.items()}


class MjpegServer:
    """An MJPEG stream (multipart/x-mixed-replace JPEGs) on 127.0.0.1: ``frames`` once, or forever."""

    def __init__(self, frames: list[np.ndarray], repeat: bool = False, delay: float = 0.0):
        encoded = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in frames]

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while True:
                        for data in encoded:
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                             + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                            self.wfile.flush()
                            time.sleep(delay)
                        if not repeat:
                            return
                except OSError:  # the client went away
                    return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeCamera:
    """What ``cv2.VideoCapture(index)`` gives for a camera, delivering ``frames`` then ending."""

    def __init__(self, frames):
        self.frames, self.position = list(frames), 0

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: VIDEO_SIZE[0],
                cv2.CAP_PROP_FRAME_HEIGHT: VIDEO_SIZE[1]}.get(prop, 0.0)

    def read(self):
        if self.position >= len(self.frames):
            return False, None
        self.position += 1
        return True, self.frames[self.position - 1].copy()

    def grab(self):
        return self.read()[0]

    def release(self):
        pass


def same(a, b) -> bool:
    return (np.array_equal(a.labels, b.labels) and np.allclose(a.boxes, b.boxes, atol=1e-3)
            and np.allclose(a.scores, b.scores, atol=1e-5))


@pytest.mark.parametrize("kind", ["checkpoint", "preset", "onnx", "onnx-fp16", "onnx-int8", "onnx-postprocess"])
def test_every_input_kind_gives_the_detections_of_the_image(kind, artifacts, photos, video, monkeypatch):
    artifact = "assd-mini" if kind == "preset" else artifacts[kind]
    torch.manual_seed(0)
    det = Detector(artifact, device="cpu", batch_size=2, score_threshold=0.05)
    assert det.info["model"] == "assd-mini" and det.info["thresholds"]["score_threshold"] == 0.05
    bgr = cv2.imread(str(photos[0]))
    reference = det(str(photos[0]))
    assert reference.image_size == VIDEO_SIZE and len(reference) > 0
    assert (reference.boxes[:, 2] <= VIDEO_SIZE[0]).all() and (reference.boxes[:, 3] <= VIDEO_SIZE[1]).all()
    from PIL import Image

    inputs = [photos[0], bgr, cv2.imencode(".png", bgr)[1].tobytes(), Image.open(photos[0])]
    for result in det(inputs):
        assert same(result, reference)
    assert same(det(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), rgb=True), reference)
    stricter = det(bgr, score_threshold=0.5)  # per-call thresholds
    assert len(stricter) == int((reference.scores > 0.5).sum())

    singles = [det(str(path)) for path in photos]
    for stream in (det.stream(photos[0].parent), det.stream(str(photos[0].parent / "photo*.png")),
                   det.stream([str(path) for path in photos])):
        results = list(stream)
        assert [r.frame_index for r in results] == list(range(FRAMES))  # frames in == results out
        assert all(same(r, s) for r, s in zip(results, singles, strict=True))

    frames = decoded_frames(video)
    results = list(det.stream(video))
    assert [r.frame_index for r in results] == list(range(len(frames))) == list(range(FRAMES))
    assert [r.timestamp for r in results] == pytest.approx([i / 10 for i in range(FRAMES)])
    assert all(same(r, det(frame)) for r, frame in zip(results, frames, strict=True))

    monkeypatch.setattr(cv2, "VideoCapture", lambda *args, **kwargs: FakeCamera(frames))
    camera = det.stream(0, drop_frames=False)
    results = list(camera)
    assert [r.frame_index for r in results] == list(range(FRAMES)) and camera.dropped == 0
    assert all(same(r, det(frame)) for r, frame in zip(results, frames, strict=True))
    assert all(r.timestamp > 1e9 for r in results)  # wall-clock capture times for live sources
    monkeypatch.undo()

    server = MjpegServer([cv2.imread(str(path)) for path in photos])
    try:
        results = list(det.stream(server.url, timeout=20, drop_frames=False))
        live = det.stream(server.url, timeout=20)  # drops frames when inference falls behind
        kept = list(live)
    finally:
        server.close()
    assert [r.frame_index for r in results] == list(range(FRAMES))
    assert all(r.image_size == VIDEO_SIZE for r in results)
    assert len(kept) + live.dropped == live.frames_read == FRAMES


def test_engine_artifact_through_the_fake_tensorrt(fake, tmp_path, photos):  # noqa: F811 - the fixture
    make_runner, _, _ = fake
    make_runner(_info(outputs="detections"))  # writes tiny.engine + its sidecar
    det = Detector(str(tmp_path / "tiny.engine"), device="cuda", batch_size=4, score_threshold=0.01)
    assert det.info["backend"] == "tensorrt"
    results = det([str(path) for path in photos[:4]])
    # The fake detections engine gives image i of a batch i detections at (0.1, 0.1, 0.5, ...) of the input.
    assert [len(r) for r in results] == [0, 1, 2, 3]
    assert np.allclose(results[3].boxes[0, :3], [0.1 * VIDEO_SIZE[0], 0.1 * VIDEO_SIZE[1], 0.5 * VIDEO_SIZE[0]])
    streamed = list(det.stream(photos[0].parent))
    assert [len(r) for r in streamed] == [0, 1, 2, 3, 0, 1]


def test_result_serializes_and_plots(artifacts, photos):
    det = Detector(artifacts["onnx"], device="cpu", score_threshold=0.05)
    result = det(photos[0])
    record = result.to_dict()
    assert record["image_size"] == list(VIDEO_SIZE) and len(record["detections"]) == len(result)
    assert record["detections"][0]["name"] == result.names[0] == det.class_names[result.labels[0] - 1]
    rows = result.coco_rows(image_id=7)
    assert rows[0]["bbox"][2] == pytest.approx(result.boxes[0, 2] - result.boxes[0, 0], abs=0.01)
    drawn = result.plot()
    original = cv2.imread(str(photos[0]))
    assert drawn.shape == original.shape and (np.abs(drawn.astype(int) - original).max(axis=2) > 40).mean() > 0.01
    assert not np.array_equal(drawn, original)


def test_import_assd_stays_light():
    code = "import sys, assd; assert 'torch' not in sys.modules; assd.Detector; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_predict_writes_what_the_detector_gives_for_images_and_videos(artifacts, photos, video, tmp_path, run_assd):
    out = tmp_path / "out"
    done = run_assd("predict", "--model", artifacts["onnx"], photos[0].parent, video, "--out", out, "--save-video",
                    "--device", "cpu", "--no-progress", "--score-threshold", "0.2")
    assert done.returncode == 0, done.stderr
    det = Detector(artifacts["onnx"], device="cpu", score_threshold=0.2)
    written = json.loads((out / "detections.json").read_text())["detections"]
    for path in photos:
        expected = det(path)
        rows = [row for row in written if row["file_name"] == str(path)]
        assert [row["label"] for row in rows] == expected.labels.tolist()
        assert [row["score"] for row in rows] == [round(s, 5) for s in expected.scores.tolist()]
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert lines == [result.to_dict() for result in det.stream(video)]
    assert len(decoded_frames(out / "clip.mp4")) == FRAMES
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == VIDEO_SIZE
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp file left

    strided = run_assd("predict", "--model", artifacts["onnx"], video, "--out", tmp_path / "strided", "--stride", "2",
                       "--max-frames", "2", "--device", "cpu", "--no-progress")
    assert strided.returncode == 0, strided.stderr
    assert [json.loads(line)["frame"] for line in (tmp_path / "strided" / "clip.jsonl").read_text().splitlines()] \
        == [0, 2]


def test_bad_sources_are_one_line_and_exit_2(artifacts, photos, tmp_path, run_assd):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    cases = {"missing": (tmp_path / "missing.mp4", "no such video"),
             "undecodable": (garbage, "not a video"),
             "camera": ("7", "camera 7: no such camera"),
             "silent": (f"http://127.0.0.1:{silent.getsockname()[1]}/stream.mjpg", "no video stream answered within 2")}
    try:
        for name, (source, message) in cases.items():
            out = tmp_path / f"out-{name}"
            start = time.monotonic()
            done = run_assd("predict", "--model", artifacts["onnx"], source, "--out", out, "--timeout", "2",
                            "--device", "cpu", "--no-progress")
            assert done.returncode == 2, (name, done.stderr)
            assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)
            assert not out.exists() or not list(out.iterdir()), name
            if name == "silent":
                assert time.monotonic() - start < 60
    finally:
        silent.close()


def test_truncated_video_keeps_the_decodable_frames_and_says_how_many_were_lost(artifacts, photos, tmp_path, run_assd):
    whole = write_video(tmp_path / "whole.avi", photos * 3, fourcc="MJPG")
    data = whole.read_bytes()
    truncated = tmp_path / "cut.avi"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    done = run_assd("predict", "--model", artifacts["onnx"], truncated, "--out", tmp_path / "out", "--save-video",
                    "--device", "cpu", "--no-progress")
    assert done.returncode == 2 and "truncated video" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    lines = (tmp_path / "out" / "cut.jsonl").read_text().splitlines()
    lost = int(done.stderr.split("truncated video: ")[1].split(" of ")[0])
    assert 0 < len(lines) < 3 * FRAMES and len(lines) + lost == 3 * FRAMES
    assert len(decoded_frames(tmp_path / "out" / "cut.mp4")) == len(lines)


def test_frame_size_changing_mid_stream_stops_with_one_line(artifacts, photos, monkeypatch):
    frames = [cv2.imread(str(path)) for path in photos]
    frames[3] = cv2.resize(frames[3], (64, 64))
    monkeypatch.setattr(cv2, "VideoCapture", lambda *args, **kwargs: FakeCamera(frames))
    det = Detector(artifacts["onnx"], device="cpu")
    seen = []
    with pytest.raises(UserError, match=r"camera0: frame 3 is 64x64, the frames before it 96x72"):
        for result in det.stream(0, drop_frames=False):
            seen.append(result.frame_index)
    assert seen == [0, 1, 2]


def test_live_source_drops_frames_when_inference_falls_behind_and_counts_them(artifacts, photos, monkeypatch):
    frames = [cv2.imread(str(path)) for path in photos] * 20
    monkeypatch.setattr(cv2, "VideoCapture", lambda *args, **kwargs: FakeCamera(frames))
    det = Detector(artifacts["onnx"], device="cpu")
    stream = det.stream(0)  # drop_frames defaults to True for cameras
    results = list(stream)
    assert stream.dropped > 0 and len(results) + stream.dropped == stream.frames_read == len(frames)
    indices = [r.frame_index for r in results]
    assert indices == sorted(indices) and indices[-1] == len(frames) - 1  # the newest frame is never dropped


def test_ctrl_c_finishes_the_video_and_the_json_lines(artifacts, photos, tmp_path):
    server = MjpegServer([cv2.imread(str(path)) for path in photos], repeat=True, delay=0.05)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "assd.cli", "predict", "--model", artifacts["onnx"], server.url,
                                "--out", str(out), "--save-video", "--device", "cpu", "--no-progress"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(p.name.endswith(".tmp") and p.stat().st_size > 2000
                                                      for p in (out.iterdir() if out.exists() else [])):
            time.sleep(0.2)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        server.close()
    assert process.returncode == 130, stderr
    (jsonl,) = out.glob("*.jsonl")
    (mp4,) = out.glob("*.mp4")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]  # every line complete
    assert lines and len(decoded_frames(mp4)) == len(lines)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_served_model_url_gives_the_local_detections(artifacts, photos, tmp_path):
    pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install -e '.[serve]')")
    from test_serving import ServeProcess

    server = ServeProcess(Path(artifacts["onnx"]), tmp_path / "serve.log")
    try:
        local = Detector(artifacts["onnx"], device="cpu", score_threshold=0.05)
        for protocol in ("http", "grpc"):
            with Detector(server.url(protocol), score_threshold=0.05, batch_size=3) as remote:
                assert remote.info["backend"] == "server" and remote.info["model"] == "assd-mini"
                assert all(same(r, local(path)) for r, path in zip(remote(photos), photos, strict=True))
                streamed = list(remote.stream(photos[0].parent))
                assert [r.frame_index for r in streamed] == list(range(FRAMES))
    finally:
        server.stop()


def test_detector_rejects_bad_arguments(artifacts):
    with pytest.raises(UserError, match="batch_size 0"):
        Detector(artifacts["onnx"], batch_size=0)
    det = Detector(artifacts["onnx"], device="cpu")
    with pytest.raises(UserError, match="dtype float32"):
        det(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(UserError, match="not an encoded image"):
        det(b"garbage")
    with pytest.raises(UserError, match="stride 0"):
        det.stream(".", stride=0)
    with pytest.raises(UserError, match="cannot detect in a dict"):
        det({})


def test_bench_source_reports_end_to_end_next_to_model_only(artifacts, video, tmp_path, run_assd):
    done = run_assd("bench", "--source", video, artifacts["onnx"], "--batch", "1,2", "--frames", "4", "--rounds", "1",
                    "--device", "cpu", "--json", tmp_path / "bench.json")
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [row["batch"] for row in rows] == [1, 2] and all(row["frames"] == 4 for row in rows)
    for row in rows:
        assert row["fps_model"] > 0 and row["fps_end_to_end"] > 0
        assert row["ratio"] == pytest.approx(row["fps_end_to_end"] / row["fps_model"])
    assert "FPS (end to end)" in done.stdout and "load average" in done.stdout


def test_fixed_batch_onnx_takes_any_number_of_images(tmp_path, photos):
    from assd.export import export_onnx

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(get_config("assd-mini"), input_size=SIZE)).eval()
    export_onnx(model, tmp_path / "fixed.onnx", batch=2)
    export_onnx(model, tmp_path / "dynamic.onnx")
    fixed = Detector(tmp_path / "fixed.onnx", device="cpu", batch_size=2, score_threshold=0.05)
    dynamic = Detector(tmp_path / "dynamic.onnx", device="cpu", score_threshold=0.05)
    assert same(fixed(photos[0]), dynamic(photos[0]))  # one image in a batch-2 graph
    streamed = list(fixed.stream(photos[:3]))  # 2 + 1
    assert all(same(r, dynamic(path)) for r, path in zip(streamed, photos[:3], strict=True))
