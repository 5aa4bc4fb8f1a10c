"""Post-processing: box coding round trip, NMS against a naive greedy loop, batching, numpy inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assd.errors import UserError
from assd.models.box_coding import decode, encode
from assd.runtime.postprocess import Detections, PostprocessConfig, postprocess

VARIANCES = (0.1, 0.2)


def crowded_outputs(batch=3, anchors=300, classes=4, seed=0):
    """Priors and outputs whose decoded boxes overlap a lot, so NMS, top_k and max_detections all bite."""
    generator = torch.Generator().manual_seed(seed)
    centers = 0.3 + 0.4 * torch.rand(anchors, 2, generator=generator)
    sizes = 0.15 + 0.25 * torch.rand(anchors, 2, generator=generator)
    priors = torch.cat([centers, sizes], dim=1)
    loc = 0.5 * torch.randn(batch, anchors, 4, generator=generator)
    conf = 2.0 * torch.randn(batch, anchors, classes, generator=generator)
    return loc, conf, priors


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def naive_postprocess(loc, conf, priors, cfg):
    """The SSD recipe written as plain loops: per image and class, threshold, top_k, greedy NMS."""
    results = []
    for image in range(loc.shape[0]):
        boxes = decode(loc[image], priors, VARIANCES).double().tolist()
        scores = torch.softmax(conf[image].float(), dim=-1).tolist()
        found = []
        for label in range(1, conf.shape[-1]):
            ranked = sorted(range(len(boxes)), key=lambda a: -scores[a][label])
            candidates = [a for a in ranked if scores[a][label] > cfg.score_threshold][: cfg.top_k]
            kept = []
            for anchor in candidates:
                if all(iou(boxes[anchor], boxes[other]) <= cfg.nms_iou for other in kept):
                    kept.append(anchor)
            found += [(scores[a][label], label, boxes[a]) for a in kept]
        found.sort(key=lambda item: -item[0])
        results.append(found[: cfg.max_detections])
    return results


@pytest.mark.parametrize("cfg", [PostprocessConfig(score_threshold=0.01, nms_iou=0.45, top_k=40, max_detections=25),
                                 PostprocessConfig(score_threshold=0.3, nms_iou=0.3, top_k=200, max_detections=200)])
def test_nms_equals_naive_greedy_loop(cfg):
    loc, conf, priors = crowded_outputs()
    ours = postprocess(loc, conf, priors, VARIANCES, cfg)
    reference = naive_postprocess(loc, conf, priors, cfg)
    for dets, expected in zip(ours, reference, strict=True):
        assert len(dets) == len(expected) > 0
        assert dets.labels.tolist() == [label for _, label, _ in expected]
        np.testing.assert_allclose(dets.scores, [score for score, _, _ in expected], rtol=1e-6)
        np.testing.assert_allclose(dets.boxes, np.array([box for _, _, box in expected]), atol=1e-6)
    # the example is not trivial: NMS removed candidates, and the first config hits max_detections
    above = (torch.softmax(conf, dim=-1)[..., 1:] > cfg.score_threshold).sum(dim=1).clamp(max=cfg.top_k)
    for dets, candidates in zip(ours, above.sum(dim=1).tolist()):
        assert len(dets) < min(candidates, cfg.max_detections) or len(dets) == cfg.max_detections < candidates
    if cfg.max_detections == 25:
        assert all(len(dets) == 25 for dets in ours)


def test_batched_and_per_image_agree():
    loc, conf, priors = crowded_outputs(batch=4, seed=1)
    cfg = PostprocessConfig(top_k=50, max_detections=30)
    batched = postprocess(loc, conf, priors, VARIANCES, cfg)
    for image, dets in enumerate(batched):
        single = postprocess(loc[image:image + 1], conf[image:image + 1], priors, VARIANCES, cfg)[0]
        np.testing.assert_array_equal(dets.labels, single.labels)
        np.testing.assert_array_equal(dets.scores, single.scores)
        np.testing.assert_array_equal(dets.boxes, single.boxes)


def test_numpy_inputs_give_the_same_detections():
    loc, conf, priors = crowded_outputs(batch=2, seed=2)
    from_torch = postprocess(loc, conf, priors, VARIANCES)
    from_numpy = postprocess(loc.numpy(), conf.numpy(), priors.numpy(), VARIANCES)
    for a, b in zip(from_torch, from_numpy, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_sorted_by_score_and_labels_are_foreground():
    loc, conf, priors = crowded_outputs(batch=2, classes=6, seed=3)
    for dets in postprocess(loc, conf, priors, VARIANCES):
        assert np.all(np.diff(dets.scores) <= 0)
        assert dets.labels.min() >= 1 and dets.labels.max() <= 5
        assert dets.boxes.dtype == np.float32 and dets.labels.dtype == np.int64


def test_all_background_gives_empty_detections():
    loc, _, priors = crowded_outputs(batch=2)
    conf = torch.zeros(2, loc.shape[1], 3)
    conf[..., 0] = 20.0  # background certain: foreground scores ~ 2e-9 < threshold
    dets = postprocess(loc, conf, priors, VARIANCES)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4)


def test_decode_inverts_encode():
    generator = torch.Generator().manual_seed(4)
    priors = torch.cat([torch.rand(50, 2, generator=generator), 0.05 + 0.5 * torch.rand(50, 2, generator=generator)], 1)
    top_left = torch.rand(50, 2, generator=generator) * 0.6
    boxes = torch.cat([top_left, top_left + 0.02 + 0.38 * torch.rand(50, 2, generator=generator)], 1)
    np.testing.assert_allclose(decode(encode(boxes, priors, VARIANCES), priors, VARIANCES).numpy(), boxes.numpy(),
                               atol=1e-6)


def test_to_pixels_scales_and_clips():
    dets = Detections(np.array([[-0.1, 0.5, 0.5, 1.2]]), np.array([0.9]), np.array([1]))
    pixels = dets.to_pixels(width=200, height=100)
    np.testing.assert_allclose(pixels.boxes, [[0.0, 50.0, 100.0, 100.0]])
    np.testing.assert_allclose(dets.boxes, [[-0.1, 0.5, 0.5, 1.2]], rtol=1e-6)  # the original is unchanged


def test_config_round_trip_and_validation():
    cfg = PostprocessConfig(score_threshold=0.2, nms_iou=0.5, top_k=100, max_detections=50)
    assert PostprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PostprocessConfig.from_dict(None) == PostprocessConfig()
    with pytest.raises(UserError, match="score threshold"):
        PostprocessConfig(score_threshold=1.5)
    with pytest.raises(UserError, match="unknown post-processing settings"):
        PostprocessConfig.from_dict({"nms": 0.5})


@pytest.mark.gpu
def test_cuda_matches_cpu():
    loc, conf, priors = crowded_outputs(batch=4, seed=5)
    on_cpu = postprocess(loc, conf, priors, VARIANCES)
    on_gpu = postprocess(loc.cuda(), conf.cuda(), priors.cuda(), VARIANCES)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)
