"""The JSON sidecar of a TensorRT engine (``model.engine.json``) and the checks it allows before loading.

A serialized engine runs only with the TensorRT version that built it (unless built version-compatible,
then with that version or newer) and only on GPUs of the compute capability it was built on (unless
built hardware-compatible, e.g. ``ampere+``: compute capability 8.0 or newer). The sidecar records
both, so a mismatch is refused with a one-line reason instead of a deserialization failure deep inside
TensorRT. It also carries everything runners, bench and eval-engine need to know about the model
(input shape, batch range, classes, post-processing, the whole ModelConfig) and the SHA-256 of the
ONNX file the engine was built from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assd.errors import UserError
from assd.models.config import ModelConfig

SIDECAR_FORMAT = "assd-engine"
SIDECAR_VERSION = 1
HARDWARE_COMPAT_LEVELS = ("none", "same-cc", "ampere+")


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(f"{engine_path}.json")


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)`` (non-numeric suffixes ignored)."""
    numbers = [int(part) for part in re.findall(r"\d+", text.split("+")[0])]
    if not numbers:
        raise ValueError(f"not a version: {text!r}")
    return tuple(numbers)


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
    assd_version: str = ""
    built_at: str = ""
    class_names: list[str] = field(default_factory=list)
    kept_high: list[str] = field(default_factory=list)  # layers the graph keeps in fp32 (assd.kept_high)

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model_config)

    def to_dict(self) -> dict:
        return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "sidecar") -> EngineInfo:
        if data.get("format") != SIDECAR_FORMAT:
            raise UserError(f"{source}: not an assd engine sidecar: rebuild the engine with 'assd build-engine'")
        if data.get("version") != SIDECAR_VERSION:
            raise UserError(f"{source}: sidecar version {data.get('version')} is not supported by this assd "
                            f"(expects {SIDECAR_VERSION}): rebuild the engine with 'assd build-engine'")
        fields = {key: value for key, value in data.items() if key not in ("format", "version")}
        try:
            info = cls(**fields)
            info.config  # noqa: B018 - validates the stored ModelConfig
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{source}: damaged engine sidecar ({exc}): rebuild the engine with "
                            "'assd build-engine'") from None
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
    return EngineInfo.from_dict(data, source=str(path))


def check_compatible(info: EngineInfo, tensorrt_version: str, compute_capability: tuple[int, int],
                     gpu_name: str, engine: str = "engine") -> None:
    """Refuse (UserError, one line) an engine this TensorRT version or this GPU cannot run."""
    built, here = parse_version(info.tensorrt_version), parse_version(tensorrt_version)
    if info.version_compatible:
        if here < built:
            raise UserError(f"{engine}: built version-compatible with TensorRT {info.tensorrt_version}, which "
                            f"runs on that version or newer; this machine has TensorRT {tensorrt_version}: "
                            "upgrade TensorRT or rebuild the engine here")
    elif here != built:
        raise UserError(f"{engine}: built with TensorRT {info.tensorrt_version}, this machine has TensorRT "
                        f"{tensorrt_version}: rebuild it here with 'assd build-engine' (or build it with "
                        "--version-compatible)")
    built_cc = parse_version(info.compute_capability)[:2]
    if info.hardware_compatibility == "ampere+":
        if compute_capability < (8, 0):
            raise UserError(f"{engine}: built for Ampere or newer GPUs (compute capability >= 8.0); this GPU "
                            f"({gpu_name}) is {compute_capability[0]}.{compute_capability[1]}: rebuild it here")
    elif tuple(compute_capability) != built_cc:
        raise UserError(f"{engine}: built for compute capability {info.compute_capability} ({info.gpu_name}); "
                        f"this GPU ({gpu_name}) is {compute_capability[0]}.{compute_capability[1]}: rebuild it "
                        "on this GPU with 'assd build-engine' (or build it with --hardware-compat ampere+)")
