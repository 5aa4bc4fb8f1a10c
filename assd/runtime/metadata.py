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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from assd.errors import UserError
from assd.models.config import ModelConfig

FORMAT = "assd-onnx"


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
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("assd.format") != FORMAT:
        raise UserError(f"{source}: ONNX file has no assd metadata: export it with 'assd export --onnx' "
                        "(foreign ONNX files cannot be configured automatically)")
    try:
        return OnnxMetadata(
            model_config=ModelConfig.from_json(props["assd.model_config"]),
            postprocess=json.loads(props["assd.postprocess"]), outputs=props["assd.outputs"],
            precision=props["assd.precision"], batch=props["assd.batch"], version=props["assd.version"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{source}: damaged assd metadata ({exc}): re-export the model") from None


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with one-line errors for missing and corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX file not found")
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
