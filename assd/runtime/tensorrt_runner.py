"""``TensorRTRunner``: a serialized TensorRT engine (from ``assd build-engine``) as a ``Runner``.

I/O are torch CUDA tensors bound by address (``set_tensor_address``) and the engine runs with
``execute_async_v3`` on a dedicated torch CUDA stream, ordered with the caller's stream both ways (no
pycuda). Optionally each batch size is captured once into a CUDA graph and replayed. Before anything
is loaded, the engine's sidecar (``model.engine.json``) is checked against this machine's TensorRT
version and GPU compute capability; the batch limits come from the sidecar too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from assd.errors import UserError
from assd.runtime.base import Runner
from assd.runtime.engine_info import EngineInfo, check_compatible, read_engine_info
from assd.runtime.tensorrt_support import import_tensorrt, require_tensorrt

INPUT_NAME, OUTPUT_NAMES = "images", ("loc", "conf")


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
        info = read_engine_info(path)
        if info.outputs != "raw":
            raise UserError(f"{path}: built from an ONNX exported --with-postprocess; runners need the raw "
                            "(loc, conf) outputs: build the engine from an export without --with-postprocess")
        require_tensorrt(f"{path}: running a TensorRT engine")
        self.device = engine_device(path, device)
        trt = import_tensorrt(f"{path}: running a TensorRT engine")
        check_compatible(info, trt.__version__, torch.cuda.get_device_capability(self.device),
                         torch.cuda.get_device_name(self.device), engine=str(path))
        self.info, self.artifact, self.cfg = info, str(path), info.config
        self.precision, self.postprocess = info.precision, info.postprocess
        self.min_batch, self.max_batch = info.batch_min, info.batch_max
        self.cuda_graph, self.graphs = cuda_graph, {}
        with torch.cuda.device(self.device):
            self._load(trt, path, info)
            self.stream = torch.cuda.Stream(self.device)

    def _load(self, trt, path: str, info: EngineInfo) -> None:
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if info.version_compatible:
            self.runtime.engine_host_code_allowed = True  # the plan embeds its own (lean) runtime
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise UserError(f"{path}: TensorRT could not deserialize the engine (see its message above): "
                            "rebuild it with 'assd build-engine'")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if INPUT_NAME not in names or not set(OUTPUT_NAMES) <= set(names):
            raise UserError(f"{path}: engine tensors are {names}, expected '{INPUT_NAME}' -> loc, conf: rebuild it "
                            "from an 'assd export --onnx' file")
        self.dtypes = {name: torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in names}

    def check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise UserError(f"{self.artifact}: batch {batch} is outside the engine's range {self.min_batch}.."
                            f"{self.max_batch}: use a batch in that range or rebuild with --batch MIN:OPT:MAX")

    def _bind(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Set the input shape and every I/O address; returns the freshly allocated outputs."""
        self.context.set_input_shape(INPUT_NAME, tuple(images.shape))
        self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def _execute(self) -> None:
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # inputs written on the caller's stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise UserError(f"{self.artifact}: TensorRT execution failed (see its message above)")
        caller.wait_stream(self.stream)  # outputs read on the caller's stream

    def _captured(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Replay (capturing it first) the CUDA graph of this batch size; outputs are static buffers."""
        batch = images.shape[0]
        if batch not in self.graphs:
            static_input = images.clone()
            outputs = self._bind(static_input)
            self._execute()  # TensorRT needs one run after a shape change before capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self.graphs[batch] = (graph, static_input, outputs)
        graph, static_input, outputs = self.graphs[batch]
        static_input.copy_(images)
        graph.replay()  # on the caller's stream: ordered after the copy
        return outputs

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_batch(images.shape[0])
        images = images.to(self.device, self.dtypes[INPUT_NAME], non_blocking=True).contiguous()
        with torch.cuda.device(self.device):
            if self.cuda_graph:
                outputs = self._captured(images)
                return outputs["loc"].float().clone(), outputs["conf"].float().clone()
            outputs = self._bind(images)
            self._execute()
        return outputs["loc"].float(), outputs["conf"].float()

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt_version": self.info.tensorrt_version, "cuda_graph": self.cuda_graph,
                "min_batch": self.min_batch, "compute_capability": self.info.compute_capability}
