"""``assd serve``: a checkpoint, ``.onnx`` or ``.engine`` behind a real Triton Inference Server.

nvidia-pytriton starts the ``tritonserver`` it bundles and binds our inference callable as a model:
Triton owns HTTP/gRPC, health/ready, Prometheus metrics, statistics and dynamic batching; each model
instance (``--instances``) is a ``DetectorCallable`` around its own runner, which decodes the images of
the batch Triton formed, pre-processes them on the runner's device (``assd.runtime.preprocess``),
runs the network and decodes + NMS (``assd.runtime.postprocess``) — the code ``assd eval`` runs, so
served detections are the direct runner's. The request/response contract is ``protocol.py``.

pytriton answers errors per batch: a request Triton itself refuses (unknown model, wrong dtype or
shape, batch too large) never reaches the model, but one whose bytes are not an image fails together
with the requests dynamic batching put beside it. The server keeps serving either way.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from assd.errors import CheckFailed, UserError
from assd.models.assd import priors_for
from assd.remote.protocol import (
    INPUT_ENCODED,
    INPUT_PIXELS,
    OUTPUT_INFO,
    BadRequest,
    check_serving_options,
    detect_in_pixels,
    model_info,
    pack_detections,
    request_images,
    request_postprocess,
)
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.preprocess import preprocess
from assd.runtime.runners import Runner, open_runner
from assd.serving.environment import (
    check_port_free,
    require_loopback,
    require_serve_extra,
    use_this_interpreter_for_stubs,
)

MAX_INSTANCES = 64  # model instances (each holds its own runner and weights)

# Triton endpoints that stay behind pytriton's access token; statistics stay open (assd bench --server).
PROTECTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    model_name: str = "assd"
    device: str = "auto"

    def check(self) -> None:
        require_loopback(self.host, "--host")
        check_serving_options(self.model_name, self.max_batch)
        for option, value, least, most in (("--instances", self.instances, 1, MAX_INSTANCES),
                                           ("--max-queue-delay-us", self.max_queue_delay_us, 0, 10**7)):
            if not least <= value <= most:
                raise UserError(f"{option} {value}: must be in {least}..{most}")
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise UserError(f"{', '.join(f'{k} {v}' for k, v in ports.items())}: the three ports must differ")
        for option, port in ports.items():
            check_port_free(self.host, port, option)


class DetectorCallable:
    """The inference callable of one model instance: a batch of Triton requests -> detections.

    Every image of every request goes through one pre-processing, one network call and one decode +
    NMS per distinct threshold setting; the outputs are padded to ``rows`` per image.
    """

    def __init__(self, runner: Runner, postprocess_cfg: PostprocessConfig, rows: int, info_json: str):
        self.runner, self.cfg, self.postprocess_cfg, self.rows = runner, runner.cfg, postprocess_cfg, rows
        self.priors = priors_for(runner.cfg).to(runner.device)
        self.info = np.array([info_json.encode()], dtype=np.object_)
        # A fixed-batch ONNX file takes exactly its batch: the batch is padded up to it (the padding's
        # outputs are dropped). The TensorRT runner pads to its profile's minimum itself.
        self.pad_to = runner.max_batch if runner.backend.startswith("onnxruntime") else None

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        images, counts, settings = [], [], []
        for number, request in enumerate(requests):
            try:
                request_imgs = request_images(request.data)
                setting = request_postprocess(request.parameters, self.postprocess_cfg, self.rows, self.cfg.num_classes)
            except BadRequest as exc:
                raise BadRequest(f"request {number + 1} of a batch of {len(requests)}: {exc}") from None
            images += request_imgs
            counts.append(len(request_imgs))
            settings += [setting] * len(request_imgs)
        detections = self.detect(images, settings)
        responses, start = [], 0
        for request, count in zip(requests, counts):
            mine, start = detections[start:start + count], start + count
            response = pack_detections(mine, self.rows)
            if OUTPUT_INFO in (request.requested_output_names or ()):
                response[OUTPUT_INFO] = np.repeat(self.info[None], len(mine), axis=0)
            responses.append(response)
        return responses

    def detect(self, images: list[np.ndarray], settings: list[PostprocessConfig]):
        with torch.inference_mode():
            batch = preprocess(images, self.cfg, self.runner.device)
            if self.pad_to and len(images) < self.pad_to:
                padding = batch.new_zeros((self.pad_to - len(images), *batch.shape[1:]))
                batch = torch.cat([batch, padding])
            loc, conf = self.runner.infer(batch)
            loc, conf = loc[: len(images)].to(self.runner.device), conf[: len(images)].to(self.runner.device)
            sizes = [image.shape[:2] for image in images]
            return detect_in_pixels(loc, conf, sizes, self.cfg, settings, self.priors)


def model_tensors(rows: int):
    """pytriton's input and output specifications (``protocol.py``)."""
    from pytriton.model_config import Tensor

    inputs = [Tensor(name=INPUT_ENCODED, dtype=np.bytes_, shape=(1,), optional=True),
              Tensor(name=INPUT_PIXELS, dtype=np.uint8, shape=(-1, -1, 3), optional=True)]
    outputs = [Tensor(name="boxes", dtype=np.float32, shape=(rows, 4)),
               Tensor(name="scores", dtype=np.float32, shape=(rows,)),
               Tensor(name="classes", dtype=np.int64, shape=(rows,)),
               Tensor(name="count", dtype=np.int64, shape=(1,)),
               Tensor(name=OUTPUT_INFO, dtype=np.bytes_, shape=(1,))]
    return inputs, outputs


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT and SIGTERM set ``stop`` (so the server shuts down in order) while inside the block."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _server_log_tail(triton, lines: int = 15) -> str:
    server = getattr(triton, "_triton_server", None)  # pytriton keeps tritonserver's output here
    log = getattr(server, "_tritonserver_logs", "") or ""
    return "\n".join(log.strip().splitlines()[-lines:])


