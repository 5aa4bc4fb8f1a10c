"""Running a deserialized TensorRT engine on torch CUDA tensors, by the contract of ``IExecutionContext``.

Every rule below is NVIDIA's (TensorRT 10/11 ``include/NvInferRuntime.h``, the Python binding docstrings
in ``python/docstrings/infer/pyCoreDoc.h``, and trtexec's ``samples/common/sampleInference.cpp``):

* ``setTensorAddress``: "The pointer must have at least 256-byte alignment." A contiguous view with a
  storage offset (a slice of a larger batch) need not be, so inputs are copied when misaligned and
  every buffer made here is allocated aligned (``aligned_empty``).
* ``setInputShape`` / ``setTensorAddress`` return false on error and ``enqueueV3`` returns false when
  the kernels were not enqueued: each result is checked and turned into a one-line error.
* ``enqueueV3``: "Using default stream may lead to performance issues ... Please use non-default
  stream instead": the engine runs on a dedicated torch stream, ordered with the caller's stream both
  ways. Buffers are allocated on the caller's stream, so the caching allocator reuses them only after
  the caller's stream has waited for the engine.
* CUDA graphs: a graph replays the kernels of one enqueue with the shapes, addresses and device memory
  of the execution context it was captured from, so each captured batch size gets its own execution
  context and static buffers and nothing rebinds a context once captured (trtexec captures "a CUDA
  graph for the current execution context"). Before capturing, trtexec enqueues once "to avoid
  capturing initialization calls", and "when the stream is capturing, the enqueue call may return false
  if the current CUDA graph capture fails": the capture is then ended, the graph dropped and inference
  runs without graphs (trtexec: "The inference will be launched without using CUDA graph"), said once.
  trtexec's ``endCaptureOnError`` then calls ``cudaGetLastError()`` to "clean up any CUDA error": the
  error a failed capture leaves pending would otherwise be raised by the next, unrelated torch op.
* The contexts share one device-memory block (``ExecutionContextAllocationStrategy.USER_MANAGED`` and
  ``set_device_memory``, TensorRT >= 10.1): sharing is allowed except "using it in another execution
  context running in parallel", and every context here runs on the one stream.
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass

import torch

from assd.errors import UserError

ALIGNMENT = 256  # bytes, IExecutionContext::setTensorAddress
cuda = torch.cuda  # the CUDA API used here (tests substitute a fake to run this module on a CPU)
logger = logging.getLogger("assd.runtime")


class _CudaRuntime:
    """``cudaGetLastError`` of the CUDA runtime torch loaded: torch has no Python API for it. The library is
    the ``libcudart`` mapped into this process (``/proc/self/maps``), else the soname torch links
    (``dlopen`` of an already loaded library returns it)."""

    def __init__(self):
        self._library = None

    @staticmethod
    def _loaded_path() -> str | None:
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    if "/libcudart.so" in line:
                        return line.split()[-1]
        except OSError:
            pass
        return None

    def cudaGetLastError(self) -> int:  # the CUDA runtime's name
        if self._library is None:
            name = self._loaded_path() or f"libcudart.so.{(torch.version.cuda or '').split('.')[0]}"
            try:
                self._library = ctypes.CDLL(name)
            except OSError as exc:
                logger.debug("cannot clear the CUDA error: %s", exc)
                return 0
        return int(self._library.cudaGetLastError())


cudart = _CudaRuntime()  # tests substitute their fake CUDA


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized contiguous tensor whose data pointer is a multiple of ``ALIGNMENT`` bytes."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    storage = torch.empty(numel + ALIGNMENT // itemsize, dtype=dtype, device=device)
    offset = (-storage.data_ptr() % ALIGNMENT) // itemsize
    return storage[offset:offset + numel].view(shape)


def as_aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` when contiguous and aligned for ``set_tensor_address``, else an aligned copy."""
    if tensor.is_contiguous() and tensor.data_ptr() % ALIGNMENT == 0:
        return tensor
    copy = aligned_empty(tuple(tensor.shape), tensor.dtype, tensor.device)
    copy.copy_(tensor)
    return copy


@dataclass
class _Captured:
    """One batch size's CUDA graph with the context and static buffers it was captured with."""

    context: object
    input: torch.Tensor
    outputs: dict[str, torch.Tensor]
    graph: object


