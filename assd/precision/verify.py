"""Verification: a precision choice is graded on the data the user evaluates on, not on the images that made it.

The debugger's search and the accuracy gate choose layers (and ``--method auto`` a calibration method)
by their Δ mAP on a few *search images*. A choice fitted to those images can look better there than it
is: the chosen graph is therefore run again on the *verification images* — every image of the
evaluation data (what ``assd eval-engine`` on that data measures), or of a separate verification set —
and its Δ there, with its paired bootstrap interval (``assd.precision.uncertainty``), decides.

The rule (the same for ``debug-precision``, ``build-engine --max-delta-map`` and ``calibrate
--max-delta-map`` / ``--calib-method auto``): a graph meets the tolerance when the **conservative
bound** of its Δ on the verification images — the end of the 95 % interval farthest from 0 — is within
it (for the ``coco`` metric, which has no interval here, the point estimate). ``--accept point``
checks the point estimate instead (what ``eval-engine`` on that data checks), the interval reported. When it is not, the
search runs again on the search images with a stricter target (half, a quarter, then 0: more layers
kept), so the choice is still made on the search images and only graded on the verification images;
if no round passes, the command exits 1 and says so. The Δ on the verification images the search did
not use (*held out*) is reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from assd.errors import UserError
from assd.evaluation import EvalResult, check_class_names, evaluate_detections, predict_dataset
from assd.evaluation.evaluate import FirstImages, default_metric
from assd.precision.evaluator import BATCH, EvalImages
from assd.precision.uncertainty import BOOTSTRAP_METRICS, LEVEL, Interval, Outcomes, paired_interval
from assd.runtime.metadata import OnnxMetadata
from assd.runtime.postprocess import PostprocessConfig

ACCEPT = ("conservative", "point")  # what the tolerance is checked against (--accept)
RULE = (f"the tolerance applies to the conservative bound of Δ on the verification images: the end of its "
        f"{100 * LEVEL:.0f} % paired bootstrap interval farthest from 0")
POINT_RULE = ("the tolerance applies to the point estimate of Δ on the verification images (as eval-engine on that "
              "data; the interval is reported, not checked)")
COCO_RULE = "the tolerance applies to the point estimate of Δ on the verification images (no interval for coco)"


@dataclass
class Verification:
    """A graph measured on the verification images: its result, Δ with interval on all of them
    (``interval``; None for coco) and on those the search did not use (``held_out``)."""

    data: str
    result: EvalResult
    reference: EvalResult
    images: int
    search_images: int
    held_out_images: int
    interval: Interval | None
    held_out: Interval | None
    accept: str = "conservative"  # what the tolerance is checked against (ACCEPT)
    backend: str = "onnxruntime"  # the runtime that ran the graph (the runner eval-engine --backend opens)

    @property
    def delta_points(self) -> float:
        return 100 * (self.result.mAP - self.reference.mAP)

    @property
    def bound(self) -> float:
        """The |Δ| the tolerance is checked against (see ``rule``)."""
        if self.accept == "conservative" and self.interval is not None:
            return self.interval.bound
        return abs(self.delta_points)

    @property
    def rule(self) -> str:
        if self.interval is None:
            return COCO_RULE
        return RULE if self.accept == "conservative" else POINT_RULE

    def met(self, tolerance: float) -> bool:
        return self.bound <= tolerance + 1e-9

    def text(self) -> str:
        whole = self.interval.text() if self.interval else f"{self.delta_points:+.2f}"
        line = f"Δ {whole} points on {self.images} verification images"
        if self.held_out is not None and self.held_out_images != self.images:
            line += f" (held out from the search: {self.held_out.text()} on {self.held_out_images})"
        return line

    def to_dict(self) -> dict:
        return {"data": self.data, "images": self.images, "search_images": self.search_images,
                "held_out_images": self.held_out_images, "mAP": 100 * self.result.mAP,
                "reference_mAP": 100 * self.reference.mAP, "delta_map_points": self.delta_points,
                "interval": self.interval and self.interval.to_dict(),
                "held_out": self.held_out and self.held_out.to_dict(), "checked_abs_points": self.bound,
                "accept": self.accept, "rule": self.rule, "backend": self.backend}


def verification_dataset(data_spec: str, metadata: OnnxMetadata, source: str, option: str):
    """Every image of ``data_spec`` (a multiple of the model's fixed batch), its class names checked."""
    from assd.data import parse_data_spec
    from assd.precision.setup import check_annotated

    check_annotated(data_spec, option)
    dataset = parse_data_spec(data_spec)
    check_class_names(metadata.model_config.class_names, dataset, source)
    batch = metadata.fixed_batch or 1
    count = len(dataset) // batch * batch
    if count == 0:
        raise UserError(f"{option} {data_spec}: fewer images than the model's fixed batch of {batch}")
    return dataset if count == len(dataset) else FirstImages(dataset, count)


class Verifier:
    """Runs real graphs on the verification images against a reference measured on them once.

    ``reference``: the reference's detections on ``dataset``; ``search``: the search images (an
    ``EvalImages`` of the same dataset when ``same_data``, so the held-out images are the others)."""

    def __init__(self, data_spec: str, dataset, search: EvalImages, same_data: bool, metadata: OnnxMetadata,
                 reference: Sequence, metric: str | None = None, accept: str = "conservative",
                 runner_options: dict | None = None):
        self.data_spec, self.dataset, self.search_count, self.metadata = data_spec, dataset, len(search), metadata
        self.accept, self.runner_options = accept, runner_options or {}
        self.postprocess_cfg = PostprocessConfig.from_dict(metadata.postprocess)
        self.metric = metric or default_metric(dataset)
        self.annotations = [dataset.annotation(i) for i in range(len(dataset))]
        self.num_classes = len(dataset.class_names) + 1
        used = set(search.indices) if same_data else set()
        self.held_out = np.array([i for i in range(len(dataset)) if i not in used], dtype=np.int64)
        self.reference = evaluate_detections(reference, dataset, self.metric, self.postprocess_cfg)
        self.reference_outcomes = self._outcomes(reference)

    def _outcomes(self, detections) -> Outcomes | None:
        return Outcomes(detections, self.annotations, self.num_classes) if self.metric in BOOTSTRAP_METRICS else None

    def verify(self, model: onnx.ModelProto) -> Verification:
        """``model`` (a real graph) run on every verification image (the runner of ``runner_options``: ONNX
        Runtime by default, or OpenVINO; CPU) and compared."""
        detections = graph_detections(model, self.dataset, self.metadata, self.runner_options)
        result = evaluate_detections(detections, self.dataset, self.metric, self.postprocess_cfg)
        outcomes = self._outcomes(detections)
        whole = held_out = None
        if outcomes is not None:
            whole = paired_interval(self.reference_outcomes, outcomes, self.metric)
            if len(self.held_out) == len(self.dataset):
                held_out = whole
            elif len(self.held_out):
                held_out = paired_interval(self.reference_outcomes, outcomes, self.metric, subset=self.held_out)
        return Verification(self.data_spec, result, self.reference, len(self.dataset), self.search_count,
                            len(self.held_out), whole, held_out, self.accept,
                            self.runner_options.get("backend") or "onnxruntime")


def graph_detections(model: onnx.ModelProto, dataset, metadata: OnnxMetadata, runner_options: dict | None = None) -> list:
    """Detections of the graph ``model`` on ``dataset`` through the runtime's runner (CPU; ONNX Runtime, or
    ``runner_options``' backend, threads and hint: OpenVINO), as ``assd eval-engine`` runs it: the debugger's
    own sessions (``open_session``) round some int8 details differently (measured: 0.6 mAP points apart on
    16 images), and a verification must measure what eval-engine on the same data will. For the gate, the
    fp32 graph's detections are the reference."""
    from assd.calibration.paths import private_workdir
    from assd.export.onnx_export import check_and_serialize
    from assd.runtime.runners import open_runner

    with private_workdir() as folder:
        path = folder / "verified.onnx"
        path.write_bytes(check_and_serialize(model))
        runner = open_runner(str(path), device="cpu", **(runner_options or {}))
        return predict_dataset(runner.infer_outputs, dataset, runner.cfg, PostprocessConfig.from_dict(runner.postprocess),
                               batch_size=metadata.fixed_batch or BATCH, device=runner.device)


def search_targets(tolerance: float) -> list[float]:
    """The search's target |Δ| on the search images, round by round: the tolerance, half, a quarter, 0."""
    return [0.0] if tolerance <= 0 else [tolerance, tolerance / 2, tolerance / 4, 0.0]


def verified_search(choose: Callable[[float], list], verify: Callable[[list], Verification], tolerance: float,
                    echo: Callable[[str], None]) -> tuple[list, Verification, list[dict]]:
    """Rounds of ``choose(target)`` (a kept-high set chosen on the search images, ``LayerSensitivity`` items)
    graded by ``verify(chosen)`` on the verification images until one meets ``tolerance`` (see the module
    docstring). Returns (the last chosen set, its verification, one record per round)."""
    rounds: list[dict] = []
    chosen, verification, verified = [], None, None
    targets = search_targets(tolerance)
    for number, target in enumerate(targets):
        chosen = choose(target)
        names = [s.layer.name for s in chosen]
        if verified is None or names != verified:  # a stricter target can find the same set: measured once
            verification, verified = verify(chosen), names
        rounds.append({"search_target_points": target, "kept_high": names, "verification": verification.to_dict()})
        if verification.met(tolerance):
            break
        if number + 1 < len(targets):
            echo(f"verification: {verification.text()}; checked |Δ| {verification.bound:.2f} exceeds ±{tolerance:g}: "
                 f"searching again on the search images with target ±{targets[number + 1]:g}")
    return chosen, verification, rounds