def serve(artifact: str, options: ServeOptions = ServeOptions(), echo: Callable[[str], None] = print) -> None:
    """Serve ``artifact`` until SIGINT or SIGTERM; see the module docstring."""
    options.check()
    require_serve_extra("assd serve")
    runner = open_runner(artifact, device=options.device)
    if runner.outputs != "raw":
        raise UserError(f"{artifact}: exported --with-postprocess (it outputs padded detections); assd serve runs "
                        "the decode and NMS itself: serve an export without --with-postprocess")
    runners = [runner] + [open_runner(artifact, device=options.device) for _ in range(options.instances - 1)]
    max_batch = min(options.max_batch, runner.max_batch or options.max_batch)
    if max_batch < options.max_batch:
        echo(f"note: {artifact} accepts batches up to {runner.max_batch}: --max-batch lowered to {max_batch}")
    postprocess_cfg = PostprocessConfig.from_dict(runner.postprocess)
    rows = postprocess_cfg.max_per_image(runner.cfg.num_classes)
    info = model_info(runner.cfg, postprocess_cfg, rows, model_name=options.model_name, artifact=str(artifact),
                      backend=runner.backend, precision=runner.precision, max_batch=max_batch)
    callables = [DetectorCallable(r, postprocess_cfg, rows, info) for r in runners]

    use_this_interpreter_for_stubs()
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(http_address=options.host, http_port=options.http_port, grpc_address=options.host,
                          grpc_port=options.grpc_port, metrics_address=options.host, metrics_port=options.metrics_port,
                          allow_gpu_metrics=torch.cuda.is_available(), exit_timeout_secs=10, log_verbose=0)
    inputs, outputs = model_tensors(rows)
    batching = ModelConfig(max_batch_size=max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=options.max_queue_delay_us))
    stop = threading.Event()
    with stop_on_signals(stop):
        triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=PROTECTED_ENDPOINTS))
        try:
            triton.bind(model_name=options.model_name, infer_func=callables, inputs=inputs, outputs=outputs,
                        config=batching, strict=False)
            try:
                triton.run()
            except Exception as exc:  # noqa: BLE001 - pytriton raises several types; all mean "did not start"
                raise CheckFailed(f"tritonserver did not start ({type(exc).__name__}: {exc}); its log ends:\n"
                                  f"{_server_log_tail(triton)}") from None
            _echo_ready(echo, artifact, runner, options, max_batch)
            while not stop.wait(0.5):
                if not triton.is_alive():
                    raise CheckFailed(f"tritonserver stopped unexpectedly; its log ends:\n{_server_log_tail(triton)}")
        finally:
            echo("stopping tritonserver ...")
            triton.stop()
    echo("stopped")


def _echo_ready(echo, artifact, runner: Runner, options: ServeOptions, max_batch: int) -> None:
    host = f"[{options.host}]" if ":" in options.host else options.host
    echo(f"serving {artifact} [{runner.backend} {runner.precision}, {runner.device}] as model "
         f"'{options.model_name}': {options.instances} instance(s), max batch {max_batch}, queue delay "
         f"{options.max_queue_delay_us} us")
    echo(f"  HTTP    http://{host}:{options.http_port}/{options.model_name}   "
         f"(health: /v2/health/ready, stats: /v2/models/{options.model_name}/stats)")
    echo(f"  gRPC    grpc://{host}:{options.grpc_port}/{options.model_name}")
    echo(f"  metrics http://{host}:{options.metrics_port}/metrics")
    echo("ready (Ctrl-C or SIGTERM stops it)")
