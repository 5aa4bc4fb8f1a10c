"""``assd export --onnx``: a checkpoint (or preset) to an ONNX file with our metadata.

The graph: input ``images [B, 3, S, S]`` (float32, normalized RGB), outputs ``loc [B, A, 4]`` and
``conf [B, A, C]`` (the network contract), or with ``with_postprocess`` the padded detections
``boxes [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]``, ``count [B]`` (see ``nms_graph``).
Batch is dynamic by default. All BatchNorms are folded; the attention stays visible as one
MatMul -> Softmax -> MatMul chain per prediction map (or, with ``attention_op`` at opset >= 23, one
``Attention`` node with scale 1.0).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

import assd
from assd.errors import UserError
from assd.export.fold import fold_for_export
from assd.models.assd import ASSD
from assd.runtime.metadata import OnnxMetadata, set_metadata
from assd.utils import atomic_write_bytes

DEFAULT_OPSET = 18
# Opsets the exporter writes as asked (measured with torch 2.14 / onnxscript 0.7: below 16 it silently
# wrote opset 18; 23 is the newest torch.onnx declares, torch.onnx._constants.ONNX_MAX_OPSET).
MIN_OPSET, MAX_OPSET = 16, 23
MAX_DYNAMIC_BATCH = 1024


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter prints progress lines and warnings; keep the user's terminal clean."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)


def _attention_as_onnx_op(model: ASSD) -> ASSD:
    """Swap every attention unit's forward for SDPA (scale=1.0), which opset >= 23 exports as one
    ``Attention`` node. Same function: softmax(q^T k) v with no scaling."""
    from assd.models.attention import AttentionUnit

    def forward(unit: AttentionUnit, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query = unit.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N, C']
        key = unit.key(x).flatten(2).transpose(1, 2).unsqueeze(1)
        value = unit.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N, C]
        attended = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=1.0)
        return x + attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)

    for unit in model.attention or []:
        unit.forward = forward.__get__(unit)
    return model


def check_opset(opset: int) -> None:
    """UserError unless ``opset`` is one the exporter writes (``MIN_OPSET``..``MAX_OPSET``)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset}: assd exports opsets {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")


def torch_to_onnx(model: ASSD, opset: int = DEFAULT_OPSET, batch: str | int = "dynamic",
                  attention_op: bool = False) -> onnx.ModelProto:
    """The raw network (loc, conf) as an ONNX ModelProto, BatchNorms folded, graph optimized."""
    check_opset(opset)
    if attention_op and opset < 23:
        raise UserError(f"--attention-op needs --opset 23 or newer (got {opset})")
    export_model = fold_for_export(model).cpu().float()
    if attention_op:
        export_model = _attention_as_onnx_op(export_model)
    size = model.cfg.input_size
    example_batch = 2 if batch == "dynamic" else int(batch)
    images = torch.zeros(example_batch, 3, size, size)
    dynamic_shapes = None
    if batch == "dynamic":
        dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(export_model, (images,), None, dynamo=True, opset_version=opset,
                                    input_names=["images"], output_names=["loc", "conf"],
                                    dynamic_shapes=dynamic_shapes, verbose=False)
        program.optimize()
    proto = program.model_proto
    written = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    if written != [opset]:
        raise UserError(f"--opset {opset}: the exporter wrote opset {written[0] if written else '?'} instead: "
                        f"use --opset {DEFAULT_OPSET}")
    proto.producer_name, proto.producer_version = "assd", assd.__version__
    return proto


def check_and_serialize(proto: onnx.ModelProto) -> bytes:
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def export_onnx(model: ASSD, path: str | Path, opset: int = DEFAULT_OPSET, batch: str | int = "dynamic",
                with_postprocess: bool = False, postprocess: dict | None = None,
                attention_op: bool = False) -> OnnxMetadata:
    """Write ``model`` to ``path`` (atomically) and return the metadata stored in it."""
    from assd.runtime.postprocess import PostprocessConfig

    postprocess_cfg = PostprocessConfig.from_dict(postprocess) if postprocess else PostprocessConfig.for_model(model.cfg)
    proto = torch_to_onnx(model, opset=opset, batch=batch, attention_op=attention_op)
    if with_postprocess:
        from assd.export.nms_graph import append_postprocess

        proto = append_postprocess(proto, model.cfg, postprocess_cfg)
    metadata = OnnxMetadata(model_config=model.cfg, postprocess=postprocess_cfg.to_dict(),
                            outputs="detections" if with_postprocess else "raw", precision="fp32",
                            batch=str(batch), version=assd.__version__)
    set_metadata(proto, metadata)
    atomic_write_bytes(path, check_and_serialize(proto))
    return metadata
