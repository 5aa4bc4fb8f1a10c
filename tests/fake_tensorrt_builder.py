"""The builder side of the fake ``tensorrt`` (tests/fake_tensorrt.py re-exports it): network, ONNX parser,
builder config, optimization profile, timing cache and builder, as strict as TensorRT's (see that module)."""

from __future__ import annotations

import json


def major_of(version: str) -> int:
    return 11 if int(version.split(".")[0]) >= 11 else 10


class FakeNetwork:
    REAL = "INetworkDefinition"

    def __init__(self, flags: int, strongly_typed: bool):
        self._flags, self.strongly_typed, self.layers = flags, strongly_typed, None

    @property
    def flags(self):
        return self._flags

    def get_flag(self, flag):
        return bool(self._flags & (1 << int(flag)))


class FakeParserError:
    REAL = "ParserError"

    def __init__(self, code: int, desc: str, node: int = -1, node_name: str = "", node_operator: str = ""):
        self._code, self._desc, self._node, self._name, self._op = code, desc, node, node_name, node_operator

    def code(self):
        return self._code

    def desc(self):
        return self._desc

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op


class FakeOnnxParser:
    REAL = "OnnxParser"
    CONTROLS = ("unsupported",)
    unsupported: tuple[str, ...] = ()  # op types this 'TensorRT' cannot parse

    def __init__(self, network, logger):
        self._network, self._errors = network, []

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index]

    def clear_errors(self):
        self._errors = []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            graph = onnx.load(model).graph
        except Exception as exc:  # noqa: BLE001 - any unreadable file is TensorRT's MODEL_DESERIALIZE_FAILED
            self._errors.append(FakeParserError(3, f"Failed to parse ONNX model ({type(exc).__name__})"))
            return False
        for index, node in enumerate(graph.node):
            if node.op_type in FakeOnnxParser.unsupported:  # UNSUPPORTED_NODE
                self._errors.append(FakeParserError(8, f"No importer registered for op: {node.op_type}", index,
                                                    node.name, node.op_type))
        self._network.layers = [node.name or f"node{i}" for i, node in enumerate(graph.node)]
        return not self._errors


class FakeTimingCache:
    REAL = "ITimingCache"
    _HEADER = b"FAKE-TRT-TIMING-CACHE\n"

    def __init__(self, key: str, entries: dict | None = None):
        self.key, self.entries = key, dict(entries or {})

    def serialize(self):
        return self._HEADER + json.dumps({"key": self.key, "entries": self.entries}).encode()

    def reset(self):
        self.entries = {}


class FakeBuilderConfig:
    REAL = "IBuilderConfig"

    def __init__(self, trt):
        self._trt, self._flags = trt, {trt.BuilderFlag.TF32}  # TF32: "Enabled by default"
        self.profiles, self.workspace, self._timing_cache = [], None, None
        self._level = trt.HardwareCompatibilityLevel.NONE

    @property
    def hardware_compatibility_level(self):
        return self._level

    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, level):
        self._level = level

    def set_flag(self, flag):
        self._flags.add(flag)

    def clear_flag(self, flag):
        self._flags.discard(flag)

    def get_flag(self, flag):
        return flag in self._flags

    def set_memory_pool_limit(self, pool, pool_size):
        self.workspace = pool_size

    def add_optimization_profile(self, profile) -> int:
        if not profile.valid or FakeBuilder.refuse_profile:
            return -1  # "-1 if the input is not valid"
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        if not data:
            return FakeTimingCache(self._trt.__version__)
        if not data.startswith(FakeTimingCache._HEADER):
            return None  # TensorRT logs "corrupted timing cache" and returns null
        stored = json.loads(data[len(FakeTimingCache._HEADER):])
        return FakeTimingCache(stored["key"], stored["entries"])

    def set_timing_cache(self, cache, ignore_mismatch) -> bool:
        if cache.key != self._trt.__version__ and not ignore_mismatch:
            return False  # "the cache was created by another TensorRT version or device"
        self._timing_cache = cache
        return True

    def get_timing_cache(self):
        return self._timing_cache


class FakeProfile:
    REAL = "IOptimizationProfile"

    def __init__(self):
        self.shapes, self.valid = {}, False

    def set_shape(self, input, min, opt, max):
        if not min[0] <= opt[0] <= max[0]:
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        self.shapes[input], self.valid = (tuple(min), tuple(opt), tuple(max)), True


class FakeBuilder:
    """Records the network and config of the last build (``network``, ``last``) and the timing-cache hits."""

    REAL = "Builder"
    CONTROLS = ("refuse_profile", "fails", "last", "network", "trt", "timing_hits")
    refuse_profile = fails = False
    last: FakeBuilderConfig | None = None
    network: FakeNetwork | None = None
    trt = None
    timing_hits = 0

    def __init__(self, logger):
        self._logger = logger

    def create_network(self, flags=0):
        members = self.trt.NetworkDefinitionCreationFlag
        if flags & ~sum(1 << int(member) for member in members):
            return None  # unknown flag bits: TensorRT reports an error and creates no network
        strongly_typed = major_of(self.trt.__version__) >= 11 or bool(flags & (1 << int(members.STRONGLY_TYPED)))
        FakeBuilder.network = FakeNetwork(flags, strongly_typed)
        return FakeBuilder.network

    def create_builder_config(self):
        FakeBuilder.last = FakeBuilderConfig(self.trt)
        return FakeBuilder.last

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        if FakeBuilder.fails or network is None or network.layers is None or not config.profiles:
            return None  # "... or None if the build failed" (TensorRT logs why)
        cache = config.get_timing_cache()
        if cache is not None:
            FakeBuilder.timing_hits = sum(layer in cache.entries for layer in network.layers)
            cache.entries.update({layer: "tactic-0" for layer in network.layers})
        return b"fake plan"