class EngineExecutor:
    """Binds and enqueues a ``tensorrt.ICudaEngine``; ``cuda_graph=True`` replays one graph per batch size.

    ``run(images)`` takes the input on the engine's device in the engine's input type and returns
    freshly allocated outputs (the caller may keep them across calls).
    """

    def __init__(self, trt, engine, device: torch.device, input_name: str, output_names: tuple[str, ...],
                 dtypes: dict[str, torch.dtype], artifact: str, cuda_graph: bool = False):
        self.trt, self.engine, self.device, self.artifact = trt, engine, device, artifact
        self.input_name, self.output_names, self.dtypes = input_name, tuple(output_names), dtypes
        self.stream = cuda.Stream(device)
        self.memory = None  # the device memory shared by every context (USER_MANAGED strategy)
        self.context = self._new_context()  # the graph-less context: rebound on every call
        self.cuda_graph, self.graphs = cuda_graph, {}

    # ------------------------------------------------------------------------------------------ set-up
    def _new_context(self):
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(self.engine, "device_memory_size_v2", None)
        if strategy is not None and size is not None:
            context = self.engine.create_execution_context(strategy.USER_MANAGED)
            if context is not None:
                if self.memory is None:
                    with torch.inference_mode(False):
                        self.memory = aligned_empty((max(int(size), 1),), torch.uint8, self.device)
                context.set_device_memory(self.memory.data_ptr(), int(size))
        else:  # TensorRT 10.0: each context allocates its own memory
            context = self.engine.create_execution_context()
        if context is None:
            raise UserError(f"{self.artifact}: TensorRT could not create an execution context (out of GPU memory? "
                            "see its message above): free GPU memory or use a smaller batch profile")
        return context

    def _check(self, ok: bool, call: str) -> None:
        if not ok:
            raise UserError(f"{self.artifact}: TensorRT refused {call} (see its message above): the engine does not "
                            "accept this input: rebuild it with 'assd build-engine'")

    def _bind(self, context, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Set the input shape and every I/O address of ``context``; returns the newly allocated outputs."""
        shape = tuple(images.shape)
        self._check(context.set_input_shape(self.input_name, shape), f"set_input_shape('{self.input_name}', {shape})")
        self._check(images.data_ptr() % ALIGNMENT == 0 and
                    context.set_tensor_address(self.input_name, images.data_ptr()),
                    f"set_tensor_address('{self.input_name}') (needs a {ALIGNMENT}-byte aligned address)")
        outputs = {}
        for name in self.output_names:
            output_shape = tuple(context.get_tensor_shape(name))
            if any(dim < 0 for dim in output_shape):
                raise UserError(f"{self.artifact}: output '{name}' has a data-dependent shape {output_shape}; assd "
                                "runners need fixed output shapes: re-export with 'assd export --onnx'")
            outputs[name] = aligned_empty(output_shape, self.dtypes[name], self.device)
            self._check(context.set_tensor_address(name, outputs[name].data_ptr()), f"set_tensor_address('{name}')")
        return outputs

    def _enqueue(self, context) -> None:
        self._check(context.execute_async_v3(self.stream.cuda_stream), "execute_async_v3")

    def _launch(self, context, caller) -> None:
        """Enqueue ``context`` on the engine's stream once that stream has waited for ``caller``'s work."""
        self.stream.wait_stream(caller)  # the input was written on the caller's stream
        with cuda.stream(self.stream):
            self._enqueue(context)

    # ------------------------------------------------------------------------------------------ running
    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = as_aligned(images)
        caller = cuda.current_stream(self.device)
        captured = self._graph_for(images) if self.cuda_graph else None
        if captured is not None:
            outputs = self._replay(captured, images, caller)
        else:  # without graphs, or this engine's capture failed
            outputs = self._bind(self.context, images)  # allocated on the caller's stream
            self._launch(self.context, caller)
        caller.wait_stream(self.stream)  # the outputs are read on the caller's stream
        return outputs

    def _graph_for(self, images: torch.Tensor) -> _Captured | None:
        """The graph of this batch size, captured on first use (None: capture failed, no graphs)."""
        batch = images.shape[0]
        if batch not in self.graphs:
            self.graphs[batch] = self._capture(images)
        return self.graphs[batch]

    def _replay(self, captured: _Captured, images: torch.Tensor, caller) -> dict[str, torch.Tensor]:
        captured.input.copy_(images)  # on the caller's stream, which the engine's stream waits for
        self.stream.wait_stream(caller)
        with cuda.stream(self.stream):
            captured.graph.replay()
        caller.wait_stream(self.stream)
        # Copies on the caller's stream: the static buffers are overwritten by the next replay.
        return {name: static.clone() for name, static in captured.outputs.items()}

    def _capture(self, images: torch.Tensor) -> _Captured | None:
        """A new context bound to new static buffers, one warm-up enqueue, then the capture."""
        if any(graph is None for graph in self.graphs.values()):
            return None
        # The static buffers outlive this call: made outside inference mode, a later copy_ into them
        # works whether or not the caller is in inference mode.
        with torch.inference_mode(False):
            context = self._new_context()
            static_input = aligned_empty(tuple(images.shape), images.dtype, self.device)
            outputs = self._bind(context, static_input)
        static_input.copy_(images)
        # Warm-up: after a shape change, TensorRT's first enqueue does set-up work that cannot be captured.
        self._launch(context, cuda.current_stream(self.device))
        self.stream.synchronize()
        graph = cuda.CUDAGraph()
        captured, reason = False, "execute_async_v3 returned False during capture"
        with cuda.stream(self.stream):
            graph.capture_begin(capture_error_mode="thread_local")  # trtexec: cudaStreamCaptureModeThreadLocal
            try:
                captured = bool(context.execute_async_v3(self.stream.cuda_stream))
            finally:
                try:
                    graph.capture_end()
                except RuntimeError as exc:  # the capture was invalidated: no graph
                    captured, reason = False, str(exc).splitlines()[0]
        if not captured:
            cudart.cudaGetLastError()  # trtexec: "Clean up any CUDA error" (endCaptureOnError)
            logger.warning("%s: CUDA graph capture failed (%s); running without CUDA graphs, as trtexec does",
                           self.artifact, reason)
            return None
        return _Captured(context, static_input, outputs, graph)
