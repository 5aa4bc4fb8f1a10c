"""Everything the debugger and the accuracy gate share: the fp32 graph, its layers, the low-precision
graph, one switchable graph in one ONNX Runtime session, the evaluation images and the reference mAP.

``prepare(...)`` does the expensive work once: calibration (one pass over the images, all three
methods, cached in ``--calib-cache``), the Q/DQ graph with every layer quantized, the switchable
graph, the decoded evaluation images and the reference's detections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import onnx

from assd.calibration.placement import keep_layers_high, qdq_layers
from assd.calibration.quantize import (
    DEFAULT_PERCENTILE,
    HISTOGRAM_BINS,
    METHODS,
    build_qdq_model,
    calibrated_ranges,
    calibration_settings,
    private_copy,
)
from assd.calibration.recipe import set_kept_high
from assd.errors import UserError
from assd.evaluation import EvalResult, check_class_names, evaluate_detections, predict_dataset
from assd.precision.backend import PrecisionBackend
from assd.precision.evaluator import EvalImages, VariantEvaluator, VariantResult
from assd.precision.layers import Layer, fp16_blocked_nodes, fp16_layers, int8_layers, prediction_maps
from assd.precision.switch import fp16_switchable, int8_switchable
from assd.runtime.metadata import OnnxMetadata, set_metadata
from assd.runtime.postprocess import PostprocessConfig

PRECISIONS = ("int8", "fp16")
DEFAULT_TOLERANCE = {"int8": 1.0, "fp16": 0.3}  # as assd eval-engine's defaults
DEFAULT_EVAL_IMAGES = 32
DEFAULT_CALIB_IMAGES = 100


@dataclass(frozen=True)
class CalibrationRequest:
    """How to calibrate the INT8 graph (``method``: entropy, percentile, max or auto)."""

    data: str
    images: int = DEFAULT_CALIB_IMAGES
    method: str = "entropy"
    cache: str | None = None
    percentile: float = DEFAULT_PERCENTILE
    num_bins: int = HISTOGRAM_BINS


@dataclass
class PrecisionSetup:
    precision: str
    fp32_model: onnx.ModelProto
    metadata: OnnxMetadata
    layers: list[Layer]  # layers[i] is switch i
    evaluator: VariantEvaluator
    images: EvalImages
    reference_name: str
    qdq_model: onnx.ModelProto | None = None  # int8: every layer quantized
    method: str | None = None  # int8: the calibration method used
    method_deltas: dict[str, float] = field(default_factory=dict)  # --method auto: plain Δ mAP per method
    calibration: dict | None = None  # recorded in the recipe

    @property
    def reference(self) -> EvalResult:
        return self.evaluator.reference

    def graph(self, kept: list[Layer]) -> onnx.ModelProto:
        """The real graph with ``kept`` layers in higher precision, its metadata and ``assd.kept_high`` set."""
        if self.precision == "fp16":
            return fp16_graph(self.fp32_model, self.metadata, kept)
        return int8_graph(self.qdq_model, self.fp32_model, self.metadata, kept)


def int8_graph(qdq_model: onnx.ModelProto, fp32_model: onnx.ModelProto, metadata: OnnxMetadata,
               kept: list[Layer]) -> onnx.ModelProto:
    """The Q/DQ graph with ``kept`` layers in fp32 (their Convs read float tensors and fp32 weights),
    metadata and kept layers set."""
    model = keep_layers_high(qdq_model, fp32_model, [layer.node for layer in kept])
    set_metadata(model, dataclasses.replace(metadata, precision="int8"))
    set_kept_high(model, "int8", [layer.name for layer in kept])
    return model


def fp16_graph(fp32_model: onnx.ModelProto, metadata: OnnxMetadata, kept: list[Layer]) -> onnx.ModelProto:
    """The fp16 conversion with the node groups of ``kept`` layers also in fp32, metadata and kept layers set."""
    from assd.export.fp16 import convert_to_fp16

    nodes = {name for layer in kept for name in layer.nodes}
    block = fp16_blocked_nodes(fp32_model.graph) + [n for n in fp32_model.graph.node if n.name in nodes]
    model = convert_to_fp16(fp32_model, block=block)
    set_metadata(model, dataclasses.replace(metadata, precision="fp16"))
    set_kept_high(model, "fp16", [layer.name for layer in kept])
    return model


def check_annotated(data_spec: str, option: str = "--data") -> None:
    """Refuse an image folder as evaluation data (it has no ground truth)."""
    if Path(data_spec).is_dir():
        raise UserError(f"{option} {data_spec}: an image folder has no annotations; Δ mAP needs a data spec "
                        "with ground truth: voc:ROOT[:SETS], coco:IMAGES:JSON or synthetic[:N]")


def eval_images(data_spec: str, count: int, metadata: OnnxMetadata, source: str,
                options: tuple[str, str] = ("--data", "--images")) -> EvalImages:
    """``count`` annotated images of ``data_spec`` with the model's classes (a multiple of a fixed batch);
    ``options``: the caller's names of the data and count options, for the messages."""
    from assd.data import parse_data_spec

    data_option, count_option = options
    if count < 1:
        raise UserError(f"{count_option} {count}: must be at least 1")
    check_annotated(data_spec, data_option)
    dataset = parse_data_spec(data_spec)
    check_class_names(metadata.model_config.class_names, dataset, source)
    batch = metadata.fixed_batch or 1
    count = min(count, len(dataset)) // batch * batch
    if count == 0:
        raise UserError(f"{data_option} {data_spec}: fewer images than the model's fixed batch of {batch}")
    return EvalImages(dataset, count)


