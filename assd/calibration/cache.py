"""The calibration cache: activation ranges measured once, reused while nothing they depend on changed.

A JSON file::

    {"format": "assd-calibration-cache", "version": 1,
     "onnx_sha256": "<SHA-256 of the fp32 ONNX file calibrated>",
     "settings": {"method": "entropy", "images": 500, "source": "voc:...", ...},
     "images_used": 500,
     "ranges": {"<tensor name>": [lowest, highest], ...}}

It is reused only when the ONNX file's hash and every setting match; otherwise the ranges are measured
again and the file rewritten (atomically).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from assd.utils import atomic_write_json

CACHE_FORMAT = "assd-calibration-cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything the measured ranges depend on besides the ONNX file itself."""

    method: str  # "entropy", "percentile" or "max"
    images: int  # images asked for (--calib-images)
    source: str  # data spec or absolute image folder
    percentile: float | None  # for method "percentile"
    op_types: tuple[str, ...]  # op types whose input/output tensors are calibrated
    num_bins: int | None  # histogram bins (entropy, percentile)

    def to_dict(self) -> dict:
        return {**asdict(self), "op_types": list(self.op_types)}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CacheLookup:
    """The cached ranges when usable (``ranges`` is None otherwise) and a sentence saying why."""

    ranges: dict[str, tuple[float, float]] | None
    reason: str
    images_used: int = 0


def load_cache(path: str | Path, onnx_sha256: str, settings: CalibrationSettings) -> CacheLookup:
    path = Path(path)
    if not path.exists():
        return CacheLookup(None, f"calibration cache {path} does not exist yet: measuring the ranges")
    try:
        content = json.loads(path.read_text())
        if content.get("format") != CACHE_FORMAT or content.get("version") != CACHE_VERSION:
            raise ValueError("not an assd calibration cache")
        ranges = {name: (float(lo), float(hi)) for name, (lo, hi) in content["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return CacheLookup(None, f"calibration cache {path} is unreadable ({exc}): measuring the ranges again")
    if content.get("onnx_sha256") != onnx_sha256:
        return CacheLookup(None, f"calibration cache {path} was made for another ONNX file (SHA-256 differs): "
                                 "measuring the ranges again")
    cached = content.get("settings", {})
    changed = [f"{key} {cached.get(key)!r} -> {value!r}" for key, value in settings.to_dict().items()
               if cached.get(key) != value]
    if changed:
        return CacheLookup(None, f"calibration cache {path} was made with other settings ({', '.join(changed)}): "
                                 "measuring the ranges again")
    images_used = int(content.get("images_used", 0))
    return CacheLookup(ranges, f"calibration cache {path} matches this ONNX file and these settings: reusing "
                               f"the ranges of {len(ranges)} tensors ({images_used} images)", images_used)


def save_cache(path: str | Path, ranges: dict[str, tuple[float, float]], onnx_sha256: str,
               settings: CalibrationSettings, images_used: int) -> None:
    atomic_write_json(path, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "onnx_sha256": onnx_sha256,
        "settings": settings.to_dict(), "images_used": images_used,
        "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(ranges.items())}})
