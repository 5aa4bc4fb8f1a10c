"""The metadata every assd ONNX file carries in ``metadata_props``, and reading it back.

Every later step (calibration, engine building, runners, bench, eval-engine) configures itself from
these keys instead of asking the user again:

=====================  ==========================================================================
``assd.format``        ``"assd-onnx"`` (marks the file as ours)
``assd.version``       the assd version that exported it
``assd.model_config``  the ``ModelConfig`` as JSON (preset, input size, classes, priors, mean/std)
``assd.postprocess``   the ``PostprocessConfig`` as JSON (thresholds used for detections)
``assd.outputs``       ``"raw"`` (loc, conf) or ``"detections"`` (boxes, scores, classes, count)
``assd.precision``     ``"fp32"``, ``"fp16"`` or ``"int8"``
``assd.batch``         ``"dynamic"`` or the fixed batch size
=====================  ==========================================================================

Reading the metadata also checks it against the graph (``check_graph``): one input ``images [B, 3, S,
S]`` float, outputs ``loc [B, A, 4]`` / ``conf [B, A, C]`` (or the four detection outputs), with S, A,
C and a fixed B as the metadata says; a malformed value or a mismatch is one ``UserError`` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from assd.errors import UserError
from assd.models.config import ModelConfig
from assd.models.limits import check_config

FORMAT = "assd-onnx"
OUTPUT_KINDS = {"raw": ("loc", "conf"), "detections": ("boxes", "scores", "classes", "count")}
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class OnnxMetadata:
    model_config: ModelConfig
    postprocess: dict
    outputs: str
    precision: str
    batch: str
    version: str

    @property
    def fixed_batch(self) -> int | None:
        """The fixed batch size, None for 'dynamic' (the value is validated when the file is read)."""
        return None if self.batch == "dynamic" else int(self.batch)

    def to_props(self) -> dict[str, str]:
        return {"assd.format": FORMAT, "assd.version": self.version,
                "assd.model_config": self.model_config.to_json(), "assd.postprocess": json.dumps(self.postprocess),
                "assd.outputs": self.outputs, "assd.precision": self.precision, "assd.batch": self.batch,
                "assd.class_names": json.dumps(list(self.model_config.class_names))}


def set_metadata(model: onnx.ModelProto, metadata: OnnxMetadata) -> None:
    kept = [p for p in model.metadata_props if not p.key.startswith("assd.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)


def metadata_from_model(model: onnx.ModelProto, source: str = "model") -> OnnxMetadata:
    """Our metadata of ``model``, validated and checked against its graph (``check_graph``)."""
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("assd.format") != FORMAT:
        raise UserError(f"{source}: ONNX file has no assd metadata: export it with 'assd export --onnx' "
                        "(foreign ONNX files cannot be configured automatically)")
    try:
        metadata = OnnxMetadata(
            model_config=ModelConfig.from_json(props["assd.model_config"]),
            postprocess=json.loads(props["assd.postprocess"]), outputs=props["assd.outputs"],
            precision=props["assd.precision"], batch=props["assd.batch"], version=props["assd.version"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{source}: damaged assd metadata ({type(exc).__name__}: {exc}): re-export the "
                        "model") from None
    check_config(metadata.model_config, source)
    problem = _value_problem(metadata) or _graph_problem(model.graph, metadata)
    if problem is not None:
        raise UserError(f"{source}: assd metadata does not match the file: {problem}: re-export the model "
                        "with 'assd export --onnx'")
    return metadata


def _value_problem(metadata: OnnxMetadata) -> str | None:
    from assd.runtime.postprocess import PostprocessConfig

    if metadata.outputs not in OUTPUT_KINDS:
        return f"assd.outputs is {metadata.outputs!r}, not one of {', '.join(OUTPUT_KINDS)}"
    if metadata.precision not in PRECISIONS:
        return f"assd.precision is {metadata.precision!r}, not one of {', '.join(PRECISIONS)}"
    if metadata.batch != "dynamic" and not (metadata.batch.isdigit() and int(metadata.batch) >= 1):
        return f"assd.batch is {metadata.batch!r}, not 'dynamic' or a positive whole number"
    if not isinstance(metadata.postprocess, dict):
        return "assd.postprocess is not a JSON object"
    try:
        PostprocessConfig.from_dict(metadata.postprocess)
    except (UserError, TypeError) as exc:
        return f"assd.postprocess: {exc}"
    return None


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Static dims (None for symbolic ones) of a graph input/output; None when it has no tensor shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]


def _shape_problem(value: onnx.ValueInfoProto, expected: list[int | None]) -> str | None:
    """Why ``value`` does not have the ``expected`` dims (None entries: any size), or None."""
    dims = _dims(value)
    if dims is None:
        return f"'{value.name}' has no shape"
    shown = "x".join("?" if d is None else str(d) for d in expected)
    if len(dims) != len(expected):
        return f"'{value.name}' has rank {len(dims)}, expected [{shown}]"
    for dim, want in zip(dims, expected):
        if dim is not None and want is not None and dim != want:
            found = "x".join("?" if d is None else str(d) for d in dims)
            return f"'{value.name}' is [{found}], expected [{shown}]"
    return None


def _graph_problem(graph: onnx.GraphProto, metadata: OnnxMetadata) -> str | None:
    """Why the graph's inputs/outputs disagree with ``metadata`` (None when they agree)."""
    from assd.models.assd import feature_sizes

    cfg = metadata.model_config
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if [value.name for value in inputs] != ["images"]:
        return f"graph inputs are {[value.name for value in inputs]}, expected ['images']"
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return "input 'images' is not float32"
    batch = metadata.fixed_batch
    images_problem = _shape_problem(inputs[0], [batch, 3, cfg.input_size, cfg.input_size])
    if images_problem is not None:
        return images_problem
    if batch is None and _dims(inputs[0])[0] is not None:
        return f"assd.batch is 'dynamic' but the graph's batch is fixed at {_dims(inputs[0])[0]}"
    names = [value.name for value in graph.output]
    if names != list(OUTPUT_KINDS[metadata.outputs]):
        return f"graph outputs are {names}, expected {list(OUTPUT_KINDS[metadata.outputs])} (assd.outputs " \
               f"{metadata.outputs!r})"
    if metadata.outputs == "detections":
        return _shape_problem(graph.output[0], [batch, None, 4])
    anchors = sum(h * w * n for (h, w), n in zip(feature_sizes(cfg), cfg.anchors_per_location))
    return (_shape_problem(graph.output[0], [batch, anchors, 4])
            or _shape_problem(graph.output[1], [batch, anchors, cfg.num_classes]))


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with one-line errors for missing and corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not an ONNX model: re-export it with 'assd export --onnx'")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
        raise UserError(f"{path}: not a readable ONNX file ({type(exc).__name__}): re-export it with "
                        "'assd export --onnx'") from None


def read_metadata(path: str | Path) -> OnnxMetadata:
    """Our metadata of the ONNX file at ``path`` (weights are not loaded)."""
    return metadata_from_model(load_onnx(path, load_weights=False), source=str(path))


def load_fp32_source(source: str | Path, output: str | Path, what: str) -> tuple[onnx.ModelProto, OnnxMetadata]:
    """The fp32 assd graph at ``source`` and its metadata, to be converted into ``output``
    (``what``: the output's kind, ``fp16`` or ``int8``). UserError when ``output`` would overwrite
    ``source`` or ``source`` is not an fp32 export."""
    if Path(output).resolve() == Path(source).resolve():
        raise UserError(f"{output}: would overwrite the fp32 input: choose another output, e.g. model.{what}.onnx")
    model = load_onnx(source)
    metadata = metadata_from_model(model, source=str(source))
    if metadata.precision != "fp32":
        raise UserError(f"{source}: is a {metadata.precision} graph; the {what} graph is made from the fp32 "
                        "export ('assd export --onnx')")
    return model, metadata
