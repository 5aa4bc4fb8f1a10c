"""Prior matching, box encoding and the MultiBox loss (hard negative mining 3:1), on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from assd.models import build_model
from assd.models.box_coding import cxcywh_to_xyxy, decode, encode
from assd.models.config import ExtraLayer, ModelConfig
from assd.models.priors import generate_priors
from assd.train.loss import MultiBoxLoss, hard_negative_mask
from assd.train.matching import match_priors, pad_targets

VARIANCES = (0.1, 0.2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _priors() -> torch.Tensor:
    """A small SSD-like prior set: 8x8, 4x4, 2x2 and 1x1 maps (A = 4 * (64 + 16 + 4 + 1) = 340)."""
    return generate_priors([(8, 8), (4, 4), (2, 2), (1, 1)], (0.1, 0.3, 0.5, 0.7), (0.3, 0.5, 0.7, 0.9),
                           ((2,), (2,), (2,), (2,)))


def _random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    top_left = torch.rand(count, 2, generator=generator) * 0.7
    size = 0.05 + torch.rand(count, 2, generator=generator) * 0.3
    return torch.cat([top_left, (top_left + size).clamp(max=1.0)], dim=1)


def _reference_match(boxes: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor, threshold: float = 0.5):
    """SSD's matching for one image, written plainly (loop over objects) to check the batched version."""
    num_priors = priors.shape[0]
    if len(boxes) == 0:
        return torch.zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.int64)
    iou = box_iou(boxes, cxcywh_to_xyxy(priors))
    best_gt_iou, best_gt = iou.max(dim=0)
    for gt_index in range(len(boxes)):
        prior = int(iou[gt_index].argmax())
        best_gt[prior] = gt_index
        best_gt_iou[prior] = 2.0
    matched_labels = labels[best_gt].clone()
    matched_labels[best_gt_iou < threshold] = 0
    return boxes[best_gt], matched_labels


def _targets(generator: torch.Generator, counts=(3, 0, 1, 5)) -> list[dict]:
    return [{"boxes": _random_boxes(n, generator), "labels": torch.randint(1, 5, (n,), generator=generator)}
            for n in counts]


