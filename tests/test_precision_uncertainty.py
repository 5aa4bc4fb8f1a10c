"""The paired bootstrap of Δ mAP (assd.precision.uncertainty): exact at w = 1, paired, and honest about width."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from assd.evaluation.voc import voc_average_precisions
from assd.precision.uncertainty import Outcomes, images_needed, paired_interval

CLASSES = 4  # background + 3


def _scene(rng, images: int, noise: float, drop: float):
    """Ground truth per image and detections near it (``noise`` px jitter, ``drop`` fraction missed, plus FPs)."""
    annotations, detections = [], []
    for _ in range(images):
        count = rng.integers(1, 5)
        xy = rng.uniform(0, 200, (count, 2))
        boxes = np.hstack([xy, xy + rng.uniform(20, 60, (count, 2))])
        labels = rng.integers(1, CLASSES, count)
        difficult = rng.random(count) < 0.1
        annotations.append(SimpleNamespace(boxes=boxes, labels=labels, difficult=difficult))
        keep = rng.random(count) >= drop
        det_boxes = boxes[keep] + rng.normal(0, noise, (int(keep.sum()), 4))
        fp = rng.uniform(0, 200, (2, 2))
        det_boxes = np.vstack([det_boxes, np.hstack([fp, fp + 30])])
        det_labels = np.concatenate([labels[keep], rng.integers(1, CLASSES, 2)])
        scores = rng.uniform(0.05, 1.0, len(det_boxes))
        detections.append(SimpleNamespace(boxes=det_boxes, labels=det_labels, scores=scores))
    return annotations, detections


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_point_estimate_is_the_evaluations_map(metric):
    rng = np.random.default_rng(1)
    annotations, reference = _scene(rng, 30, 1.0, 0.1)
    _, variant = _scene(np.random.default_rng(2), 30, 8.0, 0.3)
    variant_annotations = annotations  # the same images
    use_07 = metric == "voc07"
    ref_map = np.mean(list(voc_average_precisions(reference, annotations, CLASSES, use_07).values()))
    var_map = np.mean(list(voc_average_precisions(variant, variant_annotations, CLASSES, use_07).values()))
    interval = paired_interval(Outcomes(reference, annotations, CLASSES), Outcomes(variant, annotations, CLASSES),
                               metric)
    assert interval.delta == pytest.approx(100 * (var_map - ref_map), abs=1e-9)
    assert interval.low <= interval.delta <= interval.high and interval.images == 30
    # weights of 2 = every image twice: the same AP as the duplicated list
    twice = Outcomes(reference, annotations, CLASSES).mean_ap(np.full((1, 30), 2.0), use_07)[0]
    doubled = np.mean(list(voc_average_precisions(reference * 2, annotations * 2, CLASSES, use_07).values()))
    assert twice == pytest.approx(doubled, abs=1e-12)


def test_identical_models_have_a_zero_width_interval_and_more_images_narrow_it():
    rng = np.random.default_rng(3)
    annotations, detections = _scene(rng, 40, 1.0, 0.1)
    same = Outcomes(detections, annotations, CLASSES)
    interval = paired_interval(same, same, "voc07")
    assert interval.delta == interval.low == interval.high == 0 and images_needed(interval, 1.0) is None
    widths = []
    for images in (20, 320):
        annotations, reference = _scene(np.random.default_rng(4), images, 1.0, 0.1)
        _, variant = _scene(np.random.default_rng(4), images, 6.0, 0.2)
        widths.append(paired_interval(Outcomes(reference, annotations, CLASSES),
                                      Outcomes(variant, annotations, CLASSES), "voc07").half_width)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16) = 1/4 in expectation


def test_subset_and_unsupported_metric():
    rng = np.random.default_rng(5)
    annotations, reference = _scene(rng, 20, 1.0, 0.1)
    _, variant = _scene(np.random.default_rng(6), 20, 6.0, 0.3)
    ref, var = Outcomes(reference, annotations, CLASSES), Outcomes(variant, annotations, CLASSES)
    half = np.arange(10, 20)
    expected = paired_interval(Outcomes(reference[10:], annotations[10:], CLASSES),
                               Outcomes(variant[10:], annotations[10:], CLASSES), "voc12")
    assert paired_interval(ref, var, "voc12", subset=half) == expected
    assert paired_interval(ref, var, "coco") is None
    wide = paired_interval(ref, var, "voc07")
    assert images_needed(wide, 2 * wide.half_width) == pytest.approx(20, abs=1)  # ±tolerance/2 at these 20
    assert images_needed(wide, wide.half_width) == pytest.approx(80, abs=1)  # half the width: 4x the images
