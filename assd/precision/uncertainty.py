"""How sure a Δ mAP is: a paired bootstrap over images (same images, both models).

mAP is not a sum over images, so its uncertainty is estimated by resampling: draw the evaluation
images with replacement (``RESAMPLES`` times, a fixed seed, so every variant sees the same draws),
recompute both models' mAP on each draw, and take the percentiles of their difference. Pairing is
what makes a few dozen images enough for a graph close to its reference: an image both models get
equally right or wrong moves both mAPs together and adds nothing to the spread of Δ.

VOC matching is decided per image (a detection is a TP, an FP or ignored by the boxes of its own
image), so each model's detections are matched once (``Outcomes``); a resample only reweights them:
image ``i`` drawn ``w_i`` times counts its TPs, FPs and ground truth ``w_i`` times (per class, a matrix of
each image's TPs and FPs ranked above each TP: one matrix product per draw set). The weighted
cumulative sums give exactly the AP of the duplicated image list (copies of a detection are adjacent
in the score ranking, and the intermediate points they skip are dominated), so ``w = 1`` reproduces
``assd.evaluation``'s voc07 / voc12 AP (tested). pycocotools' COCO metric has no such split here:
for ``coco`` no interval is computed and the tolerance applies to the point estimate (reports say so).

No library does this: scipy.stats.bootstrap resamples a statistic of independent samples, and
re-running pycocotools / the VOC matcher per draw would cost ~1000x the evaluation itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from assd.evaluation.voc import match_image

RESAMPLES = 1000
LEVEL = 0.95  # two-sided interval
SEED = 0
BOOTSTRAP_METRICS = ("voc07", "voc12")


@dataclass(frozen=True)
class Interval:
    """Δ mAP in points (``delta``: the point estimate on all ``images``) and its paired bootstrap
    interval ``[low, high]`` at ``LEVEL``."""

    delta: float
    low: float
    high: float
    images: int

    @property
    def bound(self) -> float:
        """The conservative |Δ|: the end of the interval farthest from 0 (the tolerance is checked on it)."""
        return max(abs(self.delta), abs(self.low), abs(self.high))

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self) -> str:
        return f"{self.delta:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def to_dict(self) -> dict:
        return {"delta_map_points": self.delta, "low": self.low, "high": self.high, "level": LEVEL,
                "images": self.images, "conservative_abs_points": self.bound}


class Outcomes:
    """One model's detections on fixed images, matched once: per class the scores, outcomes (1 TP,
    0 FP; matches of difficult boxes dropped) and image index of each detection, and per image the
    number of non-difficult ground-truth boxes of each class (``positives [images, classes]``)."""

    def __init__(self, detections, annotations, num_classes: int):
        self.images = len(annotations)
        self.positives = np.zeros((self.images, num_classes - 1), np.int64)
        scores, outcomes, owners = ([[] for _ in range(num_classes - 1)] for _ in range(3))
        for image, (dets, gt) in enumerate(zip(detections, annotations, strict=True)):
            gt_labels, gt_difficult = np.asarray(gt.labels), np.asarray(gt.difficult, dtype=bool)
            for label in range(1, num_classes):
                self.positives[image, label - 1] = int(np.sum((gt_labels == label) & ~gt_difficult))
            det_labels, det_scores = np.asarray(dets.labels), np.asarray(dets.scores)
            for label in np.unique(det_labels):
                mine = np.flatnonzero(det_labels == label)
                mine = mine[np.argsort(-det_scores[mine], kind="stable")]
                mask = gt_labels == label
                outcome = match_image(np.asarray(dets.boxes)[mine], np.asarray(gt.boxes)[mask], gt_difficult[mask])
                scores[label - 1].append(det_scores[mine])
                outcomes[label - 1].append(outcome)
                owners[label - 1].append(np.full(len(mine), image))
        self.classes = [self._counts(*parts) for parts in zip(scores, outcomes, owners)]

    def _counts(self, scores: list, outcomes: list, owners: list) -> tuple[np.ndarray, np.ndarray]:
        """One class: ``[images, TPs]`` counts of each image's TPs and FPs ranked at or above each TP (recall
        moves and the precision envelope peaks only at TPs; FPs after the last TP never change AP)."""
        if not scores:
            return np.zeros((self.images, 0)), np.zeros((self.images, 0))
        order = np.argsort(-np.concatenate(scores), kind="stable")
        outcome, owner = np.concatenate(outcomes)[order], np.concatenate(owners)[order]
        keep = outcome >= 0  # matches of difficult boxes count nowhere
        outcome, owner = outcome[keep], owner[keep]
        hits = np.flatnonzero(outcome == 1)
        tp, fp = np.zeros((self.images, len(hits))), np.zeros((self.images, len(hits)))
        if len(hits):
            before = hits[-1] + 1
            segment = np.searchsorted(hits, np.arange(before))  # the TP at or after each detection
            np.add.at(tp, (owner[:before], segment), outcome[:before] == 1)
            np.add.at(fp, (owner[:before], segment), outcome[:before] == 0)
        return np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)

    def mean_ap(self, weights: np.ndarray, use_07_metric: bool) -> np.ndarray:
        """mAP (fraction) per row of ``weights [draws, images]`` (how often each image is drawn)."""
        weights = np.asarray(weights, np.float64)
        positives = weights @ self.positives  # [draws, classes]
        aps = np.zeros_like(positives)
        for c, (tp_counts, fp_counts) in enumerate(self.classes):
            if tp_counts.shape[1] == 0:
                continue
            tp, fp = weights @ tp_counts, weights @ fp_counts  # [draws, TPs]
            aps[:, c] = _average_precision(tp / np.maximum(positives[:, c:c + 1], 1e-12),
                                           tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07_metric)
        present = positives > 0  # classes without ground truth in a draw have no AP (as in the evaluation)
        return np.sum(aps * present, axis=1) / np.maximum(present.sum(axis=1), 1)


def _average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> np.ndarray:
    """``assd.evaluation.voc.voc_ap`` per row of ``[draws, points]`` (the ranked TPs of one class)."""
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    if not use_07_metric:
        return np.sum(np.diff(recall, axis=1, prepend=0.0) * envelope, axis=1)
    total = np.zeros(len(recall))
    rows = np.arange(len(recall))
    for t in np.arange(0.0, 1.1, 0.1):
        reached = recall >= t
        total += np.where(reached.any(axis=1), envelope[rows, reached.argmax(axis=1)], 0.0)
    return total / 11.0


def draws(images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``[resamples, images]``: how often each image is drawn in each resample (the same for every variant)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(images, np.full(images, 1.0 / images), size=resamples)


def paired_interval(reference: Outcomes, variant: Outcomes, metric: str, subset: np.ndarray | None = None,
                    resamples: int = RESAMPLES) -> Interval | None:
    """Δ mAP (points) of ``variant`` against ``reference`` on the same images (``subset``: only these image
    indices) and its paired bootstrap interval; None for a metric without a bootstrap (``coco``)."""
    if metric not in BOOTSTRAP_METRICS:
        return None
    use_07 = metric == "voc07"
    images = reference.images if subset is None else len(subset)
    if images == 0:
        return None
    point = np.zeros((1, reference.images))
    point[0, np.arange(reference.images) if subset is None else subset] = 1
    weights = draws(images, resamples)
    if subset is not None:
        full = np.zeros((resamples, reference.images))
        full[:, subset] = weights
        weights = full
    weights = np.vstack([point, weights])
    delta = 100 * (variant.mean_ap(weights, use_07) - reference.mean_ap(weights, use_07))
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(delta[1:], [tail, 100 - tail])
    return Interval(float(delta[0]), float(min(low, delta[0])), float(max(high, delta[0])), images)


def images_needed(interval: Interval | None, tolerance: float) -> int | None:
    """Images for which this Δ's interval would be ±tolerance/2 wide (a tolerance that the measurement
    resolves: a graph at half the tolerance still passes its conservative bound), from the spread per
    image implied by ``interval`` (the half-width shrinks as 1/sqrt(images)); None when not estimable."""
    if interval is None or tolerance <= 0 or interval.half_width <= 0:
        return None
    per_image = interval.half_width * math.sqrt(interval.images)
    return math.ceil((per_image / (tolerance / 2)) ** 2)
