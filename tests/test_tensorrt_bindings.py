"""The fake TensorRT and assd's TensorRT calls, held to the real Python bindings of TensorRT 10 and 11.

tests/trt_bindings.py installs ``tensorrt-cu12-bindings`` (10.x) and ``tensorrt-cu13-bindings``
(11.x) into a cache folder, builds stub libraries with the system C compiler and describes each
version's API from a subprocess. These tests skip, with the reason, when that cannot be done here.

1. Every class, method (with its parameter names), property and enum member (with its value) that
   tests/fake_tensorrt.py offers exists in the real bindings of the version the fake claims to be.
2. Every TensorRT attribute that assd reads or calls exists in both 10.x and 11.x, or is read through
   ``hasattr`` / ``getattr(..., default)`` (a version guard) and exists in at least one of them; the
   keyword arguments assd passes are parameter names of the real method.
"""

from __future__ import annotations

import ast
import enum
import inspect
from pathlib import Path

import fake_tensorrt
import pytest
import trt_bindings
from fake_cuda import FakeCuda
from fake_tensorrt import FakeEngine, fake_tensorrt_module

VERSIONS = {10: trt_bindings.BINDINGS[10][1], 11: trt_bindings.BINDINGS[11][1]}
ASSD = Path(__file__).parents[1] / "assd"


@pytest.fixture(scope="module", params=[10, 11], ids=["trt10", "trt11"])
def real(request):
    try:
        return request.param, trt_bindings.api(request.param)
    except trt_bindings.Unavailable as exc:
        pytest.skip(f"the real TensorRT {request.param} bindings are not available here: {exc}")


# ------------------------------------------------------------------------------------ 1: the fake
def _fake_classes(module) -> dict[str, type]:
    """Real class name -> fake class, for the module's classes and the objects they return."""
    classes = {getattr(value, "REAL", name): value for name, value in vars(module).items()
               if isinstance(value, type) and not issubclass(value, enum.Enum)}
    for value in vars(fake_tensorrt).values():
        if isinstance(value, type) and hasattr(value, "REAL"):
            classes.setdefault(value.REAL, value)
    return classes


def _check_enum(real_api: dict, real_name: str, fake_enum, major: int) -> list[str]:
    real_enum = real_api["classes"].get(real_name, {}).get("enum")
    if real_enum is None:
        return [f"{real_name} is not an enum in TensorRT {major}"]
    return [f"{real_name}.{member.name} = {int(member)}: TensorRT {major} has "
            f"{real_enum.get(member.name, 'no such member')}" for member in fake_enum
            if real_enum.get(member.name) != int(member)]


def _check_class(real_api: dict, real_name: str, fake: type, major: int) -> list[str]:
    described = real_api["classes"].get(real_name)
    if described is None:
        return [f"{fake.__name__}: TensorRT {major} has no class {real_name}"]
    problems, members = [], described["members"]
    for name, raw in vars(fake).items():
        if name in ("REAL", "CONTROLS", *getattr(fake, "CONTROLS", ())) or name.startswith("_") and name != "__init__":
            continue
        where = f"{fake.__name__}.{name} ({real_name}.{name}, TensorRT {major})"
        if name not in members:
            problems.append(f"{where}: no such member")
        elif isinstance(raw, type) and issubclass(raw, enum.Enum):
            problems += _check_enum(real_api, f"{real_name}.{name}", raw, major)
        elif isinstance(raw, property) or not callable(raw):
            if members[name]["kind"] not in ("property", "attribute"):
                problems.append(f"{where}: a {members[name]['kind']} in TensorRT, a value in the fake")
            elif isinstance(raw, property) and raw.fset is not None and not members[name].get("settable", True):
                problems.append(f"{where}: read-only in TensorRT")
        else:
            params = [p for p in inspect.signature(raw).parameters][1:]
            signatures = members[name].get("signatures") or []
            if name == "__init__" and not signatures:
                continue  # TensorRT makes these objects itself (no Python constructor): the fake's is internal
            if params not in signatures:
                problems.append(f"{where}: parameters {params}; TensorRT has {signatures}")
    return problems


def test_the_fake_offers_only_what_the_real_bindings_have(real):
    """The fake claiming version ``major`` against the bindings of ``major``."""
    major, real_api = real
    module = fake_tensorrt_module(FakeEngine(FakeCuda()), VERSIONS[major])
    problems = [f"tensorrt.{name}: not in TensorRT {major}" for name in vars(module)
                if not name.startswith("_") and name not in real_api["module"]]
    for name, value in vars(module).items():
        if isinstance(value, type) and issubclass(value, enum.Enum):
            problems += _check_enum(real_api, name, value, major)
    for real_name, fake in _fake_classes(module).items():
        problems += _check_class(real_api, real_name, fake, major)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_parameter_name_and_a_missing_member(real):
    major, real_api = real

    class Context:
        def set_device_memory(self, address, size):  # TensorRT: (memory, size)
            pass

        def execute_async_v2(self, bindings, stream_handle):  # gone in TensorRT 10
            pass

    problems = _check_class(real_api, "IExecutionContext", Context, major)
    assert len(problems) == 2 and "parameters ['address', 'size']" in problems[0] and "no such member" in problems[1]
    flags = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1 if major == 11 else 0})
    assert _check_enum(real_api, "NetworkDefinitionCreationFlag", flags, major)  # the other version's value


