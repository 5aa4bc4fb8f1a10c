"""Soak and fault test of ``assd serve`` on loopback: load with malformed requests, a client that hangs
up mid-request, and server restarts (SIGTERM, SIGKILL) while clients run. It ends by itself.

    python scripts/serve_soak.py tiny --requests 2000 --concurrency 16 --bad 0.05 --restarts term,kill

``tiny`` (or any .onnx/.engine/.pt/preset) names the artifact; ``tiny`` builds the test model first: an
assd-mini at 128 px with 2 classes and random weights, its class scores unsaturated (``tiny_model``).

Phases, all against one ``assd serve ARTIFACT --device cpu --api-key soak`` on free 127.0.0.1 ports:
  load        ``--requests`` at ``--concurrency``, a ``--bad`` share malformed (junk bytes, 0 bytes, a PNG
              header declaring 16000x16000 pixels, 4-channel pixels, a zero-width image); every good
              answer must equal that image's detections sent alone
  hang-up     raw sockets that send half a request body, or a whole request, and close without reading
  restart     per ``--restarts`` entry, clients keep sending (retrying connection failures) while the
              server is stopped (SIGTERM or SIGKILL of ``assd serve``) and started again on the same ports
Counted: ok, failed as expected (a malformed request refused; a request while no server listened),
failed unexpectedly (anything else: must be 0); server RSS (``assd serve`` and every process below it)
before and after the load phase; latency p50/p99 of the good requests; after each restart, the seconds
from the new server's "ready" to the clients' first success.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from assd.remote.client import DetectionClient, error_message, is_connection_failure, parse_server_url
from assd.serving.environment import free_port

API_KEY = "soak"
PNG_BOMB = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + (16000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
            + b"\0" * 4 + b"\x00\x00\x00\x00IEND")
MALFORMED = [b"<html>not an image</html>", b"", PNG_BOMB, np.zeros((8, 8, 4), np.uint8), np.zeros((5, 0, 3), np.uint8)]


def tree_rss_mb(pid: int) -> float:
    """Resident MB of ``pid`` and every process below it (/proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def tiny_model(path: Path) -> Path:
    """The soak's model: assd-mini, 128 px, 2 classes, seed 0; class heads x0.2 (unsaturated scores: no exact
    ties whose order could depend on the batch), box heads x0.01 (boxes near the priors)."""
    import dataclasses

    import torch

    from assd.export import export_onnx
    from assd.models import build_model
    from assd.models.presets import get_config

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_config("assd-mini", num_classes=3, class_names=("a", "b")), input_size=128)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for head in model.conf_heads:
            head.weight.mul_(0.2)
        for head in model.loc_heads:
            head.weight.mul_(0.01)
    export_onnx(model, path)
    return path


def wait_until_free(ports: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.2)


