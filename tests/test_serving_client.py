"""The serving client and contract without a server: image sizes from headers (decompression bombs),
retries of connection failures only, the per-call timeout (against a silent loopback socket)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from assd.remote import protocol
from assd.remote.client import parse_server_url


def test_image_sizes_are_read_from_headers_before_decoding():
    """A 16000x16000 PNG of a few hundred bytes is refused from its header (no 768 MB decode)."""
    import zlib

    from assd.remote.image_header import header_size

    formats = {".png": [], ".jpg": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], ".bmp": [], ".webp": [cv2.IMWRITE_WEBP_QUALITY, 50]}
    for suffix, flags in [*formats.items(), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".jpg", [])]:
        ok, data = cv2.imencode(suffix, np.zeros((31, 77, 3), np.uint8), flags)
        assert ok and header_size(data.tobytes()) == (77, 31), suffix
    assert header_size(b"II*\0 a tiff") is None and header_size(b"") is None and header_size(b"\xff\xd8\xff") is None
    rows = zlib.compress(b"\0" * (16000 * 3 + 1) * 16, 9)  # 16 of the 16000 rows: the header declares the rest
    chunk = b"IHDR" + (16000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    bomb = b"\x89PNG\r\n\x1a\n" + len(chunk[4:]).to_bytes(4, "big") + chunk + b"\0" * 4 + rows
    assert header_size(bomb) == (16000, 16000) and len(bomb) < 2000
    with pytest.raises(protocol.BadRequest, match="declares 16000x16000 pixels"):
        protocol.decode_image(bomb)


def test_client_retries_connection_failures_only_and_bounds_each_call(monkeypatch):
    """Connection failures are retried with backoff, server answers and timeouts are final; a server that
    accepts and never answers is cut off by ``timeout`` (a silent loopback socket)."""
    aiohttp = pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[serve]')")
    pytest.importorskip("tritonclient.http", reason="the serve extra is not installed (pip install -e '.[serve]')")
    import asyncio
    import socket

    from tritonclient.utils import InferenceServerException

    from assd.remote.client import DetectionClient, error_message

    sleeps = []

    async def no_wait(seconds):
        sleeps.append(seconds)

    async def run(failures):
        attempts = []

        async def method(**_):
            attempts.append(1)
            if len(attempts) <= len(failures):
                raise failures[len(attempts) - 1]
            return "answer"

        async with DetectionClient(parse_server_url("http://127.0.0.1:9/assd"), retries=3) as client:
            monkeypatch.setattr(asyncio, "sleep", no_wait)
            try:
                return await client._call(method), len(attempts)
            except Exception as exc:  # noqa: BLE001 - the final error is the result
                return exc, len(attempts)
            finally:
                monkeypatch.undo()

    assert asyncio.run(run([aiohttp.ServerDisconnectedError()] * 2)) == ("answer", 3) and sleeps == [0.5, 1.0]
    exc, attempts = asyncio.run(run([aiohttp.ServerDisconnectedError()] * 5))
    assert isinstance(exc, aiohttp.ServerDisconnectedError) and attempts == 4  # 1 + 3 retries
    grpc_down = InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
    assert asyncio.run(run([grpc_down]))[1] == 2
    for final in (InferenceServerException("image 0: 4 bytes ...", status="400"), asyncio.TimeoutError()):
        exc, attempts = asyncio.run(run([final]))
        assert exc is final and attempts == 1

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)

        async def ask():
            address = parse_server_url(f"http://127.0.0.1:{silent.getsockname()[1]}/assd")
            async with DetectionClient(address, timeout=1.0) as client:
                try:
                    await client.infer(np.zeros((4, 4, 3), np.uint8))
                except Exception as exc:  # noqa: BLE001 - its message is checked
                    return error_message(exc)

        assert asyncio.run(ask()) == "no answer within the timeout (--timeout)"
