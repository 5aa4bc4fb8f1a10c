"""A fake ``tensorrt`` module and CUDA API that enforce TensorRT's documented runtime contract on a CPU.

The fake engine computes a small deterministic function of its input by *reading and writing the
bound addresses* (as a GPU engine does), so a wrong address, a stale binding or a graph replayed
against the wrong buffers gives wrong numbers. It enforces, as TensorRT documents them:

* ``set_tensor_address``: "The pointer must have at least 256-byte alignment" -> returns False;
* ``set_input_shape``: a shape outside the optimization profile -> returns False;
* ``execute_async_v3`` on the default stream (handle 0) -> refused here (TensorRT warns; capture
  needs a non-default stream);
* a CUDA graph replays what it captured with the context's state at capture: replaying after that
  context's shapes or addresses changed is undefined behaviour, so the fake graph raises;
* ``capture_fails``: ``execute_async_v3`` returns False during capture (trtexec's documented case);
  ``capture_invalidates``: the capture ends with an error instead.

Every context records the input shapes it saw.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import types

import numpy as np

NUM_ANCHORS, NUM_CLASSES = 5, 3
_handles = itertools.count(1)


def _read(address: int, count: int, dtype=np.float32) -> np.ndarray:
    buffer = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype, count=count).copy()


def _write(address: int, array: np.ndarray) -> None:
    data = np.ascontiguousarray(array)
    ctypes.memmove(address, data.ctypes.data, data.nbytes)


def raw_outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the fake raw engine computes: loc [B, A, 4], conf [B, A, C] from the per-channel means."""
    means = images.reshape(images.shape[0], 3, -1).mean(axis=2)  # [B, 3]
    anchors = np.arange(1, NUM_ANCHORS + 1, dtype=np.float32)[None, :, None]
    loc = means[:, None, :1] * anchors + np.arange(4, dtype=np.float32)  # [B, A, 4]
    conf = means[:, None, :] * anchors - anchors  # [B, A, 3]
    return loc.astype(np.float32), conf.astype(np.float32)


def detection_outputs(images: np.ndarray, k: int = 4):
    """What the fake detections engine computes: padded boxes [B, K, 4], scores, classes, count."""
    batch = images.shape[0]
    means = images.reshape(batch, -1).mean(axis=1)
    count = np.arange(batch, dtype=np.int64) % (k + 1)
    scores = np.zeros((batch, k), np.float32)
    classes = np.zeros((batch, k), np.int64)
    boxes = np.zeros((batch, k, 4), np.float32)
    for index in range(batch):
        n = int(count[index])
        scores[index, :n] = np.linspace(0.9, 0.2, k)[:n]
        classes[index, :n] = 1 + np.arange(n) % (NUM_CLASSES - 1)
        boxes[index, :n] = [0.1, 0.1, 0.5, 0.5 + 0.01 * means[index]]
    return boxes, scores, classes, count


class FakeCuda:
    """The few ``torch.cuda`` calls ``assd.runtime.tensorrt_execution`` and the runner make."""

    def __init__(self):
        self.default = FakeStream(0)
        self.current = [self.default]
        self.capturing = None

    def Stream(self, device=None):
        return FakeStream(next(_handles))

    def current_stream(self, device=None):
        return self.current[-1]

    @contextlib.contextmanager
    def stream(self, stream):
        self.current.append(stream)
        try:
            yield
        finally:
            self.current.pop()

    def device(self, device):
        return contextlib.nullcontext()

    def CUDAGraph(self):
        return FakeGraph(self)

    def get_device_capability(self, device=None):
        return (8, 9)

    def get_device_name(self, device=None):
        return "NVIDIA L4"

    def synchronize(self, device=None):
        pass


class FakeStream:
    def __init__(self, handle: int):
        self.cuda_stream = handle

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


