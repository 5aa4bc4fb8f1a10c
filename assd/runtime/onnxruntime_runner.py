"""``OnnxRuntimeRunner``: an assd ONNX file (any precision) on ONNX Runtime.

Which provider runs the graph is read from the session (``session.get_providers()``), never from
``ort.get_available_providers()``: that lists the providers compiled into the wheel, not those that
load (an onnxruntime-gpu built for CUDA 13 on a CUDA 12 machine lists CUDA and TensorRT, then runs on
the CPU). ONNX Runtime's TensorRT provider gets an engine cache, a timing cache and the optimization
profile of ``assd build-engine`` (``tensorrt_options``), so that it neither rebuilds its engines for
every session nor for every new batch size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from assd.errors import UserError, short_reason
from assd.runtime.base import Runner
from assd.runtime.fp16_preview import preview_session
from assd.runtime.graph_outputs import GraphOutputs
from assd.runtime.int8_target import refuse_cpu_target
from assd.runtime.metadata import read_metadata

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
BACKENDS = {"TensorrtExecutionProvider": "onnxruntime-trt", "CUDAExecutionProvider": "onnxruntime-cuda",
            "CPUExecutionProvider": "onnxruntime"}
logger = logging.getLogger("assd.runtime")
PROFILE_BATCH = (1, 8, 32)  # min, opt, max of a dynamic batch (assd build-engine's default --batch)


def tensorrt_cache_dir(onnx_path: str | Path) -> Path:
    """Where ONNX Runtime's TensorRT provider keeps the engines and timing cache of ``onnx_path``:
    ``$ASSD_ORT_TRT_CACHE`` (default ``~/.cache/assd/onnxruntime-tensorrt``) / the file's SHA-256 prefix.
    One folder per content: the provider names its engines after the model's path and node names, not
    its weights, and "the cache must be cleaned up when the model changes" (ORT's documentation)."""
    digest = hashlib.sha256()
    with open(onnx_path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    default = Path.home() / ".cache" / "assd" / "onnxruntime-tensorrt"
    return Path(os.environ.get("ASSD_ORT_TRT_CACHE", default)) / digest.hexdigest()[:16]


def tensorrt_options(input_size: int, fixed_batch: int | None, cache_dir: Path) -> dict[str, str]:
    """TensorRT execution provider options: engine + timing caches in ``cache_dir`` and the profile of the
    ``images`` input ([B, 3, S, S], B = the fixed batch or 1:8:32)."""
    low, opt, high = (fixed_batch,) * 3 if fixed_batch else PROFILE_BATCH
    def shape(batch: int) -> str:
        return f"images:{batch}x3x{input_size}x{input_size}"

    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir),
            "trt_profile_min_shapes": shape(low), "trt_profile_opt_shapes": shape(opt),
            "trt_profile_max_shapes": shape(high)}


def session_provider(session) -> str:
    """The provider a live ONNX Runtime session runs on (its first one)."""
    return next(iter(session.get_providers()))


def requested_providers(provider: str) -> list[str]:
    """The providers to ask ONNX Runtime for, by priority: a node runs on the first one that takes it
    (TensorRT, then CUDA for what TensorRT does not take, then CPU)."""
    chain = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[provider]
    return [PROVIDER_NAMES[name] for name in chain]


class OnnxRuntimeRunner(GraphOutputs, Runner):
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when asked and available.

    ``backend`` names the provider the session actually uses (``session.get_providers()``): ONNX
    Runtime falls back silently when a provider fails to load (e.g. TensorRT libraries missing), and a
    fallback is said once.
    """

    backend = "onnxruntime"

    def __init__(self, path: str, device: torch.device, provider: str | None = None, threads: int | None = None,
                 fp16_preview: bool = True):
        super().__init__()
        import onnxruntime as ort

        from assd.runtime.postprocess import PostprocessConfig

        metadata = read_metadata(path)
        self.artifact, self.cfg, self.precision = str(path), metadata.model_config, metadata.precision
        self.postprocess, self.max_batch, self.outputs = metadata.postprocess, metadata.fixed_batch, metadata.outputs
        self.exported_postprocess = PostprocessConfig.from_dict(metadata.postprocess)
        requested = requested_providers(self._provider(ort, device, provider))
        providers: list = list(requested)
        if requested[0] == PROVIDER_NAMES["tensorrt"]:
            refuse_cpu_target(path, "ONNX Runtime's TensorRT provider")
            cache_dir = tensorrt_cache_dir(path)
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{cache_dir}: cannot create ONNX Runtime's TensorRT cache folder ({exc.strerror}): "
                                "set ASSD_ORT_TRT_CACHE to a writable folder") from None
            providers[0] = (requested[0], tensorrt_options(self.cfg.input_size, self.max_batch, cache_dir))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            if fp16_preview and requested[0] == "CPUExecutionProvider" and self.precision != "fp32":
                # fp16 tensors rounded as the engine stores them (ORT's CPU provider would run them in fp32)
                self.session = preview_session(path, options)
            else:
                self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
            raise UserError(f"{path}: ONNX Runtime cannot load it ({short_reason(exc)})") from None
        self.providers = list(self.session.get_providers())
        self.backend = BACKENDS.get(session_provider(self.session), self.providers[0])
        if self.providers[0] != requested[0]:
            logger.warning("%s: ONNX Runtime could not use %s and runs on %s instead", path, requested[0],
                           self.providers[0])
        self.device = torch.device("cpu") if self.providers[0] == "CPUExecutionProvider" else torch.device("cuda")

    @staticmethod
    def _provider(ort, device: torch.device, provider: str | None) -> str:
        if provider in (None, "auto"):
            provider = "cuda" if device.type == "cuda" else "cpu"
        if provider not in PROVIDER_NAMES:
            raise UserError(f"unknown ONNX Runtime provider '{provider}': use cpu, cuda or tensorrt")
        if provider != "cpu" and not torch.cuda.is_available():
            raise UserError(f"ONNX Runtime provider '{provider}' needs a CUDA GPU; none is available: use cpu")
        if PROVIDER_NAMES[provider] not in ort.get_available_providers():
            raise UserError(f"this onnxruntime build has no {PROVIDER_NAMES[provider]}: install onnxruntime-gpu "
                            "for torch's CUDA major (pip install -e '.[tensorrt-cu12]': 1.22-1.26, CUDA 12; "
                            "'.[tensorrt-cu13]': 1.27+, CUDA 13)")
        return provider

    def _run(self, images: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        self.check_batch(images.shape[0])
        feed = {"images": np.ascontiguousarray(images.detach().float().cpu().numpy())}
        return [torch.from_numpy(array).to(self.device) for array in self.session.run(names, feed)]