class Server:
    """``assd serve`` as a subprocess on fixed loopback ports (kept across restarts)."""

    def __init__(self, artifact: str, log: Path, extra: tuple[str, ...] = ()):
        self.artifact, self.log, self.extra = artifact, log, extra
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> float:
        """Start it; returns the monotonic time it said "ready"."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        wait_until_free([self.http, self.grpc, self.metrics])  # a killed server's tritonserver exits shortly after
        self.process = subprocess.Popen(
            [sys.executable, "-m", "assd.cli", "serve", self.artifact, "--device", "cpu", "--max-batch", "8",
             "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
             "--api-key", API_KEY, *self.extra], stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "ready (Ctrl-C" not in self.log.read_text(errors="replace")[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"assd serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return time.monotonic()

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}/assd"


def good_images(images: list[str] | None, count: int = 8) -> list[bytes]:
    """JPEG bytes of ``images``, else of ``count`` synthetic scenes (bright rectangles on noise)."""
    if images:
        return [Path(path).read_bytes() for path in images]
    rng, encoded = np.random.default_rng(0), []
    for _ in range(count):
        image = rng.integers(0, 80, (int(rng.integers(200, 400)), int(rng.integers(200, 400)), 3), np.uint8)
        for _ in range(3):
            x, y = rng.integers(0, 150, 2)
            image[y:y + 60, x:x + 80] = rng.integers(120, 255, 3)
        encoded.append(cv2.imencode(".jpg", image)[1].tobytes())
    return encoded


class Tally:
    def __init__(self):
        self.ok = self.expected = 0
        self.unexpected: list[str] = []
        self.latencies: list[float] = []

    def as_dict(self) -> dict:
        ms = 1e3 * np.asarray(self.latencies or [np.nan])
        return {"ok": self.ok, "failed_as_expected": self.expected, "failed_unexpectedly": len(self.unexpected),
                "first_unexpected": self.unexpected[:3], "latency_ms_p50": float(np.percentile(ms, 50)),
                "latency_ms_p99": float(np.percentile(ms, 99))}


def same(a, b) -> bool:
    return len(a) == len(b) and np.array_equal(a.labels, b.labels) and np.allclose(a.boxes, b.boxes, atol=1e-2) \
        and np.allclose(a.scores, b.scores, atol=1e-5)


async def send(client, payload, reference, tally: Tally, down: bool = False) -> bool:
    """One request, counted in ``tally``; True on success. ``reference`` None: a malformed request."""
    started = time.perf_counter()
    try:
        detections = await client.detect(payload)
    except Exception as exc:  # noqa: BLE001 - classified below
        if reference is None and not is_connection_failure(exc):
            tally.expected += 1
        elif down and is_connection_failure(exc):
            tally.expected += 1  # no server listened, even after the client's retries
        else:
            tally.unexpected.append(error_message(exc)[:200])
        return False
    if reference is None:
        tally.unexpected.append("a malformed request was answered with detections")
    elif not same(detections, reference):
        tally.unexpected.append("detections differ from the image's own")
    else:
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - started)
        return True
    return False


async def load(url: str, goods: list[bytes], references: list, requests: int, concurrency: int,
               bad_share: float) -> Tally:
    tally, issued = Tally(), iter(range(requests))
    bad_every = round(1 / bad_share) if bad_share > 0 else 0
    async with DetectionClient(parse_server_url(url), api_key=API_KEY, connections=concurrency) as client:
        async def worker():
            for number in issued:
                if bad_every and number % bad_every == bad_every - 1:
                    await send(client, MALFORMED[(number // bad_every) % len(MALFORMED)], None, tally)
                else:
                    await send(client, goods[number % len(goods)], references[number % len(goods)], tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def references_of(url: str, goods: list[bytes]) -> list:
    async with DetectionClient(parse_server_url(url), api_key=API_KEY) as client:
        await client.check_ready()
        return [await client.detect(image) for image in goods]


def hang_ups(port: int, body: bytes) -> int:
    """Requests whose client goes away: half a body then close, a whole request closed unread, a reset."""
    request = (f"POST /v2/models/assd/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {API_KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    for part, linger in ((body[: len(body) // 2], False), (body, False), (body, True)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if linger:  # close with RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + bytes(4))
            sock.sendall(request + part)
    return 3


def json_body(image: bytes) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": [1, *cv2.imdecode(np.frombuffer(image, np.uint8), 1)
                                                               .shape], "datatype": "UINT8",
                                   "data": cv2.imdecode(np.frombuffer(image, np.uint8), 1)[:, :, ::-1]
                                   .reshape(-1).tolist()}]}).encode()


async def restart(server: Server, how: str, goods, references, concurrency: int, after_ready: int) -> dict:
    """Clients send good images while the server is stopped (``how``: term or kill) and started again."""
    tally, state = Tally(), {"down": False, "ready_at": None, "first_ok_after": None}
    successes_after = [0]

    async def worker(client, offset):
        number = offset
        while successes_after[0] < after_ready:
            index = number % len(goods)
            ok = await send(client, goods[index], references[index], tally, down=state["down"])
            if ok and state["ready_at"] is not None:
                state["first_ok_after"] = state["first_ok_after"] or time.monotonic() - state["ready_at"]
                successes_after[0] += 1
            number += concurrency

    async def operator():
        await asyncio.sleep(2)  # clients are busy
        state["down"] = True
        code = await asyncio.to_thread(server.stop, signal.SIGTERM if how == "term" else signal.SIGKILL)
        state["exit_code"] = code
        state["ready_at"] = await asyncio.to_thread(server.start)

    async with DetectionClient(parse_server_url(server.url()), api_key=API_KEY, connections=concurrency) as client:
        await asyncio.gather(operator(), *(worker(client, i) for i in range(concurrency)))
    return {"signal": how, "exit_code": state["exit_code"], "recovered_after_s": state["first_ok_after"],
            **tally.as_dict()}


def run(artifact: str, requests: int, concurrency: int, bad: float, restarts: list[str], images=None,
        log: Path | None = None) -> dict:
    log = log or Path(f"/tmp/serve-soak-{os.getpid()}.log")
    server = Server(artifact, log)
    server.start()
    try:
        goods = good_images(images)
        references = asyncio.run(references_of(server.url(), goods))
        rss_before = tree_rss_mb(server.process.pid)
        started = time.monotonic()
        tally = asyncio.run(load(server.url(), goods, references, requests, concurrency, bad))
        report = {"requests": requests, "concurrency": concurrency, "bad_share": bad,
                  "load_seconds": time.monotonic() - started, **tally.as_dict()}
        report["hang_ups"] = hang_ups(server.http, json_body(goods[0]))
        after_hangups = asyncio.run(load(server.url(), goods, references, 2 * concurrency, concurrency, 0))
        report["after_hang_ups"] = after_hangups.as_dict()
        report["rss_mb_before"], report["rss_mb_after"] = rss_before, tree_rss_mb(server.process.pid)
        report["restarts"] = [asyncio.run(restart(server, how, goods, references, min(concurrency, 4), 8))
                              for how in restarts]
        report["stale_removed"] = "left behind by a server that was killed" in log.read_text(errors="replace")
    finally:
        server.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad", type=float, default=0.05, help="share of malformed requests")
    parser.add_argument("--restarts", default="term,kill", help="comma-separated: term, kill (empty: none)")
    parser.add_argument("--images", nargs="*", help="JPEG/PNG files to send (default: synthetic scenes)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    if args.artifact == "tiny":
        import tempfile

        args.artifact = str(tiny_model(Path(tempfile.mkdtemp(prefix="serve-soak-")) / "tiny.onnx"))
    report = run(args.artifact, args.requests, args.concurrency, args.bad,
                 [how for how in args.restarts.split(",") if how], args.images)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    unexpected = report["failed_unexpectedly"] + report["after_hang_ups"]["failed_unexpectedly"] + sum(
        r["failed_unexpectedly"] for r in report["restarts"])
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
