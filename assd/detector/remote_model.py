"""A model served by ``assd serve``, behind the same two calls as a local runner (``prepare``, ``run``).

The server pre-processes and post-processes (the same ``assd.runtime`` code), so ``prepare`` only
passes the images on; ``run`` sends them concurrently over one ``assd.remote.client.DetectionClient``,
driven by an asyncio loop on a private thread (the client is async, the ``Detector`` API is not).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from assd.errors import UserError
from assd.remote.client import DetectionClient, error_message, parse_server_url
from assd.runtime.postprocess import Detections, PostprocessConfig


class RemoteModel:
    """Opened on a server URL (``http://HOST:PORT/MODEL`` or ``grpc://...``); raises ``UserError`` when no
    assd model answers. ``cfg``, ``postprocess`` and ``rows`` come from the server's ``model_info``."""

    backend = "server"

    def __init__(self, url: str, timeout: float = 30.0, api_key: str | None = None):
        self.address = parse_server_url(url, "artifact URL")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="assd-remote-client", daemon=True)
        self.thread.start()
        options = {"timeout": timeout, "api_key": api_key}
        try:
            self.client = self._call(self._open(options))
        except BaseException:
            self.close()
            raise
        served = self.served
        self.cfg, self.postprocess, self.rows = served.cfg, served.postprocess.to_dict(), served.rows
        self.precision = str(served.described.get("precision", "served"))
        self.artifact = str(self.address)

    async def _open(self, options: dict) -> DetectionClient:
        client = DetectionClient(self.address, **options)
        await client.check_ready()
        self.served = await client.served_model(np.zeros((32, 32, 3), np.uint8))
        return client

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def prepare(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(image) for image in images]

    def run(self, images: list[np.ndarray], sizes, postprocess_cfg: PostprocessConfig) -> list[Detections]:
        """Pixel detections of each image, one request per image, all in flight together."""
        cap = min(postprocess_cfg.max_detections or self.rows, self.rows)  # the server pads to its rows
        request = PostprocessConfig(postprocess_cfg.score_threshold, postprocess_cfg.nms_iou, postprocess_cfg.top_k,
                                    cap)

        async def detect_all():
            return await asyncio.gather(*(self.client.detect(image, request) for image in images))

        try:
            return self._call(detect_all())
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - tritonclient's errors and transport failures
            raise UserError(f"{self.address}: the server refused or failed a request ({error_message(exc)})") from None

    def detect(self, images: Sequence[np.ndarray], postprocess_cfg: PostprocessConfig) -> list[Detections]:
        return self.run(self.prepare(images), None, postprocess_cfg)

    def describe(self) -> dict:
        return {"artifact": self.artifact, "backend": "server", "precision": self.precision,
                "device": f"served at {self.address.endpoint}", "max_batch": None, "model": self.cfg.name,
                "outputs": "detections"}

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            client, self.client = self.client, None
            try:
                self._call(client.__aexit__(None, None, None))
            except Exception:  # noqa: BLE001, S110 - closing a connection that already failed
                pass
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5.0)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