def reference_result(reference: str, images, metadata: OnnxMetadata, metric: str | None,
                     echo: Callable[[str], None]) -> tuple[EvalResult, list]:
    """mAP and detections of the ``--reference`` checkpoint or fp32 ONNX file on ``images`` (CPU)."""
    from assd.runtime.runners import open_runner

    runner = open_runner(reference, device="cpu")
    if runner.cfg != metadata.model_config:
        raise UserError(f"--reference {reference}: its model config ({runner.cfg.name}, {runner.cfg.num_classes} "
                        f"classes) is not the ONNX file's ({metadata.model_config.name}, "
                        f"{metadata.model_config.num_classes} classes): pass the checkpoint it was exported from")
    postprocess_cfg = PostprocessConfig.from_dict(metadata.postprocess)
    batch = min(runner.max_batch or 8, 8)
    detections = predict_dataset(runner.infer, images, runner.cfg, postprocess_cfg, batch_size=batch,
                                 device=runner.device)
    result = evaluate_detections(detections, images, metric, postprocess_cfg)
    echo(f"reference {reference} [{runner.backend}]: {result.metric} mAP {100 * result.mAP:.2f} on {len(images)} images")
    return result, detections


def _evaluator(switchable: Callable[[], onnx.ModelProto], graph: Callable[[list[Layer]], onnx.ModelProto],
               layers: list[Layer], images: EvalImages, metadata: OnnxMetadata, fp32_model: onnx.ModelProto,
               metric: str | None, backend: PrecisionBackend | None) -> VariantEvaluator:
    """The evaluator of ``layers``' variants: one switchable graph (``switchable()``, ONNX Runtime) or, on a
    backend that compiles real graphs (OpenVINO), ``graph(kept layers)`` per variant."""
    backend = backend or PrecisionBackend()

    def real_graph(low: frozenset[int]) -> onnx.ModelProto:
        return graph([layer for i, layer in enumerate(layers) if i not in low])

    return VariantEvaluator(None if backend.real_graphs else switchable(), len(layers), images, metadata.model_config,
                            PostprocessConfig.from_dict(metadata.postprocess),
                            prediction_maps(fp32_model, metadata.model_config), metric=metric,
                            batch_size=metadata.fixed_batch, backend=backend,
                            real_graph=real_graph if backend.real_graphs else None)


def prepare(onnx_path: str, fp32_model: onnx.ModelProto, metadata: OnnxMetadata, precision: str,
            images: EvalImages, reference: tuple[EvalResult, list] | None, reference_name: str,
            calibration: CalibrationRequest | None, workdir: Path, metric: str | None = None,
            echo: Callable[[str], None] = print, backend: PrecisionBackend | None = None) -> PrecisionSetup:
    """The ``PrecisionSetup`` of the fp32 graph ``onnx_path`` (``fp32_model``) for ``precision``; ``reference``:
    (result, detections) of the reference on ``images``, None: the fp32 graph itself is the reference. With
    ``--method auto`` the method is chosen on ``images`` (the search images; verification comes later).
    ``backend``: where variants run (``assd.precision.backend``; default ONNX Runtime)."""
    if precision == "fp16":
        layers = fp16_layers(fp32_model)
        evaluator = _evaluator(lambda: fp16_switchable(fp32_model, layers), partial(fp16_graph, fp32_model, metadata),
                               layers, images, metadata, fp32_model, metric, backend)
        evaluator.set_reference(reference)
        return PrecisionSetup("fp16", fp32_model, metadata, layers, evaluator, images, reference_name)
    from assd.calibration.cache import sha256_file

    settings = calibration_settings(calibration.images, calibration.data, calibration.percentile,
                                    calibration.num_bins)
    methods = METHODS if calibration.method == "auto" else (calibration.method,)
    copy = private_copy(onnx_path, workdir)
    ranges, images_used, reused = calibrated_ranges(copy, sha256_file(onnx_path), metadata, settings,
                                                    calibration.cache, workdir, echo, methods=methods)
    best: PrecisionSetup | None = None
    deltas, first = {}, None
    for method in methods:
        qdq = build_qdq_model(copy, ranges[method], workdir)
        order = {node.name: i for i, node in enumerate(fp32_model.graph.node)}
        quantized = sorted(qdq_layers(qdq, fp32_model), key=lambda layer: order[layer.node])
        layers = int8_layers(quantized, fp32_model)
        evaluator = _evaluator(partial(int8_switchable, qdq, fp32_model, quantized),
                               partial(int8_graph, qdq, fp32_model, metadata), layers, images, metadata, fp32_model,
                               metric, backend)
        evaluator.set_reference(reference, shared=first)  # the fp32 run is shared by the methods
        first = first or evaluator
        plain: VariantResult = evaluator.evaluate(range(len(quantized)))
        deltas[method] = plain.delta_points
        if len(methods) > 1:
            echo(f"  {method:<10} plain int8: {plain.result.metric} mAP {plain.map_points:.2f} "
                 f"(Δ {plain.delta_points:+.2f} points, loc error {plain.loc_error:.3f}, conf error {plain.conf_error:.3f})")
        if best is None or abs(plain.delta_points) < abs(deltas[best.method]) - 1e-9:
            best = PrecisionSetup("int8", fp32_model, metadata, layers, evaluator,
                                  images, reference_name, qdq, method)
    best.method_deltas = deltas if len(methods) > 1 else {}
    best.calibration = {"method": best.method, "requested": calibration.method, "images": images_used,
                        "source": settings.source, "cache_reused": reused,
                        **({"delta_map_points_by_method": deltas} if len(methods) > 1 else {})}
    if len(methods) > 1:
        echo(f"--method auto: kept {best.method} (smallest |Δ mAP| of {', '.join(methods)})")
    return best
