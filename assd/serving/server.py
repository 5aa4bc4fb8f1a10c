"""``assd serve``: a checkpoint, ``.onnx`` or ``.engine`` behind a real Triton Inference Server.

nvidia-pytriton starts the ``tritonserver`` it bundles on a model repository written here: one
Python-backend model (``triton_python/serve_model.py``) whose instances (``--instances``) each hold
their own runner (``assd.serving.served``). Triton owns HTTP/gRPC, health/ready, Prometheus metrics,
statistics and dynamic batching; each instance decodes the requests of the batch Triton formed, one
by one, answers a malformed one with its own error, pre-processes the rest on the runner's device
(``assd.runtime.preprocess``), runs the network and decodes + NMS (``assd.runtime.postprocess``) —
the code ``assd eval`` runs, so served detections are the direct runner's. The contract is
``assd.remote.protocol``; access control and TLS are ``access.py``.

(pytriton's own ``bind`` of a Python callable answers errors per *batch*: one bad request failed every
request batched with it. A native Python-backend model answers each request, hence this design.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import assd
from assd.errors import CheckFailed, UserError
from assd.remote.protocol import (
    INPUT_ENCODED,
    INPUT_PIXELS,
    MAX_PIXELS,
    OUTPUT_INFO,
    OUTPUTS,
    check_serving_options,
)
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.runners import Runner, open_runner
from assd.serving import access, workspace
from assd.serving.environment import check_port_free, require_serve_extra, use_this_interpreter_for_stubs

MAX_INSTANCES = 64  # model instances (each holds its own runner and weights)
SERVE_MODEL = Path(__file__).parent / "triton_python" / "serve_model.py"


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
    api_key: str | None = None
    grpc_ssl_cert: str | None = None
    grpc_ssl_key: str | None = None
    grpc_ssl_root: str | None = None

    def check(self) -> dict:
        """UserError for bad options; returns the gRPC TLS settings."""
        check_serving_options(self.model_name, self.max_batch)
        if self.api_key is not None:
            access.check_key(self.api_key, "--api-key")
        for option, value, least, most in (("--instances", self.instances, 1, MAX_INSTANCES),
                                           ("--max-queue-delay-us", self.max_queue_delay_us, 0, 10**7)):
            if not least <= value <= most:
                raise UserError(f"{option} {value}: must be in {least}..{most}")
        tls = access.tls_settings(self.grpc_ssl_cert, self.grpc_ssl_key, self.grpc_ssl_root)
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise UserError(f"{', '.join(f'{k} {v}' for k, v in ports.items())}: the three ports must differ")
        for option, port in ports.items():
            check_port_free(self.host, port, option)
        return tls

    def triton_config(self, tls: dict):
        """pytriton's ``TritonConfig`` (addresses, ports, TLS, metrics)."""
        from pytriton.triton import TritonConfig

        return TritonConfig(http_address=self.host, http_port=self.http_port, grpc_address=self.host,
                            grpc_port=self.grpc_port, metrics_address=self.host, metrics_port=self.metrics_port,
                            allow_gpu_metrics=torch.cuda.is_available(), exit_timeout_secs=10, log_verbose=0, **tls)


def serve_model_config(pb, options: ServeOptions, artifact: str, max_batch: int, rows: int):
    """The ``config.pbtxt`` (Triton's ``ModelConfig`` protobuf) of the served model."""
    config = pb.ModelConfig(name=options.model_name, backend="python", max_batch_size=max_batch)
    for name, data_type, dims in ((INPUT_ENCODED, "TYPE_STRING", [1]), (INPUT_PIXELS, "TYPE_UINT8", [-1, -1, 3])):
        tensor = config.input.add(name=name, data_type=pb.DataType.Value(data_type), optional=True)
        tensor.dims.extend(dims)
    dims = {"boxes": [rows, 4], "scores": [rows], "classes": [rows], "count": [1], OUTPUT_INFO: [1]}
    types = {"boxes": "TYPE_FP32", "scores": "TYPE_FP32", "classes": "TYPE_INT64", "count": "TYPE_INT64",
             OUTPUT_INFO: "TYPE_STRING"}
    for name in (*OUTPUTS, OUTPUT_INFO):
        config.output.add(name=name, data_type=pb.DataType.Value(types[name])).dims.extend(dims[name])
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.instance_group.add(count=options.instances, kind=pb.ModelInstanceGroup.Kind.KIND_CPU)
    described = {"model_name": options.model_name, "max_batch": max_batch}
    for key, value in (("assd_artifact", str(Path(artifact).resolve()) if Path(artifact).exists() else artifact),
                       ("assd_device", options.device), ("assd_described", json.dumps(described)),
                       ("assd_max_pixels", str(MAX_PIXELS)), ("assd_root", str(Path(assd.__file__).parents[1]))):
        config.parameters[key].string_value = value
    return config


