"""The JSON sidecar of a TensorRT engine (``model.engine.json``) and the checks it allows before loading.

The sidecar records the TensorRT version, GPU and compatibility settings an engine was built with, so
that an engine this machine cannot run is refused with a one-line reason (``check_compatible``) instead
of a deserialization failure deep inside TensorRT, and a build TensorRT would refuse or get wrong is
refused before it starts (``check_build_target``). The rules, from NVIDIA's documentation, are listed
in docs/deployment.md ("Engine compatibility"). The sidecar also carries everything runners, bench and
eval-engine need to know about the model (input shape, batch range, classes, post-processing, the whole
ModelConfig) and the SHA-256 of the ONNX file the engine was built from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assd.errors import UserError
from assd.models.config import ModelConfig
from assd.models.limits import check_config

SIDECAR_FORMAT = "assd-engine"
SIDECAR_VERSION = 2  # 2: records tf32 (version 1 engines were built with TensorRT's default, TF32 on)
HARDWARE_COMPAT_LEVELS = ("none", "same-cc", "ampere+")
OLDEST_TENSORRT = (10, 0)  # assd builds and runs engines with TensorRT 10 and 11 APIs only
# Version-compatible engines across a major version: TensorRT support matrix 11.4.1, "Engine Portability":
# "TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and TensorRT 8
# version-compatible engines can run with a TensorRT 10 runtime. No other combination across major
# versions is supported." Within a major version, any newer runtime ("Engine Compatibility", 11.1).
CROSS_MAJOR_VERSION_COMPATIBLE = {(8, 10), (10, 11)}
# IBuilderConfig hardware compatibility (include/NvInfer.h, enum HardwareCompatibilityLevel):
# kAMPERE_PLUS "is only supported for engines built on NVIDIA Ampere and later GPUs" (sm_80+);
# kSAME_COMPUTE_CAPABILITY "is only supported for engines built on NVIDIA Turing and later GPUs" (sm_75+)
# and exists from TensorRT 10.9 on (first in NvInfer.h of the 10.9 release).
HARDWARE_COMPAT_BUILD_GPU = {"ampere+": (8, 0), "same-cc": (7, 5)}
HARDWARE_COMPAT_TENSORRT = {"ampere+": (8, 6), "same-cc": (10, 9)}


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(f"{engine_path}.json")


def parse_version(text: str) -> tuple[int, ...]:
    """The leading dotted numbers: ``"10.3.0.26"`` -> ``(10, 3, 0, 26)``, ``"10.3.0.post1"`` and
    ``"10.3.0+cuda12"`` -> ``(10, 3, 0)`` (digits inside a suffix are not version parts)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def release(text: str) -> tuple[int, int, int]:
    """MAJOR.MINOR.PATCH of a TensorRT version, without the build number: NVIDIA ships one release as
    ``10.3.0`` (the ``tensorrt`` wheel's ``__version__``) and ``10.3.0.26`` (the libraries, the bindings
    wheels), so those are the same TensorRT."""
    return (*parse_version(text), 0, 0)[:3]


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True)
class EngineInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    precision: str  # "fp32", "fp16" or "int8" (of the ONNX graph the engine was built from)
    input_shape: list[int]  # [3, S, S] per image
    batch_min: int
    batch_opt: int
    batch_max: int
    onnx_sha256: str
    onnx_file: str
    model_config: dict
    postprocess: dict
    outputs: str = "raw"  # "raw" (loc, conf) or "detections"
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    tf32: bool = False  # whether float32 layers were allowed TF32 (BuilderFlag.TF32)
    assd_version: str = ""
    built_at: str = ""
    class_names: list[str] = field(default_factory=list)
    kept_high: list[str] = field(default_factory=list)  # layers the graph keeps in fp32 (assd.kept_high)
    fp16_range_kept: dict = field(default_factory=dict)  # tensor -> max |x|: kept fp32 by the fp16 range audit
    engine_sha256: str = ""  # of the engine file: a sidecar and an engine of two builds are detected
    accuracy_gate: dict = field(default_factory=dict)  # build-engine's gate: the graph it verified (= onnx_sha256), Δ

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model_config)

    def to_dict(self) -> dict:
        return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "sidecar") -> EngineInfo:
        from assd.runtime.sidecar_checks import sidecar_problem

        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise UserError(f"{source}: not an assd engine sidecar: rebuild the engine with 'assd build-engine'")
        if data.get("version") != SIDECAR_VERSION:
            raise UserError(f"{source}: sidecar version {data.get('version')} is not supported by this assd "
                            f"(expects {SIDECAR_VERSION}): rebuild the engine with 'assd build-engine'")
        if problem := sidecar_problem(data):
            raise UserError(f"{source}: damaged engine sidecar: {problem}: rebuild the engine with 'assd build-engine'")
        fields = {key: value for key, value in data.items() if key not in ("format", "version")}
        try:
            info = cls(**fields)
            cfg = info.config
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{source}: damaged engine sidecar ({exc}): rebuild the engine with "
                            "'assd build-engine'") from None
        check_config(cfg, source)  # sane sizes and counts, as for checkpoints and ONNX files
        return info


