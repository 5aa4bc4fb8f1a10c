"""FP16 range audit: which tensors of an fp16 graph would leave float16's range on real images.

The fp32 graph runs on calibration images with every candidate tensor (those the fp16 graph types as
float16) exposed as an output, and the largest magnitude of each is kept. A tensor is reported

* **overflowing** when it reaches ``FP16_MAX / headroom`` (65504 / 2 by default: the images are a
  sample, a deployed image may go further; beyond 65504 TensorRT stores inf and the detections
  become NaN), or
* **underflowing** when it is nonzero on the images but never reaches fp16's smallest *normal*
  number (6.1e-5): the whole tensor would be subnormal or zero in float16 (10 bits or fewer).

The engine stage keeps the reported tensors in float32 (``assd.export.fp16.convert_to_fp16``'s
``keep_fp32``) and records them in the graph (``assd.fp16_range`` metadata) and the engine's sidecar;
``assd debug-precision --precision fp16`` reports them. Takes the names of the float16 tensors from its
caller, so calibration needs nothing of the export's fp16 conversion.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from assd.errors import UserError, short_reason

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2**-14 = 6.1e-5
HEADROOM = 2.0
AUDIT_IMAGES = 16  # default sample: the largest activations show on few images; each costs one fp32 run
FP16_RANGE_KEY = "assd.fp16_range"


@dataclass
class RangeAudit:
    images: int
    overflow: dict[str, float] = field(default_factory=dict)  # tensor -> max |x| on the images
    underflow: dict[str, float] = field(default_factory=dict)  # tensor -> max |x| (nonzero, < 6.1e-5)
    headroom: float = HEADROOM
    source: str = ""

    @property
    def kept_fp32(self) -> list[str]:
        """The tensors to keep in float32, largest overflow first."""
        return sorted(self.overflow, key=self.overflow.get, reverse=True) + sorted(self.underflow)

    def lines(self) -> list[str]:
        """One line per finding (for the terminal and reports)."""
        limit = FP16_MAX / self.headroom
        return ([f"{name}: max |x| {value:.3g} on {self.images} images (fp16 max 65504, kept below "
                 f"{limit:.0f})" for name, value in sorted(self.overflow.items(), key=lambda kv: -kv[1])]
                + [f"{name}: max |x| {value:.3g}, below fp16's smallest normal {FP16_MIN_NORMAL:.2g} (underflow)"
                   for name, value in sorted(self.underflow.items())])

    def summary(self) -> str:
        if not self.kept_fp32:
            return f"fp16 range audit on {self.images} images: every fp16 tensor fits float16"
        return (f"fp16 range audit on {self.images} images: {len(self.overflow)} tensor(s) overflow and "
                f"{len(self.underflow)} underflow float16, kept in float32 ({', '.join(self.kept_fp32[:4])}"
                f"{', ...' if len(self.kept_fp32) > 4 else ''})")

    def to_dict(self) -> dict:
        return asdict(self)


class UnloadableGraph(UserError):
    """ONNX Runtime cannot open the graph whose range is measured (the caller adds the file's name)."""


def tensor_magnitudes(model: onnx.ModelProto, names: Iterable[str], batches: Iterable[np.ndarray],
                      input_name: str = "images") -> tuple[dict[str, float], int]:
    """({tensor: max |x| over all batches}, images seen) for the float tensors ``names`` of ``model``
    (run with ONNX Runtime on the CPU; one batch's tensors in memory at a time)."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    names = [name for name in dict.fromkeys(names) if name]
    existing = {value.name for value in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - e.g. an IR version newer than this ONNX Runtime reads: one line
        raise UnloadableGraph(f"ONNX Runtime cannot load it to measure its fp16 range ({short_reason(exc)}): "
                              "re-export it with 'assd export', or save it with an IR version this ONNX Runtime "
                              "reads") from None
    largest = dict.fromkeys(names, 0.0)
    images = 0
    for batch in batches:
        for name, values in zip(names, session.run(names, {input_name: batch})):
            if values.size and np.issubdtype(values.dtype, np.floating):
                largest[name] = max(largest[name], float(np.nanmax(np.abs(values))))
        images += len(batch)
    return largest, images


def audit_fp16_range(fp32_model: onnx.ModelProto, fp16_tensors: Iterable[str], batches: Iterable[np.ndarray],
                     headroom: float = HEADROOM, source: str = "") -> RangeAudit:
    """The audit of the fp16 graph whose float16 tensors are ``fp16_tensors`` (names shared with
    ``fp32_model``'s node outputs), measured with ``fp32_model`` on ``batches`` ([B, 3, S, S] float32)."""
    produced = {name for node in fp32_model.graph.node for name in node.output}
    candidates = sorted(set(fp16_tensors) & produced)
    largest, images = tensor_magnitudes(fp32_model, candidates, batches)
    limit = FP16_MAX / headroom
    return RangeAudit(images=images, headroom=headroom, source=source,
                      overflow={name: value for name, value in largest.items() if value >= limit},
                      underflow={name: value for name, value in largest.items() if 0 < value < FP16_MIN_NORMAL})


def audit_batches(source: str, count: int, cfg, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Pre-processed batches of ``count`` images of ``source`` (an image folder or a data spec, as for
    calibration), ``batch_size`` at a time (a fixed-batch graph's size)."""
    from assd.calibration.images import ImageCalibrationReader, calibration_images

    reader = ImageCalibrationReader(calibration_images(source, count), cfg, batch_size=batch_size)
    while (batch := reader.get_next()) is not None:
        yield batch["images"]


def set_fp16_range(model: onnx.ModelProto, audit: RangeAudit) -> None:
    """Record the audit in the graph's metadata (``assd.fp16_range``), replacing any earlier one."""
    kept = [p for p in model.metadata_props if p.key != FP16_RANGE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=FP16_RANGE_KEY, value=json.dumps(audit.to_dict()))


def read_fp16_range(model_or_path: onnx.ModelProto | str | Path) -> dict[str, float]:
    """{tensor: max |x|} of the tensors a graph keeps in float32 by its range audit ({} when none)."""
    model = model_or_path
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model_or_path), load_external_data=False)
        except Exception:  # noqa: BLE001 - an unreadable graph records nothing; its loaders report it
            return {}
    value = next((p.value for p in model.metadata_props if p.key == FP16_RANGE_KEY), None)
    try:
        audit = json.loads(value) if value else {}
        kept = {**audit.get("overflow", {}), **audit.get("underflow", {})}
        return {str(name): float(magnitude) for name, magnitude in kept.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
