"""mAP and output error of precision variants, measured on the CPU (ONNX Runtime or OpenVINO) on a small image set.

The images are decoded once (``EvalImages``); every variant runs through the same pre-processing,
post-processing and scoring as ``assd eval-engine`` (``assd.evaluation.predict_dataset`` and
``evaluate_detections``). Results are cached per variant, so the search never runs one twice.

Output error: ``||out - out_fp32|| / ||out_fp32||`` over all images, for ``loc`` and ``conf`` and per
prediction map (its anchors' rows, and the map tensor the heads read: the attention unit's output),
against the same graph with every layer high (the fp32 graph).

On ONNX Runtime a variant is a feed of one switchable graph; on OpenVINO (``assd.precision.backend``) it
is the real graph, compiled as ``eval-engine --backend openvino`` compiles it, with no extra outputs
(so the map tensors' error is not measured there: exposing a tensor could change OpenVINO's fusions).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from assd.evaluation import EvalResult, evaluate_detections, predict_dataset
from assd.evaluation.evaluate import default_metric
from assd.precision.backend import PrecisionBackend, compiled_graph
from assd.precision.layers import PredictionMap
from assd.precision.switch import add_outputs, flags
from assd.precision.uncertainty import BOOTSTRAP_METRICS, Interval, Outcomes, paired_interval
from assd.runtime.fp16_preview import preview_session
from assd.runtime.postprocess import PostprocessConfig

BATCH = 8


def available_threads() -> int:
    """CPU cores this process may run on (its affinity mask), the right intra-op thread count."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def open_session(model: onnx.ModelProto, threads: int | None = None):
    """An ONNX Runtime CPU session of ``model`` with ``threads`` intra-op threads (default: all cores).

    Every graph the debugger compares (switchable variants, the final graph) runs with the same
    optimizations, chosen so that a switchable variant and the real graph it stands for compute the
    same bits (tested): up to ``ORT_ENABLE_EXTENDED`` (``ORT_ENABLE_ALL``'s layout transformations pick
    kernels per graph, and int8 rounding amplifies last-bit differences), without ORT's
    ``WeightBiasQuantization`` (it rounds the float bias of a Q/DQ Conv to int32 only where it sees the
    pattern, i.e. not inside a switch; TensorRT gets the float bias either way). Same speed here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = threads or available_threads()
    options.inter_op_num_threads = 1
    # float16 tensors rounded as the engine stores them (assd.runtime.fp16_preview)
    return preview_session(model, options, disabled_optimizers=["WeightBiasQuantization"])


class EvalImages:
    """``count`` images of ``dataset`` (evenly spaced over it), decoded once and served like a dataset
    (``len``, ``load_image``, ``annotation``, ``class_names``) to ``predict_dataset`` / ``evaluate_detections``."""

    def __init__(self, dataset, count: int):
        available = len(dataset)
        if count >= available:
            self.indices = list(range(available))
        else:
            self.indices = sorted({round(x) for x in np.linspace(0, available - 1, count)})
        self.dataset = dataset
        self.images = [dataset.load_image(i) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def annotation(self, index: int):
        return self.dataset.annotation(self.indices[index])

    @property
    def image_ids(self) -> list:
        return [self.dataset.image_ids[i] for i in self.indices]

    def __getattr__(self, name):  # class_names, source, coco_category_ids, ...
        if name in ("dataset", "indices", "images"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(out - ref)) / norm if norm > 0 else float(np.linalg.norm(out))


@dataclass
class VariantResult:
    """One variant: ``low`` = indices of the lowered layers; mAP in points; errors relative (see module)."""

    low: frozenset[int]
    result: EvalResult
    delta_points: float
    loc_error: float = 0.0
    conf_error: float = 0.0
    per_map: list[dict] = field(default_factory=list)  # per prediction map: loc, conf, map tensor errors
    outcomes: Outcomes | None = field(default=None, repr=False)  # matched detections (for the bootstrap)
    interval: Interval | None = None  # Δ's paired bootstrap interval (``VariantEvaluator.interval``)

    @property
    def map_points(self) -> float:
        return 100 * self.result.mAP

    @property
    def output_error(self) -> float:
        return self.loc_error + self.conf_error


class VariantEvaluator:
    """Runs variants of a switchable graph (``assd.precision.switch``) with ``layer_count`` switches; on a
    ``backend`` that compiles real graphs (OpenVINO), ``real_graph(low)`` is compiled instead (no switchable
    graph: ``switchable`` may be None)."""

    def __init__(self, switchable: onnx.ModelProto | None, layer_count: int, images: EvalImages, cfg,
                 postprocess_cfg: PostprocessConfig, maps: list[PredictionMap], metric: str | None = None,
                 batch_size: int | None = None, threads: int | None = None, backend: PrecisionBackend | None = None,
                 real_graph: Callable[[frozenset[int]], onnx.ModelProto] | None = None):
        self.backend = backend or PrecisionBackend(threads=threads)
        self.real_graph = real_graph
        if self.backend.real_graphs:
            if real_graph is None:
                raise ValueError(f"{self.backend.name} evaluates real graphs: pass real_graph")
            self.map_outputs, self.session, self.threads = [], None, None  # threads: the first compile's
        else:
            self.map_outputs = [m.tensor for m in maps if m.tensor]
            add_outputs(switchable, self.map_outputs, float_names=set(self.map_outputs))  # (in place)
            self.threads = self.backend.threads or threads or available_threads()
            self.session = open_session(switchable, self.threads)
        self.layer_count, self.images, self.cfg = layer_count, images, cfg
        self.postprocess_cfg, self.maps = postprocess_cfg, maps
        self.metric = metric or default_metric(images)
        self.annotations = [images.annotation(i) for i in range(len(images))]
        self.num_classes = len(images.class_names) + 1
        self.batch_size = batch_size or BATCH
        self.cache: dict[frozenset[int], VariantResult] = {}
        self.runs = 0
        self.reference: EvalResult | None = None
        self.reference_outcomes: Outcomes | None = None
        self.fp32_outputs: list[np.ndarray] | None = None

    def _outputs(self, run: Callable[[torch.Tensor], list[np.ndarray]]) -> tuple[list, list[np.ndarray]]:
        """Detections and concatenated outputs (loc, conf, then any map tensors) of ``run`` on the images."""
        captured: list[list[np.ndarray]] = []

        def infer(images: torch.Tensor):
            values = run(images)
            if not captured:
                captured.extend([] for _ in values)
            for store, value in zip(captured, values):
                store.append(value)
            return torch.from_numpy(values[0]), torch.from_numpy(values[1])

        detections = predict_dataset(infer, self.images, self.cfg, self.postprocess_cfg, batch_size=self.batch_size)
        self.runs += 1
        return detections, [np.concatenate(store) for store in captured]

    def _session_outputs(self, session, feed: dict, names: list[str]) -> tuple[list, list[np.ndarray]]:
        return self._outputs(lambda images: session.run(names, {"images": images.numpy(), **feed}))

    def _compiled_outputs(self, model: onnx.ModelProto) -> tuple[list, list[np.ndarray]]:
        """The real graph ``model`` compiled on the backend (OpenVINO), as eval-engine opens it."""
        with compiled_graph(model, self.backend) as runner:
            self.threads = self.threads or getattr(runner, "threads", None)
            return self._outputs(lambda images: [value.numpy() for value in runner.infer(images)])

    def _variant(self, low: set[int]) -> tuple[list, list[np.ndarray]]:
        if self.backend.real_graphs:
            return self._compiled_outputs(self.real_graph(frozenset(low)))
        return self._session_outputs(self.session, flags(self.layer_count, low), ["loc", "conf", *self.map_outputs])

    def outcomes(self, detections) -> Outcomes | None:
        """The detections matched once, for the bootstrap (None for a metric without one)."""
        if self.metric not in BOOTSTRAP_METRICS:
            return None
        return Outcomes(detections, self.annotations, self.num_classes)

    def set_reference(self, reference: tuple[EvalResult, list] | None,
                      shared: VariantEvaluator | None = None) -> VariantResult:
        """Run the all-high (fp32) variant (or take it from ``shared``, an evaluator of the same fp32 graph on
        the same images); it is the reference for Δ mAP unless ``reference`` (its result and detections on
        these images) is given."""
        if shared is not None:
            self.fp32_outputs, fp32 = shared.fp32_outputs, shared.cache[frozenset()]
            fp32_result, fp32_outcomes = fp32.result, fp32.outcomes
        else:
            detections, self.fp32_outputs = self._variant(set())
            fp32_result = evaluate_detections(detections, self.images, self.metric, self.postprocess_cfg)
            fp32_outcomes = self.outcomes(detections)
        if reference is None:
            self.reference, self.reference_outcomes = fp32_result, fp32_outcomes
        else:
            self.reference, self.reference_outcomes = reference[0], self.outcomes(reference[1])
        result = VariantResult(frozenset(), fp32_result, 100 * (fp32_result.mAP - self.reference.mAP),
                               outcomes=fp32_outcomes)
        self._errors(result, self.fp32_outputs)
        self.cache[frozenset()] = result
        return result

    def interval(self, variant: VariantResult) -> Interval | None:
        """``variant``'s Δ with its paired bootstrap interval on these images (computed once per variant)."""
        if variant.interval is None and variant.outcomes is not None and self.reference_outcomes is not None:
            variant.interval = paired_interval(self.reference_outcomes, variant.outcomes, self.metric)
        return variant.interval

    def _errors(self, result: VariantResult, outputs: list[np.ndarray]) -> None:
        reference = self.fp32_outputs
        result.loc_error = _relative_error(outputs[0], reference[0])
        result.conf_error = _relative_error(outputs[1], reference[1])
        tensors = dict(zip(self.map_outputs, zip(outputs[2:], reference[2:])))
        result.per_map = []
        for prediction_map in self.maps:
            rows = slice(prediction_map.start, prediction_map.stop)
            entry = {"map": prediction_map.index, "size": list(prediction_map.size),
                     "loc_error": _relative_error(outputs[0][:, rows], reference[0][:, rows]),
                     "conf_error": _relative_error(outputs[1][:, rows], reference[1][:, rows])}
            if prediction_map.tensor in tensors:
                entry["map_error"] = _relative_error(*tensors[prediction_map.tensor])
            result.per_map.append(entry)

    def evaluate(self, low: set[int] | frozenset[int]) -> VariantResult:
        """The variant with layers ``low`` (indices) in lower precision and all others high (cached)."""
        key = frozenset(low)
        if key not in self.cache:
            if self.reference is None:
                self.set_reference(None)
            detections, outputs = self._variant(set(key))
            result = evaluate_detections(detections, self.images, self.metric, self.postprocess_cfg)
            variant = VariantResult(key, result, 100 * (result.mAP - self.reference.mAP),
                                    outcomes=self.outcomes(detections))
            self._errors(variant, outputs)
            self.cache[key] = variant
        return self.cache[key]

    def evaluate_model(self, model: onnx.ModelProto) -> VariantResult:
        """mAP, Δ mAP and output errors of a real (non-switchable) graph, e.g. the final one, on the same
        images (its prediction maps are exposed as extra outputs for the per-map errors)."""
        if self.backend.real_graphs:
            detections, outputs = self._compiled_outputs(model)
        else:
            model = onnx.ModelProto.FromString(model.SerializeToString())
            exposed = add_outputs(model, self.map_outputs)
            detections, outputs = self._session_outputs(open_session(model, self.threads), {}, ["loc", "conf", *exposed])
        result = evaluate_detections(detections, self.images, self.metric, self.postprocess_cfg)
        variant = VariantResult(frozenset(), result, 100 * (result.mAP - self.reference.mAP),
                                outcomes=self.outcomes(detections))
        self._errors(variant, outputs)
        return variant