def test_pad_targets_masks_padding_and_keeps_at_least_one_slot():
    targets = [{"boxes": torch.rand(2, 4), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    boxes, labels, mask = pad_targets(targets)
    assert boxes.shape == (2, 2, 4) and labels.tolist() == [[1, 2], [0, 0]]
    assert mask.tolist() == [[True, True], [False, False]]
    _, _, empty_mask = pad_targets([targets[1]])
    assert empty_mask.shape == (1, 1) and not empty_mask.any()


def test_batched_matching_equals_per_image_reference():
    generator = torch.Generator().manual_seed(0)
    priors = _priors()
    targets = _targets(generator)
    matched_boxes, matched_labels = match_priors(*pad_targets(targets), priors)
    assert matched_boxes.shape == (4, priors.shape[0], 4) and matched_labels.shape == (4, priors.shape[0])
    for index, target in enumerate(targets):
        ref_boxes, ref_labels = _reference_match(target["boxes"], target["labels"], priors)
        assert torch.equal(matched_labels[index], ref_labels)
        positive = ref_labels > 0
        assert torch.equal(matched_boxes[index][positive], ref_boxes[positive])
    assert not matched_labels[1].any(), "an image without objects has only background priors"


def test_every_object_gets_its_best_prior_even_below_the_threshold():
    priors = _priors()
    tiny = torch.tensor([[0.50, 0.50, 0.52, 0.53]])  # far smaller than any prior: IoU << 0.5 everywhere
    labels = torch.tensor([3])
    iou = box_iou(tiny, cxcywh_to_xyxy(priors))[0]
    assert iou.max() < 0.5
    _, matched = match_priors(*pad_targets([{"boxes": tiny, "labels": labels}]), priors)
    assert matched[0].nonzero().flatten().tolist() == [int(iou.argmax())]
    assert int(matched[0, iou.argmax()]) == 3


def test_positives_are_exactly_the_priors_over_the_iou_threshold():
    priors = _priors()
    box = cxcywh_to_xyxy(priors[10:11]) * 0.98 + 0.01  # nearly one prior: it and its neighbours overlap
    iou = box_iou(box, cxcywh_to_xyxy(priors))[0]
    _, matched = match_priors(*pad_targets([{"boxes": box, "labels": torch.tensor([1])}]), priors)
    expected = (iou >= 0.5)
    expected[iou.argmax()] = True
    assert torch.equal(matched[0] > 0, expected)


def test_encode_then_decode_gives_the_matched_ground_truth_box():
    generator = torch.Generator().manual_seed(1)
    priors = _priors()
    targets = _targets(generator, counts=(4, 2))
    matched_boxes, matched_labels = match_priors(*pad_targets(targets), priors)
    offsets = encode(matched_boxes, priors, VARIANCES)
    decoded = decode(offsets, priors, VARIANCES)
    positive = matched_labels > 0
    assert positive.sum() >= 6
    torch.testing.assert_close(decoded[positive], matched_boxes[positive], atol=1e-5, rtol=0)
    for index, target in enumerate(targets):  # every object is recovered from at least one prior
        recovered = decoded[index][positive[index]]
        for gt_box in target["boxes"]:
            assert (recovered - gt_box).abs().amax(dim=1).min() < 1e-5


def test_hard_negatives_are_three_per_positive_and_the_hardest():
    generator = torch.Generator().manual_seed(2)
    num_priors = 200
    positive = torch.zeros(3, num_priors, dtype=torch.bool)
    positive[0, :5] = True  # 5 positives -> 15 negatives
    positive[1, 10:70] = True  # 60 positives, 140 negatives available -> only 140 < 180
    background_loss = torch.rand(3, num_priors, generator=generator)  # image 2: no positives -> no negatives
    negative = hard_negative_mask(background_loss, positive, neg_pos_ratio=3.0)
    assert negative.sum(dim=1).tolist() == [15, 140, 0]
    assert not (negative & positive).any()
    unchosen = ~negative[0] & ~positive[0]
    assert background_loss[0][negative[0]].min() > background_loss[0][unchosen].max()


def test_loss_parts_follow_the_definition():
    generator = torch.Generator().manual_seed(3)
    priors = _priors()
    targets = _targets(generator, counts=(2, 3))
    loc = torch.randn(2, priors.shape[0], 4, generator=generator)
    conf = torch.randn(2, priors.shape[0], 5, generator=generator)
    losses = MultiBoxLoss(priors, VARIANCES)(loc, conf, targets)
    matched_boxes, labels = match_priors(*pad_targets(targets), priors)
    positive = labels > 0
    num_pos = positive.sum()
    loc_targets = encode(matched_boxes, priors, VARIANCES)
    expected_loc = torch.nn.functional.smooth_l1_loss(loc[positive], loc_targets[positive], reduction="sum") / num_pos
    torch.testing.assert_close(losses["loc_loss"], expected_loc)
    assert int(losses["num_pos"]) == int(num_pos)
    torch.testing.assert_close(losses["loss"], losses["loc_loss"] + losses["conf_loss"])


def test_loss_without_objects_is_zero_and_finite():
    priors = _priors()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    loc = torch.randn(1, priors.shape[0], 4, requires_grad=True)
    conf = torch.randn(1, priors.shape[0], 5, requires_grad=True)
    losses = MultiBoxLoss(priors, VARIANCES)(loc, conf, empty)
    assert float(losses["loss"].detach()) == 0.0
    losses["loss"].backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(conf.grad).all()


def _tiny_config() -> ModelConfig:
    return ModelConfig(name="tiny-test", backbone="resnet18", input_size=64, num_classes=3,
                       class_names=("a", "b"), extras=(ExtraLayer(32, 64),), min_scales=(0.15, 0.35, 0.6, 0.8),
                       max_scales=(0.35, 0.6, 0.8, 1.0), aspect_ratios=((2,), (2,), (2,), (2,)),
                       fusion_channels=32)


def test_loss_is_finite_and_falls_when_overfitting_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model(_tiny_config())
    criterion = MultiBoxLoss(model.priors_cxcywh, VARIANCES)
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    targets = [{"boxes": _random_boxes(2, generator) * 0.5 + 0.2, "labels": torch.tensor([1, 2])} for _ in range(2)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    losses = []
    for _ in range(8):
        loss = criterion(*model(images), targets)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_is_computed_in_float32_for_low_precision_outputs(dtype):
    generator = torch.Generator().manual_seed(5)
    priors = _priors()
    targets = _targets(generator, counts=(2,))
    loc = torch.randn(1, priors.shape[0], 4, generator=generator)
    conf = torch.randn(1, priors.shape[0], 5, generator=generator)
    criterion = MultiBoxLoss(priors, VARIANCES)
    full = criterion(loc, conf, targets)
    low = criterion(loc.to(dtype), conf.to(dtype), targets)
    assert low["loss"].dtype == torch.float32
    torch.testing.assert_close(low["loss"], full["loss"], rtol=2e-2, atol=0)
