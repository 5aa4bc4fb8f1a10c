"""Field-by-field checks of an engine sidecar (``model.engine.json``) and of the engine/sidecar pair.

A sidecar is JSON anyone can edit: a list instead of an object, a batch given as a string or thresholds
as strings reached ``AttributeError``/``TypeError`` deep in ``export --triton``, ``bench`` and
``eval-engine``. ``sidecar_problem`` names the first wrong field in one phrase; ``pair_problem`` says
when the engine beside the sidecar is not the one it describes (an empty file, or another build: the
sidecar records the engine's SHA-256, ``engine_sha256``).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

MAX_ENGINE_BATCH = 65_536  # far beyond any GPU's memory for a detector; a larger batch_max is damage
_TEXT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "onnx_sha256", "onnx_file",
                "outputs", "hardware_compatibility", "assd_version", "built_at", "engine_sha256")
_FLAG_FIELDS = ("version_compatible", "tf32")
_LIST_OF_TEXT_FIELDS = ("class_names", "kept_high")
_PRECISIONS, _OUTPUTS = ("fp32", "fp16", "int8"), ("raw", "detections")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_problem(data: dict) -> str | None:
    for name in _TEXT_FIELDS:
        if name in data and not isinstance(data[name], str):
            return f"'{name}' is {data[name]!r}, not a string"
    for name in _FLAG_FIELDS:
        if name in data and not isinstance(data[name], bool):
            return f"'{name}' is {data[name]!r}, not true/false"
    for name in _LIST_OF_TEXT_FIELDS:
        if name in data and not (isinstance(data[name], list) and all(isinstance(v, str) for v in data[name])):
            return f"'{name}' is not a list of strings"
    for name in ("model_config", "postprocess", "accuracy_gate"):
        if name in data and not isinstance(data[name], dict):
            return f"'{name}' is not a JSON object"
    kept = data.get("fp16_range_kept", {})  # tensor -> max |x| (the fp16 range audit)
    if not (isinstance(kept, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in kept.values())):
        return "'fp16_range_kept' is not an object of tensor names and magnitudes"
    return None


def _value_problem(data: dict) -> str | None:
    from assd.errors import UserError
    from assd.runtime.engine_info import HARDWARE_COMPAT_LEVELS
    from assd.runtime.postprocess import PostprocessConfig

    batches = [data.get(name) for name in ("batch_min", "batch_opt", "batch_max")]
    if not all(_whole(b) and 1 <= b <= MAX_ENGINE_BATCH for b in batches):
        return f"batch_min/opt/max {batches}: must be whole numbers in 1..{MAX_ENGINE_BATCH}"
    if not batches[0] <= batches[1] <= batches[2]:
        return f"batch_min/opt/max {batches}: must satisfy min <= opt <= max"
    shape = data.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_whole(v) and v >= 1 for v in shape)):
        return f"'input_shape' is {shape!r}, not [3, S, S]"
    if data.get("precision") not in _PRECISIONS:
        return f"'precision' is {data.get('precision')!r}, not one of {', '.join(_PRECISIONS)}"
    if data.get("outputs", "raw") not in _OUTPUTS:
        return f"'outputs' is {data.get('outputs')!r}, not one of {', '.join(_OUTPUTS)}"
    if data.get("hardware_compatibility", "none") not in HARDWARE_COMPAT_LEVELS:
        return f"'hardware_compatibility' is {data.get('hardware_compatibility')!r}"
    if not re.match(r"^\d+(\.\d+)*", str(data.get("tensorrt_version", ""))):
        return f"'tensorrt_version' is {data.get('tensorrt_version')!r}, not a version"
    if not re.fullmatch(r"\d+\.\d+", str(data.get("compute_capability", ""))):
        return f"'compute_capability' is {data.get('compute_capability')!r}, not MAJOR.MINOR"
    postprocess = data.get("postprocess") or {}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) or v is None
               and k == "max_detections" for k, v in postprocess.items()):
        return f"'postprocess' {postprocess}: thresholds must be finite numbers"
    try:
        PostprocessConfig.from_dict(postprocess)
    except (UserError, TypeError) as exc:
        return f"'postprocess': {exc}"
    return None


def sidecar_problem(data) -> str | None:
    """What is wrong with a parsed sidecar, in one phrase; None when every field has its type and range."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    return _type_problem(data) or _value_problem(data)


def pair_problem(engine_path: str | Path, engine_sha256: str) -> str | None:
    """Why ``engine_path`` is not the engine its sidecar describes (empty, or another SHA-256), or None."""
    path = Path(engine_path)
    if path.stat().st_size == 0:
        return "the engine is an empty file (0 bytes)"
    if not engine_sha256:  # sidecars written before the engine's hash was recorded
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != engine_sha256:
        return "the engine is not the one its sidecar describes (another build: its SHA-256 differs)"
    return None
