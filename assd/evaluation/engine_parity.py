"""``assd eval-engine``: the mAP of an artifact (ONNX, engine, checkpoint) next to its PyTorch reference.

Both run on the same images with the same pre- and post-processing (the artifact's stored thresholds),
so any difference comes from the artifact itself (export, precision, engine). Reports mAP of each,
Δ mAP and per-class Δ (in AP points), the fraction of reference detections the artifact reproduces (same
class, IoU >= 0.9) and the largest score difference among those.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from assd.errors import CheckFailed, UserError
from assd.evaluation.evaluate import EvalResult, check_class_names, evaluate_detections, predict_dataset
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.runners import Runner, open_runner

# Default |Δ mAP| tolerance in AP points, by the artifact's precision.
TOLERANCE_POINTS = {"fp32": 0.1, "fp16": 0.3, "bf16": 0.3, "int8": 1.0}


@dataclass
class EngineParity:
    artifact: EvalResult
    reference: EvalResult | None
    precision: str
    tolerance_points: float
    matched: int = 0
    reference_detections: int = 0
    max_score_diff: float = 0.0
    per_class_delta: dict[str, float] = field(default_factory=dict)
    backend: str = ""  # the artifact's runner (onnxruntime, openvino, tensorrt, torch)

    @property
    def delta_points(self) -> float | None:
        return None if self.reference is None else 100 * (self.artifact.mAP - self.reference.mAP)

    @property
    def agreement(self) -> float | None:
        if self.reference is None:
            return None
        return 1.0 if self.reference_detections == 0 else self.matched / self.reference_detections

    @property
    def passed(self) -> bool:
        return self.reference is None or abs(self.delta_points) <= self.tolerance_points + 1e-9

    def to_dict(self) -> dict:
        return {"artifact": self.artifact.to_dict(), "reference": self.reference and self.reference.to_dict(),
                "precision": self.precision, "backend": self.backend, "metric": self.artifact.metric,
                "mAP_artifact": self.artifact.mAP, "mAP_reference": self.reference and self.reference.mAP,
                "delta_mAP_points": self.delta_points, "tolerance_points": self.tolerance_points,
                "per_class_delta_points": self.per_class_delta, "detection_agreement": self.agreement,
                "reference_detections": self.reference_detections, "matched_detections": self.matched,
                "max_score_diff": self.max_score_diff, "passed": self.passed}


def _predict(runner: Runner, dataset, postprocess_cfg: PostprocessConfig, batch_size: int, progress: bool):
    cfg = runner.cfg
    runner.check_batch(batch_size)
    return predict_dataset(runner.infer_outputs, dataset, cfg, postprocess_cfg, batch_size=batch_size,
                           device=runner.device, progress=progress)


def _agreement(reference_dets, artifact_dets) -> tuple[int, int, float]:
    from assd.export.parity import match_detections

    matched = total = 0
    worst = 0.0
    for ref, art in zip(reference_dets, artifact_dets):
        hits, diff = match_detections(ref, art)
        matched, total, worst = matched + hits, total + len(ref.scores), max(worst, diff)
    return matched, total, worst


def eval_engine(artifact: str, data_spec: str, reference: str | None = None, metric: str | None = None,
                tolerance: float | None = None, batch_size: int = 8, device: str | None = "auto",
                limit: int | None = None, progress: bool = True, runner_options: dict | None = None) -> EngineParity:
    """Evaluate ``artifact`` (and ``reference``, a checkpoint) on ``data_spec``; see the module docstring.
    ``runner_options``: ``open_runner``'s backend, threads and performance_hint for the artifact."""
    from assd.data import parse_data_spec
    from assd.evaluation.evaluate import FirstImages
    from assd.models.limits import check_runners_memory

    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"--tolerance {tolerance}: must be a finite number of mAP points >= 0")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    runner = open_runner(artifact, device=device, **(runner_options or {}))
    runner.check_batch(batch_size)
    check_runners_memory([runner], batch_size, "eval-engine")
    dataset = parse_data_spec(data_spec)
    if limit is not None:
        dataset = FirstImages(dataset, limit)
    check_class_names(runner.cfg, dataset, artifact)
    postprocess_cfg = PostprocessConfig.from_dict(runner.postprocess)
    tolerance = TOLERANCE_POINTS.get(runner.precision, 1.0) if tolerance is None else tolerance
    artifact_dets = _predict(runner, dataset, postprocess_cfg, batch_size, progress)
    artifact_result = evaluate_detections(artifact_dets, dataset, metric, postprocess_cfg)
    parity = EngineParity(artifact_result, None, runner.precision, tolerance, backend=runner.backend)
    if reference is None:
        return parity
    reference_runner = open_runner(reference, device=device)
    check_runners_memory([runner, reference_runner], batch_size, "eval-engine")
    if reference_runner.cfg != runner.cfg:
        raise UserError(f"{artifact}: its model config ({runner.cfg.name}, {runner.cfg.num_classes} classes) is not "
                        f"the reference's ({reference_runner.cfg.name}, {reference_runner.cfg.num_classes} classes): "
                        "compare an artifact with the checkpoint it was exported from")
    reference_dets = _predict(reference_runner, dataset, postprocess_cfg, batch_size, progress)
    parity.reference = evaluate_detections(reference_dets, dataset, metric, postprocess_cfg)
    parity.matched, parity.reference_detections, parity.max_score_diff = _agreement(reference_dets, artifact_dets)
    parity.per_class_delta = {name: 100 * (ap - parity.reference.per_class.get(name, 0.0))
                              for name, ap in artifact_result.per_class.items()}
    return parity


def print_parity(parity: EngineParity, artifact: str, reference: str | None, echo: Callable[[str], None]) -> None:
    metric = parity.artifact.metric
    echo(f"{metric} mAP on {parity.artifact.num_images} images:")
    backend = f"{parity.backend} " if parity.backend else ""
    echo(f"  artifact  {artifact} [{backend}{parity.precision}]: {100 * parity.artifact.mAP:.2f}")
    if parity.reference is None:
        echo("  (no --reference checkpoint: no parity computed)")
        return
    echo(f"  reference {reference} [torch fp32]: {100 * parity.reference.mAP:.2f}")
    echo(f"  Δ mAP: {parity.delta_points:+.2f} points (tolerance ±{parity.tolerance_points:.2f})")
    worst = sorted(parity.per_class_delta.items(), key=lambda item: -abs(item[1]))[:5]
    echo("  largest per-class Δ: " + ", ".join(f"{name} {delta:+.2f}" for name, delta in worst))
    echo(f"  detections reproduced (same class, IoU >= 0.9): {parity.matched}/{parity.reference_detections} "
         f"({100 * parity.agreement:.1f}%), max score diff {parity.max_score_diff:.2e}")
    echo("PASS" if parity.passed else "FAIL: |Δ mAP| exceeds the tolerance")


def check_parity(parity: EngineParity) -> None:
    if not parity.passed:
        raise CheckFailed(f"Δ mAP {parity.delta_points:+.2f} points exceeds ±{parity.tolerance_points:.2f}")
