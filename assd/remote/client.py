"""Talking to a served model: server URLs, an asyncio detection client (tritonclient, HTTP or gRPC).

A server URL is ``http://HOST:PORT/MODEL`` or ``grpc://HOST:PORT/MODEL`` (MODEL defaults to ``assd``);
only loopback hosts are accepted here. ``DetectionClient.detect`` sends one image (encoded bytes or
RGB pixels) per request and returns its ``Detections`` in pixels (``protocol.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from assd.errors import UserError
from assd.remote.checks import require_loopback, require_serve_extra
from assd.remote.protocol import (
    INFO_FORMAT,
    INPUT_ENCODED,
    INPUT_PIXELS,
    OUTPUT_INFO,
    OUTPUTS,
    unpack_detections,
)
from assd.runtime.postprocess import Detections, PostprocessConfig

URL_PATTERN = re.compile(r"^(?P<protocol>http|grpc)://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(?P<port>\d+)"
                         r"(?:/(?P<model>[A-Za-z0-9_.-]*))?/?$")
URL_HELP = "http://HOST:PORT/MODEL or grpc://HOST:PORT/MODEL, e.g. http://127.0.0.1:8000/assd"


def is_server_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("http://", "grpc://"))


@dataclass(frozen=True)
class ServerAddress:
    protocol: str  # "http" or "grpc"
    host: str
    port: int
    model: str = "assd"

    @property
    def endpoint(self) -> str:
        """``host:port`` as tritonclient takes it."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.endpoint}/{self.model}"


def parse_server_url(text: str, option: str = "server URL") -> ServerAddress:
    """``ServerAddress`` of ``text``; UserError for malformed URLs and non-loopback hosts."""
    match = URL_PATTERN.match(text.strip())
    if match is None:
        raise UserError(f"{option} {text}: not a server URL: expected {URL_HELP}")
    host, port = match["host"], int(match["port"])
    require_loopback(host, option)
    if not 1 <= port <= 65535:
        raise UserError(f"{option} {text}: port {port} is not in 1..65535")
    return ServerAddress(match["protocol"], host, port, match["model"] or "assd")


@dataclass(frozen=True)
class ServedModel:
    """What a served model says about itself (its ``model_info`` output)."""

    cfg: object  # ModelConfig
    postprocess: PostprocessConfig
    rows: int
    described: dict

    @classmethod
    def from_json(cls, text: str, address: ServerAddress) -> ServedModel:
        from assd.models.config import ModelConfig

        try:
            data = json.loads(text)
            if data.get("format") != INFO_FORMAT:
                raise ValueError("no assd model info")
            return cls(ModelConfig.from_dict(data["model_config"]), PostprocessConfig.from_dict(data["postprocess"]),
                       int(data["rows"]), data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{address}: is not a model served by 'assd serve' ({exc})") from None


class DetectionClient:
    """Async client of one served model (use ``async with``). Every call is bounded by ``timeout_s``;
    ``connections`` caps the HTTP connections (gRPC multiplexes one channel)."""

    def __init__(self, address: ServerAddress, timeout_s: float = 60.0, connections: int = 100):
        require_serve_extra("talking to a Triton server")
        self.address, self.timeout_s = address, timeout_s
        if address.protocol == "http":
            import tritonclient.http as module
            from tritonclient.http import aio

            self.client = aio.InferenceServerClient(address.endpoint, conn_limit=connections, conn_timeout=timeout_s)
        else:
            import tritonclient.grpc as module
            from tritonclient.grpc import aio

            self.client = aio.InferenceServerClient(address.endpoint)
        self.module = module

    async def __aenter__(self):
        return self

    async def __aexit__(self, *_) -> None:
        await self.client.close()

    def _options(self) -> dict:
        return {} if self.address.protocol == "http" else {"client_timeout": self.timeout_s}

    async def check_ready(self) -> None:
        """UserError when the server cannot be reached or does not serve the model."""
        try:
            ready = await self.client.is_model_ready(self.address.model, **self._options())
        except Exception as exc:  # noqa: BLE001 - connection errors come as several types
            raise UserError(f"{self.address}: no Triton server answers ({str(exc).splitlines()[0][:160]}): start "
                            "one with 'assd serve ARTIFACT'") from None
        if not ready:
            raise UserError(f"{self.address}: the server has no ready model '{self.address.model}': check the "
                            "model name in the URL")

    def _inputs(self, image: np.ndarray | bytes) -> list:
        if isinstance(image, (bytes, bytearray)):
            name, array, datatype = INPUT_ENCODED, np.array([[bytes(image)]], dtype=np.object_), "BYTES"
        else:
            name, array, datatype = INPUT_PIXELS, np.ascontiguousarray(image)[None], "UINT8"
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return [tensor]

    async def infer(self, image: np.ndarray | bytes, outputs: tuple[str, ...] = OUTPUTS,
                    parameters: dict | None = None) -> dict[str, np.ndarray]:
        """The outputs of one request (raises tritonclient's ``InferenceServerException`` on errors)."""
        requested = [self.module.InferRequestedOutput(name) for name in outputs]
        result = await self.client.infer(self.address.model, self._inputs(image), outputs=requested,
                                         parameters=parameters or None, **self._options())
        return {name: result.as_numpy(name) for name in outputs}

    async def detect(self, image: np.ndarray | bytes, postprocess_cfg: PostprocessConfig | None = None) -> Detections:
        """Detections (pixels) of one image; ``postprocess_cfg`` overrides the server's thresholds."""
        parameters = postprocess_cfg.to_dict() if postprocess_cfg is not None else None
        return unpack_detections(await self.infer(image, parameters=parameters))[0]

    async def served_model(self, probe_image: np.ndarray) -> ServedModel:
        """The served model's description (one request on ``probe_image`` asking for ``model_info``)."""
        try:
            outputs = await self.infer(probe_image, outputs=(*OUTPUTS, OUTPUT_INFO))
            text = outputs[OUTPUT_INFO].reshape(-1)[0].decode()
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException, transport, KeyError
            raise UserError(f"{self.address}: not a model served by 'assd serve' (asking for its model_info: "
                            f"{error_message(exc)}); an 'export --triton' ensemble or another model cannot be "
                            f"evaluated through a URL") from None
        return ServedModel.from_json(text, self.address)

    async def statistics(self) -> dict:
        """Triton's inference statistics of the model (the JSON form of both protocols)."""
        if self.address.protocol == "http":
            stats = await self.client.get_inference_statistics(self.address.model)
        else:
            stats = await self.client.get_inference_statistics(self.address.model, as_json=True,
                                                               client_timeout=self.timeout_s)
        return stats["model_stats"][0]


def error_message(exc: Exception) -> str:
    """One line for a server error. pytriton sends whole Python tracebacks (``Traceback ... pkg.Error: text
    ... At: ...``): their error line is kept, without the exception's module path."""
    text = str(exc.message() if callable(getattr(exc, "message", None)) else exc)
    lines = [line.strip() for line in text.split("\n\nAt:")[0].splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception|BadRequest): ", "", lines[-1])
