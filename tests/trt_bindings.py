"""The real TensorRT Python bindings (10.x and 11.x), importable on a machine without TensorRT or a GPU.

NVIDIA publishes the bindings alone as small wheels (``tensorrt-cu12-bindings`` 10.x,
``tensorrt-cu13-bindings`` 11.x). Their ``tensorrt.so`` links ten C entry points of
``libnvinfer.so.N``, ``libnvinfer_plugin.so.N`` and ``libnvonnxparser.so.N`` and finds them through
its RUNPATH ``$ORIGIN``. Stubs of those three libraries, compiled here with the system C compiler
from ``STUB_C`` and put beside ``tensorrt.so``, let the module import: every class, enum member,
property and method signature (pybind11 docstrings) can then be read, though nothing can run.

``api(major)`` returns that description as JSON-like data, made in a subprocess (the stubs must
never be loaded into the test process). Wheels, stubs and descriptions are cached in
``$ASSD_TRT_BINDINGS_CACHE`` (default ``~/.cache/assd-trt-bindings``) so that reruns are offline and fast.
``Unavailable`` says why the bindings cannot be had here (no registry, no compiler, no wheel for
this Python).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BINDINGS = {10: ("tensorrt-cu12-bindings", "10.16.1.11"), 11: ("tensorrt-cu13-bindings", "11.4.0.106")}
ENTRY_POINTS = ("createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createInferRefitter_INTERNAL",
                "createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getBuilderPluginRegistry",
                "getPluginRegistry", "initLibNvInferPlugins", "getNvOnnxParserVersion", "getInferLibVersion")
STUB_C = "".join(f"void *{name}(void) {{ return 0; }}\n" for name in ENTRY_POINTS)  # never called
LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")


class Unavailable(Exception):
    """The bindings cannot be had on this machine; the message says why (a pytest skip reason)."""


def cache_root() -> Path:
    return Path(os.environ.get("ASSD_TRT_BINDINGS_CACHE", Path.home() / ".cache" / "assd-trt-bindings"))


def _pyver() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _download(package: str, version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", str(into), f"{package}=={version}"]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"pip download {package}=={version} failed ({exc})") from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise Unavailable(f"cannot download {package}=={version} for {_pyver()} (no registry reachable?): {last}")
    return wheels[0]


def _build_stubs(folder: Path, major: int) -> None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise Unavailable("no C compiler (cc/gcc) to build the stub TensorRT libraries")
    source = folder / "trt_stub.c"
    source.write_text(STUB_C)
    for library in LIBRARIES:
        name = f"{library}.so.{major}"
        done = subprocess.run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(folder / name),
                               str(source)], check=False, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Unavailable(f"{compiler} could not build {name}: {done.stderr.strip()[:200]}")


def bindings_dir(major: int) -> Path:
    """A folder holding ``tensorrt_bindings/`` (+ stubs) of TensorRT ``major``; made once, then cached."""
    package, version = BINDINGS[major]
    target = cache_root() / f"{package}-{version}-{_pyver()}"
    if (target / "tensorrt_bindings" / "tensorrt.so").is_file():
        return target
    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        work_dir = tempfile.TemporaryDirectory(dir=cache_root())
    except OSError as exc:
        raise Unavailable(f"cannot write the cache folder {cache_root()} ({exc.strerror}): set "
                          "ASSD_TRT_BINDINGS_CACHE to a writable folder") from None
    with work_dir as work:
        work = Path(work)
        wheel = _download(package, version, work / "wheel")
        unpacked = work / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        if not (unpacked / "tensorrt_bindings" / "tensorrt.so").is_file():
            raise Unavailable(f"{wheel.name} has no tensorrt_bindings/tensorrt.so")
        _build_stubs(unpacked / "tensorrt_bindings", major)
        try:
            unpacked.rename(target)  # atomic: a concurrent run may have won the race
        except OSError:
            if not (target / "tensorrt_bindings" / "tensorrt.so").is_file():
                raise
    return target


# Run in a subprocess with the bindings folder first on sys.path: prints the API as JSON.
INTROSPECT = r'''
import enum, json, re, sys
import tensorrt_bindings as trt

def split_params(text):
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current); current = ""
        else:
            current += char
    return [p.strip() for p in parts + [current] if p.strip()]

def signatures(name, doc):
    found = []
    for line in (doc or "").splitlines():
        match = re.match(r"\s*(?:\d+\.\s+)?" + re.escape(name) + r"\((.*)\)\s*(?:->|$)", line)
        if match and "*args" not in match.group(1):
            names = [re.split(r"[:=]", p)[0].strip() for p in split_params(match.group(1))]
            found.append([n for n in names if n != "self"])
    return found

def is_enum(cls):
    return hasattr(cls, "__members__") and isinstance(getattr(cls, "__members__"), dict)

def describe_class(cls):
    out = {"members": {}, "enum": None}
    if is_enum(cls):
        out["enum"] = {k: int(v) for k, v in cls.__members__.items()}
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        raw = None
        for base in cls.__mro__:
            if name in base.__dict__:
                raw = base.__dict__[name]; break
        value = getattr(cls, name, None)
        if isinstance(raw, property):
            out["members"][name] = {"kind": "property", "settable": raw.fset is not None}
        elif isinstance(raw, (staticmethod, classmethod)) or callable(value) and not isinstance(value, type) \
                and not (out["enum"] and name in out["enum"]):
            out["members"][name] = {"kind": "method", "signatures": signatures(name, getattr(value, "__doc__", ""))}
        elif isinstance(value, type):
            out["members"][name] = {"kind": "class"}
        else:
            out["members"][name] = {"kind": "attribute"}
    return out

api = {"version": trt.__version__, "module": {}, "classes": {}}
for name in dir(trt):
    if name.startswith("_"):
        continue
    value = getattr(trt, name)
    if isinstance(value, type):
        api["module"][name] = "class"
        api["classes"][name] = describe_class(value)
        for inner, inner_value in vars(value).items():
            if isinstance(inner_value, type) and not inner.startswith("_"):
                api["classes"][f"{name}.{inner}"] = describe_class(inner_value)
    else:
        api["module"][name] = "function" if callable(value) else "attribute"
json.dump(api, sys.stdout)
'''


def api(major: int) -> dict:
    """The real bindings' API of TensorRT ``major``: {"version", "module": {name: kind}, "classes": {name:
    {"enum": {member: int} | None, "members": {name: {"kind", "signatures": [[param, ...], ...]}}}}}."""
    folder = bindings_dir(major)
    cached = folder / "api.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run([sys.executable, "-c", INTROSPECT], check=False, capture_output=True, text=True, env=env, timeout=120,
                          cwd=folder)
    if done.returncode != 0:
        raise Unavailable(f"the TensorRT {major} bindings do not import with the stubs: "
                          f"{done.stderr.strip().splitlines()[-1:]}")
    described = json.loads(done.stdout)
    temporary = cached.with_suffix(".tmp")
    temporary.write_text(json.dumps(described))
    temporary.replace(cached)
    return described