class FakeGraph:
    def __init__(self, cuda: FakeCuda):
        self.cuda, self.work, self.invalidated = cuda, [], False

    def capture_begin(self, capture_error_mode="global"):
        assert self.cuda.current_stream().cuda_stream != 0, "capture on the default stream"
        self.cuda.capturing = self

    def capture_end(self):
        self.cuda.capturing = None
        if self.invalidated:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def replay(self):
        for context, version in self.work:
            if context.version != version:
                raise AssertionError("CUDA graph replayed against an execution context whose shapes or addresses "
                                     "changed since capture (undefined behaviour in TensorRT)")
            context.compute()


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses, self.version = engine, {}, {}, 0
        self.shapes_seen, self.device_memory = [], None

    def set_device_memory(self, address: int, size: int):
        assert address % 256 == 0, "device memory must be 256-byte aligned"
        self.device_memory = (address, size)

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(shape)
        low, _, high = self.engine.profile
        if name != "images" or len(shape) != 4 or shape[1:] != low[1:] or not low[0] <= shape[0] <= high[0]:
            return False
        self.shapes[name], self.version = shape, self.version + 1
        self.shapes_seen.append(shape)
        return True

    def get_tensor_shape(self, name: str):
        batch = self.shapes["images"][0]
        return self.engine.output_shapes(batch)[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        if address % 256 or name not in self.engine.names:
            return False
        self.addresses[name], self.version = address, self.version + 1
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if stream_handle == 0:
            return False
        graph = self.engine.cuda.capturing
        if graph is not None:
            if self.engine.capture_invalidates:
                graph.invalidated = True
                return False
            if self.engine.capture_fails:
                return False
            graph.work.append((self, self.version))
            return True
        self.compute()
        return self.engine.execute_ok

    def compute(self):
        shape = self.shapes["images"]
        images = _read(self.addresses["images"], int(np.prod(shape))).reshape(shape)
        outputs = detection_outputs(images) if self.engine.detections else raw_outputs(images)
        for name, array in zip(self.engine.names[1:], outputs):
            _write(self.addresses[name], array)


class FakeEngine:
    def __init__(self, cuda: FakeCuda, profile=((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),
                 detections=False):
        self.cuda, self.profile, self.detections = cuda, profile, detections
        self.names = ["images", *(("boxes", "scores", "classes", "count") if detections else ("loc", "conf"))]
        self.capture_fails = self.capture_invalidates = False
        self.execute_ok = True
        self.contexts, self.device_memory_size_v2 = [], 4096

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_dtype(self, name):
        return "INT64" if name in ("classes", "count") else "FLOAT"

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == "images" and profile_index == 0
        return [list(shape) for shape in self.profile]

    def output_shapes(self, batch):
        if self.detections:
            return {"boxes": (batch, 4, 4), "scores": (batch, 4), "classes": (batch, 4), "count": (batch,)}
        return {"loc": (batch, NUM_ANCHORS, 4), "conf": (batch, NUM_ANCHORS, NUM_CLASSES)}

    def create_execution_context(self, strategy=None):
        context = FakeContext(self)
        self.contexts.append(context)
        return context


def fake_tensorrt_module(engine: FakeEngine, version: str = "10.16.1.11", plan: bytes = b"fake plan"):
    """A ``tensorrt`` stand-in whose Runtime deserializes ``plan`` into ``engine`` (anything else: None)."""

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            return engine if bytes(data) == plan else None

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    return types.SimpleNamespace(
        __version__=version, Logger=Logger, Runtime=Runtime,
        DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT8="INT8", INT32="INT32", BOOL="BOOL",
                                       INT64="INT64"),
        ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="USER_MANAGED"))


class FakeBuilderConfig:
    def __init__(self, builder: FakeBuilder):
        self.builder, self.flags, self.profiles = builder, {"TF32"}, []  # TF32: "Enabled by default"
        self.hardware_compatibility_level = "NONE"

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def add_optimization_profile(self, profile) -> int:
        if not profile.valid or self.builder.refuse_profile:
            return -1  # "-1 if the input is not valid"
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeProfile:
    def __init__(self):
        self.shapes, self.valid = {}, False

    def set_shape(self, name, low, opt, high):
        if not low[0] <= opt[0] <= high[0]:
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        self.shapes[name], self.valid = (tuple(low), tuple(opt), tuple(high)), True


class FakeBuilder:
    """Records the network flags and the config it was built with (``last``)."""

    refuse_profile = False
    last: FakeBuilderConfig | None = None

    def __init__(self, logger):
        self.network_flags = None

    def create_network(self, flags):
        FakeBuilder.network_flags = flags
        return object()

    def create_builder_config(self):
        FakeBuilder.last = FakeBuilderConfig(self)
        return FakeBuilder.last

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        return b"fake plan"


def fake_builder_module(version: str = "10.16.1.11", parses=True):
    """A ``tensorrt`` stand-in that 'builds' engines (for the build-side checks and the sidecar)."""

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            FakeBuilder.parsed = path
            return parses

    module = fake_tensorrt_module(FakeEngine(FakeCuda()), version)
    module.Builder, module.OnnxParser = FakeBuilder, OnnxParser
    module.BuilderFlag = types.SimpleNamespace(TF32="TF32", VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    module.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS",
                                                              SAME_COMPUTE_CAPABILITY="SAME_COMPUTE_CAPABILITY")
    return module
