"""Talking to a served model: server URLs, an asyncio detection client (tritonclient, HTTP or gRPC).

A server URL is ``http://HOST:PORT/MODEL`` or ``grpc://HOST:PORT/MODEL`` (MODEL defaults to ``assd``;
``grpcs://`` for gRPC over TLS, ``https://`` through a TLS-terminating proxy); any host. The API key
of ``assd serve --api-key`` comes from the caller or the environment (``ASSD_API_KEY``); every call is
bounded by ``timeout`` seconds (connecting and reading), and calls that could not reach the server
(refused, reset, unavailable) are retried with exponential backoff; every other error is final.
``DetectionClient.detect`` sends one image (encoded bytes or RGB pixels) per request and returns its
``Detections`` in pixels (``protocol.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from assd.errors import UserError
from assd.remote.checks import require_serve_extra
from assd.remote.protocol import (
    INFO_FORMAT,
    INPUT_ENCODED,
    INPUT_PIXELS,
    OUTPUT_INFO,
    OUTPUTS,
    api_key_headers,
    unpack_detections,
)
from assd.runtime.postprocess import Detections, PostprocessConfig

URL_PATTERN = re.compile(r"^(?P<protocol>https?|grpcs?)://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(?P<port>\d+)"
                         r"(?:/(?P<model>[A-Za-z0-9_.-]*))?/?$")
URL_HELP = "http://HOST:PORT/MODEL or grpc://HOST:PORT/MODEL, e.g. http://127.0.0.1:8000/assd"
API_KEY_ENV = "ASSD_API_KEY"
TLS_ROOT_ENV = "ASSD_TLS_ROOT_CERT"  # grpcs:// and https://: a private CA's certificate (PEM file)
RETRIES = 3  # connection failures: retried after 0.5, 1 and 2 s


def is_server_url(text: str | None) -> bool:
    return bool(text) and str(text).startswith(("http://", "grpc://", "https://", "grpcs://"))


def api_key_from(api_key: str | None) -> str | None:
    """``api_key``, else ``$ASSD_API_KEY``, else None."""
    return api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)


@dataclass(frozen=True)
class ServerAddress:
    protocol: str  # "http", "grpc", or with TLS "https", "grpcs"
    host: str
    port: int
    model: str = "assd"

    @property
    def transport(self) -> str:
        """``http`` or ``grpc`` (the tritonclient module)."""
        return "grpc" if self.protocol.startswith("grpc") else "http"

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("s")

    @property
    def endpoint(self) -> str:
        """``host:port`` as tritonclient takes it."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.endpoint}/{self.model}"


def parse_server_url(text: str, option: str = "server URL") -> ServerAddress:
    """``ServerAddress`` of ``text`` (any host); UserError for malformed URLs."""
    match = URL_PATTERN.match(text.strip())
    if match is None:
        raise UserError(f"{option} {text}: not a server URL: expected {URL_HELP}")
    host, port = match["host"], int(match["port"])
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

    @classmethod
    def from_server(cls, url: str, probe_image: np.ndarray, *, api_key: str | None = None,
                    timeout: float = 60.0) -> ServedModel:
        """The description of the model served at ``url`` (one request on ``probe_image``; blocking)."""
        address = parse_server_url(url)

        async def ask():
            async with DetectionClient(address, timeout=timeout, api_key=api_key) as client:
                await client.check_ready()
                return await client.served_model(probe_image)

        return asyncio.run(ask())


def is_connection_failure(exc: BaseException) -> bool:
    """True for errors meaning the request did not reach a server (worth a retry): refused or reset
    connections, gRPC UNAVAILABLE. Timeouts and the server's own answers are final."""
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, asyncio.TimeoutError):
            return True
    except ImportError:
        pass
    status = getattr(exc, "status", None)
    return callable(status) and status() == "StatusCode.UNAVAILABLE"


class DetectionClient:
    """Async client of one served model (use ``async with``). Every call is bounded by ``timeout``
    seconds; ``connections`` caps the HTTP connections (gRPC multiplexes one channel); ``api_key``
    (default ``$ASSD_API_KEY``) is sent as ``x-api-key``; connection failures are retried ``retries``
    times with backoff."""

    def __init__(self, address: ServerAddress, timeout: float = 60.0, connections: int = 100,
                 api_key: str | None = None, retries: int = RETRIES):
        require_serve_extra("talking to a Triton server")
        if not timeout > 0:
            raise UserError(f"--timeout {timeout}: must be more than 0 seconds")
        self.address, self.timeout, self.retries = address, float(timeout), retries
        self.headers = api_key_headers(api_key_from(api_key), address.transport) or None
        root = os.environ.get(TLS_ROOT_ENV)
        if address.transport == "http":
            import tritonclient.http as module
            from tritonclient.http import aio

            context = None
            if address.tls and root:
                import ssl

                context = ssl.create_default_context(cafile=root)
            self.client = aio.InferenceServerClient(address.endpoint, conn_limit=connections, conn_timeout=timeout,
                                                    ssl=address.tls, ssl_context=context)
        else:
            import tritonclient.grpc as module
            from tritonclient.grpc import aio

            self.client = aio.InferenceServerClient(address.endpoint, ssl=address.tls,
                                                    root_certificates=root if address.tls else None)
        self.module = module

    async def __aenter__(self):
        return self

    async def __aexit__(self, *_) -> None:
        await self.client.close()

    def _options(self) -> dict:
        options = {"headers": self.headers}
        return options if self.address.transport == "http" else {**options, "client_timeout": self.timeout}

    async def _call(self, method, *args, **kwargs):
        """``method(*args, **kwargs, headers, timeout)``, retried on connection failures (0.5, 1, 2 s ...)."""
        for attempt in range(self.retries + 1):
            try:
                return await method(*args, **kwargs, **self._options())
            except Exception as exc:
                if attempt == self.retries or not is_connection_failure(exc):
                    raise
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def check_ready(self) -> None:
        """UserError when the server cannot be reached or does not serve the model."""
        try:
            ready = await self._call(self.client.is_model_ready, self.address.model)
        except Exception as exc:  # noqa: BLE001 - connection errors come as several types
            raise UserError(f"{self.address}: no Triton server answers ({error_message(exc)[:160]}): start "
                            "one with 'assd serve ARTIFACT', or check the host, port and firewall") from None
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
        result = await self._call(self.client.infer, self.address.model, self._inputs(image), outputs=requested,
                                  parameters=parameters or None)
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
        if self.address.transport == "http":
            stats = await self._call(self.client.get_inference_statistics, self.address.model)
        else:
            stats = await self._call(self.client.get_inference_statistics, self.address.model, as_json=True)
        return stats["model_stats"][0]


def error_message(exc: Exception) -> str:
    """One line for a server error. pytriton sends whole Python tracebacks (``Traceback ... pkg.Error: text
    ... At: ...``): their error line is kept, without the exception's module path."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "no answer within the timeout (--timeout)"
    text = str(exc.message() if callable(getattr(exc, "message", None)) else exc)
    lines = [line.strip() for line in text.split("\n\nAt:")[0].splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception|BadRequest): ", "", lines[-1])
