"""The calibration cache: activation ranges measured once, reused while nothing they depend on changed.

A JSON file whose first key is the format marker (so that the file is recognisably ours)::

    {"format": "assd-calibration-cache", "version": 2,
     "onnx_sha256": "<SHA-256 of the fp32 ONNX file calibrated>",
     "settings": {"images": 500, "source": "voc:...", "percentile": 99.999, "num_bins": 2048, ...},
     "images_used": 500, "run_id": "<the run that measured the ranges (assd.calibration.run_set)>",
     "ranges": {"entropy": {"<tensor>": [lowest, highest], ...}, "percentile": {...}, "max": {...}}}

One pass over the images gives the ranges of every method (``assd.calibration.quantize.measure_ranges``),
so switching ``--calib-method`` (or ``auto``) reuses the file. It is reused only when the ONNX file's
hash and every setting match; otherwise the ranges are measured again and the file rewritten
(atomically). A file at the cache path that does not carry our format marker (the model itself, a user
file, garbage) is never overwritten: ``check_cache_path`` refuses it before any work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from assd.calibration.run_set import new_run_id
from assd.errors import UserError
from assd.paths import check_outputs
from assd.utils import atomic_write_json

CACHE_FORMAT = "assd-calibration-cache"
CACHE_VERSION = 2

Ranges = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything the measured ranges depend on besides the ONNX file itself."""

    images: int  # images asked for (--calib-images)
    source: str  # data spec or absolute image folder
    percentile: float  # for method "percentile"
    op_types: tuple[str, ...]  # op types whose input/output tensors are calibrated
    num_bins: int  # |x| histogram bins (entropy, percentile)

    def to_dict(self) -> dict:
        return {**asdict(self), "op_types": list(self.op_types)}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_ours(path: Path) -> dict | None:
    """The parsed cache when ``path`` holds a JSON object with our format marker, else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
        if CACHE_FORMAT.encode() not in head:
            return None
        content = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return content if isinstance(content, dict) and content.get("format") == CACHE_FORMAT else None


def check_cache_path(path: str | Path) -> None:
    """Refuse (UserError) a cache path we must not or cannot write: a folder, an existing file that is not
    an assd calibration cache (e.g. the model itself, or any user file: it would be overwritten), or a
    place that is not writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--calib-cache {path}: is a folder: pass a file path such as model.calib.json")
    if path.exists() and _read_ours(path) is None:
        raise UserError(f"--calib-cache {path}: exists and is not an assd calibration cache (no "
                        f"'{CACHE_FORMAT}' marker): refusing to overwrite it; pass another path or delete the file")
    check_outputs([], files={"--calib-cache": path})


@dataclass
class CacheLookup:
    """The cached ranges per method when usable (``ranges`` is None otherwise) and a sentence saying why."""

    ranges: dict[str, Ranges] | None
    reason: str
    images_used: int = 0


def _changed_settings(cached: dict, settings: CalibrationSettings) -> list[str]:
    """``key old -> new`` for each setting that differs (AttributeError when ``cached`` is not a dict)."""
    return [f"{key} {cached.get(key)!r} -> {value!r}" for key, value in settings.to_dict().items()
            if cached.get(key) != value]


def _cached_ranges(content: dict, methods: tuple[str, ...]) -> tuple[dict[str, Ranges], int]:
    """({method: ranges}, images used) of a cache; KeyError/ValueError/TypeError/AttributeError when damaged."""
    ranges = {method: {name: (float(lo), float(hi)) for name, (lo, hi) in content["ranges"][method].items()}
              for method in methods}
    return ranges, int(content.get("images_used", 0))


def load_cache(path: str | Path, onnx_sha256: str, settings: CalibrationSettings,
               methods: tuple[str, ...]) -> CacheLookup:
    """The ranges of ``methods`` from the cache at ``path`` when it matches the ONNX file and settings."""
    path = Path(path)
    if not path.exists():
        return CacheLookup(None, f"calibration cache {path} does not exist yet: measuring the ranges")
    content = _read_ours(path)
    if content is None:  # check_cache_path refuses these before any work; kept for direct API calls
        raise UserError(f"--calib-cache {path}: not an assd calibration cache: refusing to overwrite it")
    if content.get("version") != CACHE_VERSION:
        return CacheLookup(None, f"calibration cache {path} was written by another assd version (format "
                                 f"{content.get('version')}): measuring the ranges again")
    if content.get("onnx_sha256") != onnx_sha256:
        return CacheLookup(None, f"calibration cache {path} was made for another ONNX file (SHA-256 differs): "
                                 "measuring the ranges again")
    try:
        changed = _changed_settings(content.get("settings", {}), settings)
        ranges, images_used = (None, 0) if changed else _cached_ranges(content, methods)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return CacheLookup(None, f"calibration cache {path} is damaged ({type(exc).__name__}: {exc}): measuring "
                                 "the ranges again")
    if changed:
        return CacheLookup(None, f"calibration cache {path} was made with other settings ({', '.join(changed)}): "
                                 "measuring the ranges again")
    count = len(next(iter(ranges.values()))) if ranges else 0
    return CacheLookup(ranges, f"calibration cache {path} matches this ONNX file and these settings: reusing "
                               f"the ranges of {count} tensors ({images_used} images)", images_used)


def cache_run_id(path: str | Path) -> str | None:
    """The run that measured the ranges of the cache at ``path`` (None: not ours, or written before run ids)."""
    content = _read_ours(Path(path))
    run_id = content.get("run_id") if content is not None else None
    return run_id if isinstance(run_id, str) and run_id else None


def save_cache(path: str | Path, ranges: dict[str, Ranges], onnx_sha256: str, settings: CalibrationSettings,
               images_used: int, run_id: str = "") -> None:
    """Write the cache (atomically); ``ranges``: {method: {tensor: (lowest, highest)}}; ``run_id``: the
    run that measured them (``assd.calibration.run_set``; a new one when not given)."""
    atomic_write_json(path, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "onnx_sha256": onnx_sha256,
        "settings": settings.to_dict(), "images_used": images_used, "run_id": run_id or new_run_id(),
        "ranges": {method: {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(values.items())}
                   for method, values in ranges.items()}})