def write_serve_repository(folder: Path, options: ServeOptions, artifact: str, max_batch: int, rows: int) -> Path:
    """``folder/models/<name>/{config.pbtxt, 1/model.py}``; returns the repository folder."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    repository = folder / "models"
    (repository / options.model_name / "1").mkdir(parents=True)
    config = serve_model_config(pb, options, artifact, max_batch, rows)
    (repository / options.model_name / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copyfile(SERVE_MODEL, repository / options.model_name / "1" / "model.py")
    return repository


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT and SIGTERM set ``stop`` (so the server shuts down in order) while inside the block."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ServerLog:
    """tritonserver's log file (``--log-file``): new lines are passed on to ``echo`` as they come."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.echo, self.offset = path, echo, 0

    def forward(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                text = log.read()
        except OSError:
            return
        complete = text.rfind(b"\n") + 1
        self.offset += complete
        for line in text[:complete].decode(errors="replace").splitlines():
            self.echo(line)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


def check_artifact(artifact: str, options: ServeOptions, echo: Callable[[str], None]) -> tuple[Runner, int, int]:
    """(runner, max batch, detection rows) of ``artifact``; UserError for what cannot be served."""
    runner = open_runner(artifact, device=options.device)
    if runner.outputs != "raw":
        raise UserError(f"{artifact}: exported --with-postprocess (it outputs padded detections); assd serve runs "
                        "the decode and NMS itself: serve an export without --with-postprocess")
    max_batch = min(options.max_batch, runner.max_batch or options.max_batch)
    if max_batch < options.max_batch:
        echo(f"note: {artifact} accepts batches up to {runner.max_batch}: --max-batch lowered to {max_batch}")
    rows = PostprocessConfig.from_dict(runner.postprocess).max_per_image(runner.cfg.num_classes)
    return runner, max_batch, rows


def serve(artifact: str, options: ServeOptions = ServeOptions(), echo: Callable[[str], None] = print,
          log: Callable[[str], None] | None = None) -> None:
    """Serve ``artifact`` until SIGINT or SIGTERM; see the module docstring. ``log`` receives tritonserver's
    log lines (default: ``echo``)."""
    tls = options.check()
    require_serve_extra("assd serve")
    warning = access.open_address_warning(options.host, options.api_key)
    if warning:
        echo(warning)
    runner, max_batch, rows = check_artifact(artifact, options, echo)
    described = f"{runner.backend} {runner.precision}, {runner.device}"
    del runner  # each model instance opens its own
    for stale in workspace.remove_stale():
        echo(f"removed {stale}: left behind by a server that was killed")
    folder = workspace.make_workspace(os.getpid())
    try:
        repository = write_serve_repository(folder, options, artifact, max_batch, rows)
        _run(options, tls, repository, folder, ServerLog(folder / "tritonserver.log", log or echo),
             lambda: _echo_ready(echo, artifact, described, options, max_batch), echo)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    echo("stopped")


def _run(options: ServeOptions, tls: dict, repository: Path, folder: Path, server_log: ServerLog,
         ready: Callable[[], None], echo: Callable[[str], None]) -> None:
    use_this_interpreter_for_stubs()
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))  # inherited by the model's stubs
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    from pytriton.triton import Triton

    config = options.triton_config(tls)
    config.model_repository, config.log_file = repository, server_log.path
    stop = threading.Event()
    with stop_on_signals(stop):
        with access.pytriton_header(options.api_key):
            triton = Triton(config=config, security_config=access.security_config(options.api_key),
                            workspace=folder / "pytriton")
        try:
            try:
                with access.pytriton_header(options.api_key):
                    triton.run()
            except Exception as exc:  # noqa: BLE001 - pytriton raises several types; all mean "did not start"
                server_log.forward()
                raise CheckFailed(f"tritonserver did not start ({type(exc).__name__}: {str(exc)[:300]}); its log "
                                  f"ends:\n{server_log.tail()}") from None
            server_log.forward()
            ready()
            while not stop.wait(0.5):
                server_log.forward()
                if not triton.is_alive():
                    raise CheckFailed(f"tritonserver stopped unexpectedly; its log ends:\n{server_log.tail()}")
        finally:
            echo("stopping tritonserver ...")
            triton.stop()
            server_log.forward()


def _echo_ready(echo, artifact: str, described: str, options: ServeOptions, max_batch: int) -> None:
    host = f"[{options.host}]" if ":" in options.host else options.host
    grpc = "grpcs" if options.grpc_ssl_cert else "grpc"
    echo(f"serving {artifact} [{described}] as model "
         f"'{options.model_name}': {options.instances} instance(s), max batch {max_batch}, queue delay "
         f"{options.max_queue_delay_us} us")
    echo(f"  HTTP    http://{host}:{options.http_port}/{options.model_name}   "
         f"(health: /v2/health/ready, stats: /v2/models/{options.model_name}/stats)")
    echo(f"  gRPC    {grpc}://{host}:{options.grpc_port}/{options.model_name}")
    echo(f"  metrics http://{host}:{options.metrics_port}/metrics")
    if options.api_key:
        echo(f"  access  every endpoint but /v2/health/* needs the header '{access.API_KEY_HEADER}: KEY'")
    echo("ready (Ctrl-C or SIGTERM stops it)")