# ------------------------------------------------------------------------------------ 2: assd's calls
# What a receiver name holds in assd's TensorRT code (the module is ``trt`` or ``self.trt``).
RECEIVERS = {"engine": "ICudaEngine", "self.engine": "ICudaEngine", "context": "IExecutionContext",
             "self.context": "IExecutionContext", "runtime": "Runtime", "self.runtime": "Runtime",
             "builder": "Builder", "config": "IBuilderConfig", "profile": "IOptimizationProfile",
             "parser": "OnnxParser", "error": "ParserError", "network": "INetworkDefinition",
             "timing_cache": "ITimingCache", "strategy": "ExecutionContextAllocationStrategy"}
MODULE_NAMES = ("trt", "self.trt")


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def tensorrt_uses(path: Path) -> list[tuple[str, str, bool, list[str], int]]:
    """(class or "module", attribute, guarded, keyword names, line) for each TensorRT attribute ``path`` uses."""
    tree, uses = ast.parse(path.read_text()), []

    def owner_of(dotted: str) -> str | None:
        if dotted in MODULE_NAMES:
            return "module"
        if dotted in RECEIVERS:
            return RECEIVERS[dotted]
        for module in MODULE_NAMES:  # trt.X (a class of the module)
            if dotted.startswith(module + ".") and "." not in dotted[len(module) + 1:]:
                return dotted[len(module) + 1:]
        return None

    calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (owner := owner_of(_dotted(node.value) or "")):
            call = calls.get(id(node))
            keywords = [k.arg for k in call.keywords if k.arg] if call else []
            uses.append((owner, node.attr, False, keywords, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            owner = owner_of(_dotted(node.args[0]) or "")
            if owner and (node.func.id == "hasattr" or len(node.args) == 3):
                uses.append((owner, node.args[1].value, True, [], node.lineno))
    return uses


def _tensorrt_files() -> list[Path]:
    return sorted(p for p in ASSD.rglob("*.py") if "import_tensorrt(" in p.read_text() or
                  p.name.startswith("tensorrt_"))


def test_every_tensorrt_attribute_assd_uses_exists_in_10_and_11_or_is_guarded():
    apis = {}
    for major in (10, 11):
        try:
            apis[major] = trt_bindings.api(major)
        except trt_bindings.Unavailable as exc:
            pytest.skip(f"the real TensorRT {major} bindings are not available here: {exc}")
    problems, checked = [], 0
    for path in _tensorrt_files():
        for owner, name, guarded, keywords, line in tensorrt_uses(path):
            where = f"{path.relative_to(ASSD.parent)}:{line}: {owner}.{name}"
            present = {}
            for major, api in apis.items():
                if owner == "module":
                    present[major] = name in api["module"] or name == "__version__"
                else:
                    described = api["classes"].get(owner, {"members": {}, "enum": None})
                    present[major] = name in described["members"] or name in (described["enum"] or {})
            checked += 1
            if guarded and not any(present.values()):
                problems.append(f"{where}: guarded, but in neither TensorRT 10 nor 11 (a typo?)")
            elif not guarded and not all(present.values()):
                missing = [str(major) for major, ok in present.items() if not ok]
                problems.append(f"{where}: not in TensorRT {', '.join(missing)} (guard it with hasattr/getattr)")
            for major, api in apis.items():
                member = api["classes"].get(owner, {}).get("members", {}).get(name, {})
                signatures = member.get("signatures") or []
                if keywords and signatures and not any(set(keywords) <= set(s) for s in signatures):
                    problems.append(f"{where}: keywords {keywords} are not parameters in TensorRT {major} {signatures}")
    assert checked >= 40, f"only {checked} TensorRT uses found: is the receiver table out of date?"
    assert not problems, "\n".join(problems)


def test_the_scanner_sees_unguarded_and_guarded_uses(tmp_path):
    source = tmp_path / "tensorrt_probe.py"
    source.write_text("def f(trt, engine):\n    engine.device_memory_size\n"
                      "    getattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED', None)\n"
                      "    config.set_timing_cache(cache, ignore_mismatch=False)\n")
    assert sorted(tensorrt_uses(source), key=str) == sorted([
        ("ICudaEngine", "device_memory_size", False, [], 2), ("module", "NetworkDefinitionCreationFlag", False, [], 3),
        ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED", True, [], 3),
        ("IBuilderConfig", "set_timing_cache", False, ["ignore_mismatch"], 4)], key=str)
