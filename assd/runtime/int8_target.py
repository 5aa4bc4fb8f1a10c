"""Which runtime an int8 graph was laid out for: ``assd.int8`` in its ONNX metadata.

``assd calibrate`` writes one of two int8 graphs (docs/deployment.md, docs/cpu.md):

* ``target: tensorrt`` (the default): TensorRT's explicit-quantization pattern, Q/DQ on Conv inputs only,
  int8 symmetric activations; what ``assd build-engine`` turns into an engine;
* ``target: cpu`` (``calibrate --target cpu``): ONNX Runtime's own QDQ format for its CPU provider (Q/DQ
  on Conv outputs as well, so that ONNX Runtime fuses each Conv into an int8 kernel); TensorRT wants its own
  pattern, so no engine is built from it and no TensorRT provider runs it.

The key holds JSON, e.g. ``{"target": "cpu", "format": "onnxruntime-qdq", "weights": "int8 symmetric
per-channel", "activations": "uint8 asymmetric per-tensor"}``. An int8 graph without it (written before
the key existed) is a TensorRT-target graph.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from assd.errors import UserError

INT8_KEY = "assd.int8"
TARGETS = ("tensorrt", "cpu")


@dataclass(frozen=True)
class Int8Layout:
    target: str  # "tensorrt" or "cpu"
    format: str  # "tensorrt-explicit-qdq" or "onnxruntime-qdq"
    weights: str  # e.g. "int8 symmetric per-channel"
    activations: str  # e.g. "uint8 asymmetric per-tensor"


def set_int8_layout(model: onnx.ModelProto, layout: Int8Layout) -> None:
    """Record ``layout`` in ``model``'s metadata (after ``set_metadata``, which clears ``assd.*`` keys)."""
    kept = [prop for prop in model.metadata_props if prop.key != INT8_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=INT8_KEY, value=json.dumps(asdict(layout)))


def int8_layout(model: onnx.ModelProto, source: str = "model") -> Int8Layout | None:
    """The recorded layout of ``model`` (None when the key is absent); a damaged value is one UserError line."""
    props = {prop.key: prop.value for prop in model.metadata_props}
    if INT8_KEY not in props:
        return None
    try:
        layout = Int8Layout(**json.loads(props[INT8_KEY]))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{source}: damaged {INT8_KEY} metadata ({type(exc).__name__}): calibrate the fp32 "
                        "graph again with 'assd calibrate'") from None
    if layout.target not in TARGETS:
        raise UserError(f"{source}: {INT8_KEY} target is {layout.target!r}, not one of {', '.join(TARGETS)}: "
                        "calibrate the fp32 graph again with 'assd calibrate'")
    return layout


def read_int8_target(path: str | Path) -> str | None:
    """``"tensorrt"`` or ``"cpu"`` for an int8 assd graph at ``path``, None for any other file (fp32/fp16
    graphs, unreadable files: whoever opens them reports those). Weights are not loaded."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not our concern here: the caller's own loading reports it
        return None
    props = {prop.key: prop.value for prop in model.metadata_props}
    if props.get("assd.precision") != "int8":
        return None
    layout = int8_layout(model, str(path))
    return "tensorrt" if layout is None else layout.target


def refuse_cpu_target(path: str | Path, what: str) -> None:
    """One UserError line when ``path`` is a ``calibrate --target cpu`` graph and ``what`` (e.g. "build-engine")
    would hand it to TensorRT."""
    if read_int8_target(path) == "cpu":
        raise UserError(f"{path}: an int8 graph for CPU runtimes ('assd calibrate --target cpu': ONNX Runtime's QDQ "
                        f"format); {what} needs TensorRT's Q/DQ pattern: calibrate the fp32 graph with --target "
                        "tensorrt (the default) for an engine, or run this one with --backend onnxruntime or openvino")
