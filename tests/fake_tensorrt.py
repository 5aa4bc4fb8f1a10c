"""A fake ``tensorrt`` module that enforces TensorRT's documented contract on a CPU, held to the real API.

The builder side lives in tests/fake_tensorrt_builder.py and is re-exported here.
Every public name defined in a fake class body is TensorRT API: ``REAL`` names the TensorRT class it
stands for, and tests/test_tensorrt_bindings.py checks each such name (methods with their parameter
names, properties, enum members with their values) against the real 10.x and 11.x bindings.
State and test controls live in instance attributes, in names starting with ``_``, or in ``CONTROLS``.

The fake engine computes a small deterministic function of its input by *reading and writing the
bound addresses* (as a GPU engine does), so a wrong address, a stale binding or a graph replayed
against the wrong buffers gives wrong numbers. Streams are tests/fake_cuda.py's: an enqueue runs only
when its stream is waited for or synchronized (its outputs are NaN until then) and needs its stream
to have waited for the caller's. It enforces, as TensorRT documents them:

* ``set_tensor_address``: "The pointer must have at least 256-byte alignment" -> returns False;
* ``set_input_shape``: a shape outside the optimization profile -> returns False;
* ``execute_async_v3`` on the default stream, with an unbound tensor, or (``USER_MANAGED`` contexts)
  without device memory of at least ``device_memory_size_v2`` bytes -> returns False;
* CUDA graphs: capturing an enqueue whose shapes were never enqueued before (TensorRT's first enqueue
  after a shape change does set-up work) invalidates the capture; a graph replayed after its
  context's shapes or addresses changed raises; ``capture_fails`` / ``capture_invalidates`` make
  the capture fail (trtexec's two cases), the latter leaving a CUDA error pending;
* a version-compatible plan deserializes only with ``engine_host_code_allowed``;
* the builder: ``STRONGLY_TYPED`` is bit 1 on TensorRT 10 and bit 0 on 11 (where networks are always
  strongly typed), unknown flag bits give no network; the parser fails on ``unsupported`` ops with
  TensorRT's error objects; ``build_serialized_network`` returns None when ``fails``; timing caches
  are serialized, read back (refused when corrupt or, without ``ignore_mismatch``, from another
  TensorRT version) and count their hits.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
from fake_cuda import FakeCuda
from fake_tensorrt_builder import (  # noqa: F401 - re-exported: one fake module for the tests
    FakeBuilder,
    FakeBuilderConfig,
    FakeNetwork,
    FakeOnnxParser,
    FakeParserError,
    FakeProfile,
    FakeTimingCache,
    major_of,
)

NUM_ANCHORS, NUM_CLASSES = 5, 3
# The enum members the fake offers, with their values in TensorRT 10 and 11 (checked against the bindings).
ENUMS = {
    "DataType": {10: {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "BF16": 7, "INT64": 8}},
    "NetworkDefinitionCreationFlag": {10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, 11: {"STRONGLY_TYPED": 0}},
    "BuilderFlag": {10: {"FP16": 0, "INT8": 1, "TF32": 6, "VERSION_COMPATIBLE": 13},
                    11: {"TF32": 6, "VERSION_COMPATIBLE": 12}},
    "MemoryPoolType": {10: {"WORKSPACE": 0}},
    "HardwareCompatibilityLevel": {10: {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2}},
    "ExecutionContextAllocationStrategy": {10: {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2}},
}
SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
USER_MANAGED = 2


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


# ============================================================================================ runtime
class FakeContext:
    REAL = "IExecutionContext"

    def __init__(self, engine: FakeEngine, strategy):
        self._engine, self._strategy = engine, strategy
        self._shapes, self._addresses, self.version, self._warm = {}, {}, 0, None
        self.shapes_seen, self.device_memory = [], None

    def set_device_memory(self, memory: int, size: int):
        assert memory % 256 == 0, "device memory must be 256-byte aligned"
        self.device_memory = (memory, size)

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(shape)
        low, _, high = self._engine.profile
        if name != "images" or len(shape) != 4 or shape[1:] != low[1:] or not low[0] <= shape[0] <= high[0]:
            return False
        self._shapes[name], self.version = shape, self.version + 1
        self.shapes_seen.append(shape)
        return True

    def get_tensor_shape(self, name: str):
        return self._engine._output_shapes(self._shapes["images"][0])[name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if memory % 256 or name not in self._engine.names:
            return False
        self._addresses[name], self.version = memory, self.version + 1
        return True

    def _ready(self) -> bool:
        if self._strategy is not None and int(self._strategy) == USER_MANAGED:
            memory = self.device_memory
            if memory is None or memory[1] < self._engine.device_memory_size_v2:
                return False  # "the device memory ... must be at least device_memory_size_v2 bytes"
        return "images" in self._shapes and set(self._addresses) == set(self._engine.names)

    def execute_async_v3(self, stream_handle: int) -> bool:
        cuda = self._engine.cuda
        if stream_handle == 0 or not self._ready():
            return False
        stream = next(s for s in cuda.streams if s.cuda_stream == stream_handle)
        if cuda.capturing is not None:
            return self._capture(stream)
        self._poison_outputs()
        stream.launch(self._compute, "execute_async_v3")
        self._warm = dict(self._shapes)
        return self._engine.execute_ok

    def _capture(self, stream) -> bool:
        cuda, engine = self._engine.cuda, self._engine
        graph, capturing = cuda.capturing
        if stream is not capturing:
            cuda.invalidate_capture("enqueue on another stream")
            return False
        if engine.capture_invalidates:
            cuda.invalidate_capture("an operation TensorRT cannot capture")
            return False
        if engine.capture_fails:
            return False
        if self._warm != self._shapes:
            cuda.invalidate_capture("the first enqueue after a shape change allocates (no warm-up enqueue)")
            return False
        graph.work.append((self, self.version))
        return True

    def _poison_outputs(self):
        shapes = self._engine._output_shapes(self._shapes["images"][0])
        for name in self._engine.names[1:]:
            dtype = np.int64 if name in ("classes", "count") else np.float32
            _write(self._addresses[name], np.full(shapes[name], -1 if dtype == np.int64 else np.nan, dtype))

    def _compute(self):
        shape = self._shapes["images"]
        images = _read(self._addresses["images"], int(np.prod(shape))).reshape(shape)
        outputs = detection_outputs(images) if self._engine.detections else raw_outputs(images)
        for name, array in zip(self._engine.names[1:], outputs):
            _write(self._addresses[name], array)


class FakeEngine:
    REAL = "ICudaEngine"

    def __init__(self, cuda: FakeCuda, profile=((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),
                 detections=False, version_compatible=False, memory_size=4096):
        self.cuda, self.profile, self.detections = cuda, profile, detections
        self.names = ["images", *(("boxes", "scores", "classes", "count") if detections else ("loc", "conf"))]
        self.capture_fails = self.capture_invalidates = False
        self.execute_ok, self.version_compatible, self.memory_size = True, version_compatible, memory_size
        self.contexts = []

    @property
    def num_io_tensors(self):
        return len(self.names)

    @property
    def device_memory_size_v2(self):
        return self.memory_size

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_dtype(self, name):
        return self._trt.DataType.INT64 if name in ("classes", "count") else self._trt.DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == "images" and profile_index == 0
        return [list(shape) for shape in self.profile]

    def _output_shapes(self, batch):
        if self.detections:
            return {"boxes": (batch, 4, 4), "scores": (batch, 4), "classes": (batch, 4), "count": (batch,)}
        return {"loc": (batch, NUM_ANCHORS, 4), "conf": (batch, NUM_ANCHORS, NUM_CLASSES)}

    def create_execution_context(self, strategy=None):
        context = FakeContext(self, strategy)
        self.contexts.append(context)
        return context


def _enum(name: str, major: int, table: dict) -> type[enum.IntEnum]:
    members = table.get(major, table[10])
    return enum.IntEnum(name, members)


def fake_tensorrt_module(engine: FakeEngine | None = None, version: str = "10.16.1.11", plan: bytes = b"fake plan"):
    """A ``tensorrt`` stand-in of ``version``: its Runtime deserializes ``plan`` into ``engine`` (anything
    else: None), its Builder and OnnxParser 'build' engines."""
    major = major_of(version)
    enums = {name: _enum(name, major, table) for name, table in ENUMS.items()}
    severity = enum.IntEnum("Severity", SEVERITY)

    class Logger:
        REAL = "Logger"
        Severity = severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (severity[name] for name in SEVERITY)

        def __init__(self, min_severity=severity.WARNING):
            self._min_severity = min_severity

    class Runtime:
        REAL = "Runtime"

        def __init__(self, logger):
            self._host_code = False

        @property
        def engine_host_code_allowed(self):
            return self._host_code

        @engine_host_code_allowed.setter
        def engine_host_code_allowed(self, allowed):
            self._host_code = bool(allowed)

        def deserialize_cuda_engine(self, serialized_engine):
            if bytes(serialized_engine) != plan:
                return None
            if engine.version_compatible and not self._host_code:
                return None  # "a version-compatible engine ... requires engine_host_code_allowed"
            return engine

    module = types.SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, Builder=FakeBuilder,
                                   OnnxParser=FakeOnnxParser, **enums)
    FakeBuilder.trt = module
    if engine is not None:
        engine._trt = module
    return module


def fake_builder_module(version: str = "10.16.1.11"):
    """A ``tensorrt`` stand-in for the build-side checks, its controls reset."""
    FakeBuilder.refuse_profile = FakeBuilder.fails = False
    FakeBuilder.last = FakeBuilder.network = None
    FakeOnnxParser.unsupported = ()
    return fake_tensorrt_module(FakeEngine(FakeCuda()), version)
