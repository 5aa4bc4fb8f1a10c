"""``TensorRTRunner``: a serialized TensorRT engine (from ``assd build-engine``) as a ``Runner``.

Before anything is loaded, the engine's sidecar (``model.engine.json``) is checked against this
machine's TensorRT version and GPU (``engine_info.check_compatible``); after loading, the engine's own
I/O tensors and optimization profile are checked against the sidecar, and every input against the
engine before it is bound, each failure one line. Execution (binding by address, the dedicated stream,
CUDA graphs) follows ``IExecutionContext``'s contract in ``tensorrt_execution``.

A batch smaller than the profile's minimum (the last batch of a data set) is padded up to it with
copies of its last image, and the padding is dropped from the outputs. An engine built from an ONNX
exported ``--with-postprocess`` runs too: ``infer_detections`` returns its padded detections.
"""

from __future__ import annotations

from pathlib import Path

import torch

from assd.errors import UserError
from assd.runtime import tensorrt_execution
from assd.runtime.base import Runner
from assd.runtime.engine_info import EngineInfo, check_compatible, read_engine_info
from assd.runtime.tensorrt_execution import EngineExecutor
from assd.runtime.tensorrt_support import import_tensorrt, require_tensorrt

INPUT_NAME = "images"
OUTPUT_NAMES = {"raw": ("loc", "conf"), "detections": ("boxes", "scores", "classes", "count")}


def torch_dtype(trt, data_type) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT8: torch.int8,
             trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
    for name, dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = dtype
    if data_type not in table:
        raise UserError(f"engine tensor type {data_type} has no torch equivalent")
    return table[data_type]


def engine_device(path: str, device: torch.device | str | None) -> torch.device:
    """The CUDA device to run on (UserError for a CPU device: engines run on GPUs only)."""
    device = torch.device("cuda" if device in (None, "auto") else device)
    if device.type != "cuda":
        raise UserError(f"{path}: TensorRT engines run on a CUDA GPU, not on {device}: use --device cuda")
    return device


class TensorRTRunner(Runner):
    """Runs a TensorRT engine; ``cuda_graph=True`` replays one captured CUDA graph per batch size."""

    backend = "tensorrt"

    def __init__(self, path: str, device: torch.device | str | None = None, cuda_graph: bool = False):
        super().__init__()
        from assd.runtime.postprocess import PostprocessConfig

        info = read_engine_info(path)
        require_tensorrt(f"{path}: running a TensorRT engine")
        self.device = engine_device(path, device)
        trt = import_tensorrt(f"{path}: running a TensorRT engine")
        cuda = tensorrt_execution.cuda
        check_compatible(info, trt.__version__, cuda.get_device_capability(self.device),
                         cuda.get_device_name(self.device), engine=str(path))
        self.info, self.artifact, self.cfg, self.outputs = info, str(path), info.config, info.outputs
        self.precision, self.postprocess = info.precision, info.postprocess
        self.exported_postprocess = PostprocessConfig.from_dict(info.postprocess)
        self.min_batch, self.max_batch = info.batch_min, info.batch_max
        self.cuda_graph = cuda_graph
        with cuda.device(self.device):
            engine, dtypes = self._load(trt, path, info)
            self.executor = EngineExecutor(trt, engine, self.device, INPUT_NAME, OUTPUT_NAMES[info.outputs], dtypes,
                                           self.artifact, cuda_graph=cuda_graph)
        self.input_dtype = dtypes[INPUT_NAME]

    def _load(self, trt, path: str, info: EngineInfo):
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if info.version_compatible:
            self.runtime.engine_host_code_allowed = True  # the plan embeds its own (lean) runtime
        engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:  # "the ICudaEngine, or None if it could not be deserialized"
            raise UserError(f"{path}: TensorRT could not deserialize the engine (corrupt, or built by another "
                            "TensorRT/GPU; see its message above): rebuild it with 'assd build-engine'")
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        expected = (INPUT_NAME, *OUTPUT_NAMES[info.outputs])
        if sorted(names) != sorted(expected):
            raise UserError(f"{path}: engine tensors are {names}, its sidecar says {list(expected)}: the sidecar "
                            "belongs to another engine: rebuild it with 'assd build-engine'")
        profile = [tuple(shape) for shape in engine.get_tensor_profile_shape(INPUT_NAME, 0)]  # min, opt, max
        wanted = [(batch, *info.input_shape) for batch in (info.batch_min, info.batch_opt, info.batch_max)]
        if profile != wanted:
            raise UserError(f"{path}: the engine's input profile is {profile}, its sidecar says {wanted}: the "
                            "sidecar belongs to another engine: rebuild it with 'assd build-engine'")
        return engine, {name: torch_dtype(trt, engine.get_tensor_dtype(name)) for name in names}

    def check_batch(self, batch: int) -> None:
        """Batches above the profile's maximum are refused; smaller than its minimum are padded."""
        if not 1 <= batch <= self.max_batch:
            raise UserError(f"{self.artifact}: batch {batch} is outside the engine's range 1..{self.max_batch} "
                            f"(profile {self.min_batch}:{self.info.batch_opt}:{self.max_batch}): use a batch in "
                            "that range or rebuild with --batch MIN:OPT:MAX")

    def _check_images(self, images: torch.Tensor) -> None:
        expected = tuple(self.info.input_shape)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise UserError(f"{self.artifact}: input of shape {tuple(images.shape)}; the engine takes "
                            f"[B, {', '.join(map(str, expected))}] images: pre-process them with "
                            "assd.runtime.preprocess.preprocess")
        self.check_batch(images.shape[0])

    @torch.no_grad()
    def _run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of the engine for ``images`` (padded to the profile's minimum batch and back)."""
        self._check_images(images)
        batch = images.shape[0]
        images = images.to(self.device, self.input_dtype, non_blocking=True)
        if batch < self.min_batch:
            padding = images[-1:].expand(self.min_batch - batch, *images.shape[1:])
            images = torch.cat([images, padding])
        with tensorrt_execution.cuda.device(self.device):
            outputs = self.executor.run(images.contiguous())
        return {name: tensor[:batch] for name, tensor in outputs.items()}

    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.outputs != "raw":
            self.refuse_raw_outputs()
        outputs = self._run(images)
        return outputs["loc"].float(), outputs["conf"].float()

    def infer_detections(self, images: torch.Tensor):
        from assd.runtime.padded import PaddedDetections

        if self.outputs != "detections":
            return super().infer_detections(images)
        outputs = self._run(images)
        return PaddedDetections(outputs["boxes"], outputs["scores"], outputs["classes"], outputs["count"],
                                self.exported_postprocess, self.artifact)

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt_version": self.info.tensorrt_version, "cuda_graph": self.cuda_graph,
                "min_batch": self.min_batch, "compute_capability": self.info.compute_capability,
                "tf32": self.info.tf32}
