"""The graph an engine is built from: its precision composed from export's and calibration's pieces.

A strongly typed engine computes every tensor in the type its ONNX graph gives it, so this graph *is*
the engine's precision. From the graph ``assd build-engine`` is given, in this order:

1. ``Attention`` nodes (``export --attention-op``) are lowered to MatMul -> Softmax -> MatMul
   (``assd.export.attention_lowering``) *before* any conversion, so the attention gets exactly the
   precision of a default export's, and the graph goes back to the default export opset (the lowered
   graph needs no opset-23 operator; TensorRT 10's parser reads opset 18 everywhere).
2. ``--int8`` from an fp32 graph: calibrated and quantized by ``assd.calibration`` (Q/DQ on the Convs).
3. ``--fp16`` and ``--int8``: the float parts go to float16 (``assd.export.fp16``), with float32 islands:
   attention scores + softmax, L2Norm, post-processing, and every tensor the fp16 range audit
   (``assd.calibration.fp16_range``, fp32 graph on calibration images) finds beyond float16's range.
   An INT8 graph therefore runs everything outside its int8 Convs in fp16, as ModelOpt's Q/DQ graphs do
   (its Q/DQ scales become float16, which needs opset 19). Without ``--calib-data`` the audit uses the
   export's parity photos (``assd.export.parity.default_parity_images``).

Intermediate graphs live in a private temp folder; the one graph written lands beside the engine
(``precision_graph_path``: ``<onnx stem>.<precision>.onnx``) after the output guard
(``assd.paths.check_outputs``) allowed it. ``compose_model`` is step 3 on a graph in memory: the accuracy
gate of ``build-engine`` (``assd.engine.gated``) composes every candidate it verifies with it, so the
graph it verifies is the graph that is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from assd.calibration.fp16_range import (
    AUDIT_IMAGES,
    RangeAudit,
    UnloadableGraph,
    audit_batches,
    audit_fp16_range,
    set_fp16_range,
)
from assd.calibration.recipe import read_kept_high, set_kept_high
from assd.errors import UserError
from assd.export.onnx_export import DEFAULT_OPSET
from assd.runtime.fp16_preview import has_float16
from assd.runtime.metadata import OnnxMetadata, load_onnx, metadata_from_model, set_metadata
from assd.utils import atomic_write_bytes

QDQ_FP16_OPSET = 19  # QuantizeLinear / DequantizeLinear take float16 scales from opset 19


PRECISION_SUFFIXES = (".fp32", ".fp16", ".int8")


def precision_graph_path(onnx_path: str, output: str, precision: str) -> Path:
    """Where the graph composed for an engine goes: beside the engine, named after the ONNX without its own
    precision suffix (``m.onnx`` and ``m.int8.onnx`` -> ``m.int8.onnx``, never ``m.int8.int8.onnx``). When
    that is the input itself (``calibrate``'s fp32-based ``m.int8.onnx`` built in its own folder), the
    composed graph is ``m.int8.engine.onnx``: the int8 engine's graph."""
    stem = Path(onnx_path).stem
    for suffix in PRECISION_SUFFIXES:
        stem = stem.removesuffix(suffix)
    target = Path(output).parent / f"{stem}.{precision}.onnx"
    if target.resolve() == Path(onnx_path).resolve():
        target = target.with_name(f"{stem}.{precision}.engine.onnx")
    return target


def _opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _with_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    return model if _opset(model) == opset else version_converter.convert_version(model, opset)


def lower_for_tensorrt(model: onnx.ModelProto, source: str, echo: Callable[[str], None] = print) -> onnx.ModelProto | None:
    """``model`` with its ``Attention`` nodes lowered, at the default export opset; None when it has none."""
    from assd.export.attention_lowering import lower_attention

    count = lower_attention(model, source=source)
    if not count:
        return None
    lowered = _with_opset(model, min(_opset(model), DEFAULT_OPSET))
    echo(f"lowered {count} Attention nodes to MatMul -> Softmax -> MatMul (opset {_opset(lowered)}; TensorRT's "
         "IAttention needs equal query/key/value head sizes, ASSD's values are 8x wider)")
    return lowered


def _image_batches(metadata: OnnxMetadata, calibration, count: int) -> tuple[Iterator[np.ndarray], str]:
    """Audit batches (the graph's fixed batch, else 1) from ``--calib-data``, else the parity photos."""
    batch = metadata.fixed_batch or 1
    if calibration is not None and calibration.data:
        return audit_batches(calibration.data, max(count, batch), metadata.model_config, batch), calibration.data
    from assd.export.parity import default_parity_images
    from assd.runtime.preprocess import preprocess

    images = default_parity_images(max(4, batch))
    images = images[:len(images) // batch * batch] or [images[i % len(images)] for i in range(batch)]
    batches = (preprocess(images[i:i + batch], metadata.model_config).numpy() for i in range(0, len(images), batch))
    return batches, "the parity photos (pass --calib-data for more)"


def fp16_base(model: onnx.ModelProto, metadata: OnnxMetadata, calibration=None,
              echo: Callable[[str], None] = print, keep_nodes: Iterable[str] = ()) -> tuple[onnx.ModelProto, RangeAudit]:
    """The float16 version of the float32 (or float32-based Q/DQ) graph ``model``, audited on images: every
    tensor the audit finds out of float16's range stays float32 (recorded in ``assd.fp16_range``), and so
    do the nodes named ``keep_nodes`` (an fp16 gate's kept layers) besides the default fp32 islands."""
    from assd.export.fp16 import convert_to_fp16, default_fp32_nodes, fp16_source_tensors

    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
        model = _with_opset(model, max(_opset(model), QDQ_FP16_OPSET))
    keep = set(keep_nodes)
    block = default_fp32_nodes(model.graph) + [node for node in model.graph.node if node.name in keep]
    notes: list[str] = []
    first = convert_to_fp16(model, block=block, notes=notes)
    wanted = min(calibration.images, AUDIT_IMAGES) if calibration is not None and calibration.data else AUDIT_IMAGES
    batches, source = _image_batches(metadata, calibration, wanted)
    audit = audit_fp16_range(model, fp16_source_tensors(first), batches, source=source)
    echo(audit.summary())
    for line in audit.lines()[:10]:
        echo(f"  {line}")
    converted = convert_to_fp16(model, block=block, keep_fp32=audit.kept_fp32) if audit.kept_fp32 else first
    for note in notes:
        echo(f"warning: {note}")
    set_fp16_range(converted, audit)
    return converted, audit


def check_fp16_graph(model: onnx.ModelProto, metadata: OnnxMetadata, calibration, source: str,
                     echo: Callable[[str], None] = print) -> None:
    """A graph that already holds float16 tensors (``export --precision fp16``, a gated build's graph) is
    audited on its float32 twin (``rounding_graph(..., rounding=False)``: fp16 weights, fp32 activations)
    and refused, naming the tensors, when any leaves float16's range: it cannot be converted again."""
    from assd.runtime.fp16_preview import float16_tensors, rounding_graph

    wanted = min(calibration.images, AUDIT_IMAGES) if calibration is not None and calibration.data else AUDIT_IMAGES
    batches, images = _image_batches(metadata, calibration, wanted)
    audit = audit_fp16_range(rounding_graph(model, rounding=False), float16_tensors(model), batches, source=images)
    echo(audit.summary().replace("kept in float32", "in this fp16 graph"))
    if audit.kept_fp32:
        raise UserError(f"{source}: {len(audit.kept_fp32)} fp16 tensor(s) leave float16's range on {images} "
                        f"({'; '.join(audit.lines()[:3])}): the engine would compute inf/NaN; build from the fp32 "
                        "export with --fp16 / --int8 (the audit then keeps them fp32)")


def compose_precision_graph(onnx_path: str, output: str, metadata: OnnxMetadata, precision: str, calibration,
                            echo: Callable[[str], None] = print, other_outputs: dict | None = None) -> str:
    """The ONNX file to build the ``precision`` engine ``output`` from (see the module docstring):
    ``onnx_path`` itself when nothing is to change, else the composed graph written beside the engine.
    ``calibration``: an object with ``data``, ``images``, ``method``, ``cache`` (``--calib-*``);
    ``other_outputs``: ``{option: path}`` the command also writes (``--timing-cache``), which the graph may
    not land on."""
    model = load_onnx(onnx_path)
    lowered = lower_for_tensorrt(model, onnx_path, echo)
    try:
        return _compose_precision_graph(onnx_path, output, model, lowered, metadata, precision, calibration, echo,
                                        other_outputs)
    except UnloadableGraph as exc:  # the range audit could not open it: one line naming the file
        raise UserError(f"{onnx_path}: {exc}") from None


def _compose_precision_graph(onnx_path, output, model, lowered, metadata, precision, calibration, echo,
                             other_outputs) -> str:
    from assd.export.onnx_export import check_and_serialize
    from assd.paths import check_outputs, temp_dir

    quantize = precision == "int8" and metadata.precision == "fp32"
    to_fp16 = precision in ("fp16", "int8") and not has_float16(model)
    if precision in ("fp16", "int8") and not to_fp16:
        check_fp16_graph(lowered or model, metadata, calibration, onnx_path, echo)
    if lowered is None and not quantize and not to_fp16:
        return str(onnx_path)
    target = precision_graph_path(onnx_path, output, precision)
    check_outputs([onnx_path, calibration.data if calibration is not None else None],
                  files={"-o": output, "the precision graph": target, **(other_outputs or {}),
                         "--calib-cache": calibration.cache if calibration is not None else None})
    with temp_dir("engine-graph") as tmp:
        source = Path(onnx_path)
        if lowered is not None:
            source = tmp / "lowered.onnx"
            atomic_write_bytes(source, lowered.SerializeToString())
        if quantize:
            from assd.calibration import quantize_int8

            result = quantize_int8(str(source), str(tmp / "int8.onnx"), calibration.data,
                                   num_images=calibration.images, method=calibration.method,
                                   cache_path=calibration.cache, echo=echo)
            echo(f"quantized {result.quantized_nodes} Conv to int8 ({len(result.excluded_nodes)} attention nodes "
                 "kept in float)")
            source = tmp / "int8.onnx"
        if not to_fp16:
            atomic_write_bytes(target, source.read_bytes())
            echo(f"wrote the {precision} graph {target}")
            return str(target)
        converted, audit = compose_model(load_onnx(source), precision, calibration, echo)
    atomic_write_bytes(target, check_and_serialize(converted))
    echo(f"wrote the {precision} graph {target} ({composition_text(precision, audit)})")
    return str(target)


def compose_model(model: onnx.ModelProto, precision: str, calibration=None, echo: Callable[[str], None] = print,
                  keep_nodes: Iterable[str] = ()) -> tuple[onnx.ModelProto, RangeAudit]:
    """Step 3 on a graph in memory: ``model`` (the fp32 graph, or for int8 its fp32-based Q/DQ graph; any
    Attention already lowered) on an fp16 base with its fp32 islands (``fp16_base``; ``keep_nodes`` too),
    with its metadata (precision ``precision``), ``assd.kept_high`` and ``assd.fp16_range`` set."""
    metadata, kept_high = metadata_from_model(model), read_kept_high(model)
    converted, audit = fp16_base(model, metadata, calibration, echo, keep_nodes)
    set_metadata(converted, metadata if precision == "int8" else _fp16(metadata))
    if kept_high:
        set_kept_high(converted, precision, kept_high)
    set_fp16_range(converted, audit)
    return converted, audit


def composition_text(precision: str, audit: RangeAudit) -> str:
    """What a composed graph computes in which precision, in a few words (for the printed lines)."""
    islands = "attention scores/softmax, L2Norm" + (f", {len(audit.kept_fp32)} audited tensors" if audit.kept_fp32 else "")
    return f"{'int8 Convs on an ' if precision == 'int8' else ''}fp16 base, fp32 islands: {islands}; I/O fp32"


def _fp16(metadata: OnnxMetadata) -> OnnxMetadata:
    from assd.export.fp16 import fp16_metadata

    return fp16_metadata(metadata)