def read_engine_info(engine_path: str | Path) -> EngineInfo:
    """The sidecar of ``engine_path``; UserError when the engine or its sidecar is missing or damaged."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise UserError(f"{engine_path}: engine file not found")
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise UserError(f"{engine_path}: no sidecar {path.name} beside it (it says which GPU, TensorRT "
                        "version and model the engine is for): rebuild it with 'assd build-engine'")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable engine sidecar ({exc}): rebuild the engine with "
                        "'assd build-engine'") from None
    info = EngineInfo.from_dict(data, source=str(path))
    from assd.runtime.sidecar_checks import pair_problem

    if problem := pair_problem(engine_path, info.engine_sha256):
        raise UserError(f"{engine_path}: {problem}: rebuild it with 'assd build-engine' (engine and sidecar are "
                        "written together)")
    return info


def check_compatible(info: EngineInfo, tensorrt_version: str, compute_capability: tuple[int, int],
                     gpu_name: str, engine: str = "engine") -> None:
    """Refuse (UserError, one line) an engine this TensorRT version or this GPU cannot run."""
    built, here = release(info.tensorrt_version), release(tensorrt_version)
    if info.version_compatible:
        # "engines built with newer versions do not work with older runtimes"; across majors only the
        # pairs in CROSS_MAJOR_VERSION_COMPATIBLE.
        if here < built:
            raise UserError(f"{engine}: built version-compatible with TensorRT {info.tensorrt_version}, which runs "
                            f"on that version or newer; this machine has TensorRT {tensorrt_version}: upgrade "
                            "TensorRT or rebuild the engine here")
        if here[0] != built[0] and (built[0], here[0]) not in CROSS_MAJOR_VERSION_COMPATIBLE:
            raise UserError(f"{engine}: built version-compatible with TensorRT {info.tensorrt_version}; TensorRT "
                            f"{here[0]} cannot run TensorRT {built[0]} engines (NVIDIA supports only 8 -> 10 and "
                            "10 -> 11 across major versions): rebuild it here with 'assd build-engine'")
    elif here != built:
        # "By default, TensorRT engines are compatible only with the version of TensorRT used to build them."
        raise UserError(f"{engine}: built with TensorRT {info.tensorrt_version}, this machine has TensorRT "
                        f"{tensorrt_version}: rebuild it here with 'assd build-engine' (or build it with "
                        "--version-compatible)")
    capability = tuple(compute_capability)
    here_cc = f"{capability[0]}.{capability[1]}"
    if info.hardware_compatibility == "ampere+":
        if capability < (8, 0):
            raise UserError(f"{engine}: built for Ampere or newer GPUs (compute capability >= 8.0); this GPU "
                            f"({gpu_name}) is {here_cc}: rebuild it here")
        return
    if capability != parse_version(info.compute_capability)[:2]:
        raise UserError(f"{engine}: built for compute capability {info.compute_capability} ({info.gpu_name}); "
                        f"this GPU ({gpu_name}) is {here_cc}: rebuild it on this GPU with 'assd build-engine' "
                        "(or build it with --hardware-compat ampere+)")
    if info.hardware_compatibility == "none" and gpu_name != info.gpu_name:
        # Without hardware compatibility "serialized engines are not portable across devices" (support
        # matrix): the same compute capability is not enough, the engine is for that GPU model.
        raise UserError(f"{engine}: built for the {info.gpu_name}; this GPU is a {gpu_name} (same compute "
                        f"capability {here_cc}, another model): rebuild it here with 'assd build-engine' (or build "
                        "it with --hardware-compat same-cc)")


def check_build_target(hardware_compat: str, version_compatible: bool, tensorrt_version: str,
                       compute_capability: tuple[int, int], gpu_name: str) -> None:
    """Refuse (UserError, one line) a build this TensorRT or this GPU does not support."""
    version = parse_version(tensorrt_version)
    if version[:2] < OLDEST_TENSORRT:
        raise UserError(f"TensorRT {tensorrt_version} is too old: assd builds and runs engines with TensorRT 10 "
                        "or 11: upgrade TensorRT")
    if hardware_compat != "none":
        needed_trt, needed_gpu = HARDWARE_COMPAT_TENSORRT[hardware_compat], HARDWARE_COMPAT_BUILD_GPU[hardware_compat]
        if version < needed_trt:
            raise UserError(f"--hardware-compat {hardware_compat} needs TensorRT {_dotted(needed_trt)} or newer; this "
                            f"machine has {tensorrt_version}: upgrade TensorRT or use --hardware-compat "
                            f"{'ampere+' if hardware_compat == 'same-cc' else 'none'}")
        if tuple(compute_capability) < needed_gpu:
            raise UserError(f"--hardware-compat {hardware_compat} must be built on a GPU of compute capability "
                            f">= {_dotted(needed_gpu)}; this GPU ({gpu_name}) is {compute_capability[0]}."
                            f"{compute_capability[1]}: build it on a newer GPU or use --hardware-compat none")
    # BuilderFlag::kVERSION_COMPATIBLE "is only supported by NVIDIA Volta and later GPUs" (NvInfer.h).
    if version_compatible and tuple(compute_capability) < (7, 0):
        raise UserError(f"--version-compatible needs a GPU of compute capability >= 7.0; this GPU ({gpu_name}) is "
                        f"{compute_capability[0]}.{compute_capability[1]}")
