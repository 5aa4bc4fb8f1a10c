"""Post-processing shared by every backend: network outputs -> per-image detections.

``postprocess(loc, conf, priors_cxcywh, variances, cfg)`` decodes the offsets against the priors
(``assd.models.box_coding.decode``), turns the logits into softmax scores and, per image and class,
keeps the ``top_k`` best-scoring anchors above ``score_threshold`` (and per image the
``MAX_NMS_CANDIDATES`` best of those), runs NMS at ``nms_iou`` and keeps
the ``max_detections`` best of what survives in the image (the SSD recipe). The whole batch goes
through one ``torchvision.ops.batched_nms`` call (groups = image x class) on the tensors' device; only
the final detections are copied to the CPU. Boxes are not clipped before NMS (as SSD) unless the
model's conventions say so (torchvision); ``Detections.to_pixels`` clips them to the image.

``detect(loc, conf, model_cfg, cfg)`` is the entry every stage calls: it takes the priors, variances,
decode clamp and clipping from the model's ``ModelConfig`` (its ``Conventions``), and when no
thresholds are given, the model's own defaults (``PostprocessConfig.for_model``).

The thresholds are a ``PostprocessConfig``, recorded with every result (``to_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

from assd.errors import UserError
from assd.models.box_coding import decode
from assd.models.config import ModelConfig, unknown_fields

# Candidates per image that enter NMS, at most: TensorRT's NMS layer considers only the 5000 best boxes
# per image ("a hardware-dependent limit K ... 5000", include/NvInfer.h, INMSLayer) and its TopK layer
# takes K "up to 3840" (ITopKLayer::setK) while onnx-tensorrt's operator table says "less than 3840":
# the --with-postprocess graph (assd.export.nms_graph) caps at 3000, clearly inside both, and every
# backend caps alike (the effect on mAP is measured in docs/deployment.md, "The NMS candidate cap").
MAX_NMS_CANDIDATES = 3000


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds of the post-processing.

    Attributes:
        score_threshold: keep class scores strictly greater than this (softmax probability).
        nms_iou: NMS suppresses a box whose IoU with a better box of its class is greater than this.
        top_k: candidates per class and image that enter NMS (the best-scoring ones).
        max_detections: detections kept per image after NMS (the best-scoring ones, all classes);
            ``None``: no per-image cap (at most ``top_k`` per class survive).
    """

    score_threshold: float = 0.01
    nms_iou: float = 0.45
    top_k: int = 200
    max_detections: int | None = 200

    def __post_init__(self):
        if not 0.0 <= self.score_threshold < 1.0:
            raise UserError(f"score threshold {self.score_threshold}: must be in [0, 1)")
        if not 0.0 < self.nms_iou <= 1.0:
            raise UserError(f"NMS IoU threshold {self.nms_iou}: must be in (0, 1]")
        if self.top_k < 1 or (self.max_detections is not None and self.max_detections < 1):
            raise UserError(f"top_k={self.top_k}, max_detections={self.max_detections}: both must be >= 1")

    @classmethod
    def for_model(cls, model_cfg: ModelConfig, **overrides) -> PostprocessConfig:
        """The model's own defaults (``top_k``, ``max_detections`` of its conventions), with the
        ``overrides`` that are not ``None`` applied (e.g. from command-line options)."""
        values = {"top_k": model_cfg.conventions.top_k, "max_detections": model_cfg.conventions.max_detections}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def max_per_image(self, num_classes: int) -> int:
        """A bound on one image's detections: ``max_detections``, or without a cap ``top_k`` per
        foreground class (``num_classes`` includes background)."""
        return self.top_k * (num_classes - 1) if self.max_detections is None else self.max_detections

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> PostprocessConfig:
        """From ``to_dict``'s output (``None`` or ``{}``: the defaults)."""
        data = dict(data or {})
        if unknown := unknown_fields(cls, data):
            expected = [field.name for field in dataclasses.fields(cls)]
            raise UserError(f"unknown post-processing settings {unknown}: expected {sorted(expected)}")
        return cls(**data)


@dataclass
class Detections:
    """Detections of one image (numpy, on the CPU).

    Attributes:
        boxes: float32 ``[n, 4]`` xyxy, normalized to 0..1 (from ``postprocess``) or in pixels (after
            ``to_pixels``), sorted by decreasing score.
        scores: float32 ``[n]`` softmax probabilities.
        labels: int64 ``[n]`` in ``1..C-1`` (label k <-> ``class_names[k - 1]``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores and "
                             f"{len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def to_pixels(self, width: int, height: int) -> Detections:
        """A copy with normalized boxes scaled to a ``width`` x ``height`` image and clipped to it."""
        scale = np.array([width, height, width, height], dtype=np.float32)
        boxes = np.clip(self.boxes * scale, 0, scale)
        return Detections(boxes, self.scores.copy(), self.labels.copy())

    def select(self, keep: np.ndarray) -> Detections:
        """The detections where the boolean mask (or index array) ``keep`` selects."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])

    def relabel(self, table: np.ndarray) -> Detections:
        """The detections with label ``k`` replaced by ``table[k]``; those mapped to 0 are dropped."""
        labels = np.asarray(table, np.int64)[self.labels]
        keep = labels > 0
        return Detections(self.boxes[keep], self.scores[keep], labels[keep])

    def with_label_ids(self, model_cfg: ModelConfig) -> Detections:
        """The labels as the model's output ids (``conventions.label_ids``, e.g. COCO category ids), as
        the ``--with-postprocess`` graph reports them; unchanged for a model without label ids."""
        label_ids = model_cfg.conventions.label_ids
        return self if label_ids is None else self.relabel(np.array((0, *label_ids), np.int64))


def _as_tensor(array, device: torch.device | None = None) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    return tensor.to(device) if device is not None else tensor


def postprocess(
    loc: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    priors_cxcywh: torch.Tensor | np.ndarray,
    variances: Sequence[float],
    cfg: PostprocessConfig | None = None,
    decode_clamp: float | None = None,
    clip_before_nms: bool = False,
) -> list[Detections]:
    """Detections (normalized xyxy) of each image of a batch.

    Args:
        loc: ``[B, A, 4]`` offsets encoded against the priors (torch on any device, or numpy).
        conf: ``[B, A, C]`` class logits, class 0 = background.
        priors_cxcywh: ``[A, 4]`` normalized priors.
        variances: the box-coding variances (center, size).
        cfg: thresholds (default ``PostprocessConfig()``).
        decode_clamp: cap on the decoded size exponent (``Conventions.decode_clamp``).
        clip_before_nms: clip boxes to [0, 1] before NMS (``Conventions.clip_before_nms``).

    Returns:
        ``B`` ``Detections``, each sorted by decreasing score, at most ``cfg.max_detections`` long.
    """
    cfg = cfg or PostprocessConfig()
    loc = _as_tensor(loc)
    device = loc.device
    conf, priors = _as_tensor(conf, device), _as_tensor(priors_cxcywh, device)
    batch, num_anchors, num_classes = conf.shape
    boxes = decode(loc.float(), priors.float(), variances, decode_clamp)  # [B, A, 4]
    if clip_before_nms:
        boxes = boxes.clamp(0.0, 1.0)
    scores = torch.softmax(conf.float(), dim=-1)[..., 1:]  # [B, A, K], K = C - 1 foreground classes
    foreground = num_classes - 1

    # top_k candidates per (image, class), then the score threshold: the same set as threshold-then-top_k;
    # then the MAX_NMS_CANDIDATES best per image (the cap the --with-postprocess graph applies too).
    k = min(cfg.top_k, num_anchors, MAX_NMS_CANDIDATES)
    cand_scores, cand_anchors = scores.transpose(1, 2).topk(k, dim=2)  # [B, K, k]
    cand_scores, slots = cand_scores.reshape(batch, -1), torch.arange(foreground * k, device=device).expand(batch, -1)
    if foreground * k > MAX_NMS_CANDIDATES:
        cand_scores, slots = cand_scores.topk(MAX_NMS_CANDIDATES, dim=1)  # [B, MAX_NMS_CANDIDATES]
    image_idx, column = torch.nonzero(cand_scores > cfg.score_threshold, as_tuple=True)
    slot = slots[image_idx, column]
    class_idx = slot // k
    cand_scores = cand_scores[image_idx, column]
    cand_boxes = boxes[image_idx, cand_anchors.reshape(batch, -1)[image_idx, slot]]
    # float64: batched_nms offsets each group's boxes by group * (max coordinate + 1); in float32 that
    # costs small normalized boxes ~1e-4 of precision once there are hundreds of groups.
    kept = batched_nms(cand_boxes.double(), cand_scores.double(), image_idx * foreground + class_idx, cfg.nms_iou)

    # Order: image, then decreasing score, ties broken by class and candidate rank (fp16 outputs round many
    # scores to one value; without this the order of tied rows would depend on which images share a batch).
    kept = kept[torch.sort(slot[kept], stable=True).indices]
    kept = kept[torch.sort(cand_scores[kept], descending=True, stable=True).indices]
    kept = kept[torch.sort(image_idx[kept], stable=True).indices]
    kept_image = image_idx[kept]
    counts = torch.bincount(kept_image, minlength=batch)
    starts = torch.cumsum(counts, 0) - counts
    if cfg.max_detections is not None:
        rank = torch.arange(len(kept), device=device) - starts[kept_image]
        kept = kept[rank < cfg.max_detections]
        counts = counts.clamp(max=cfg.max_detections)
    counts = counts.tolist()

    out_boxes = cand_boxes[kept].cpu().numpy()
    out_scores = cand_scores[kept].cpu().numpy()
    out_labels = (class_idx[kept] + 1).cpu().numpy()
    results, start = [], 0
    for count in counts:
        end = start + count
        results.append(Detections(out_boxes[start:end], out_scores[start:end], out_labels[start:end]))
        start = end
    return results


def detect(
    loc: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    model_cfg: ModelConfig,
    cfg: PostprocessConfig | None = None,
    priors_cxcywh: torch.Tensor | None = None,
) -> list[Detections]:
    """``postprocess`` with everything the network of ``model_cfg`` fixes taken from it (its priors,
    variances, decode clamp and clipping): what every pipeline stage calls. ``cfg=None``: the model's
    default thresholds (``PostprocessConfig.for_model``). ``priors_cxcywh`` may be given to avoid
    regenerating them (they must be ``priors_for(model_cfg)``)."""
    from assd.models.assd import priors_for

    if priors_cxcywh is None:
        priors_cxcywh = priors_for(model_cfg)
    conventions = model_cfg.conventions
    return postprocess(loc, conf, priors_cxcywh, model_cfg.variances, cfg or PostprocessConfig.for_model(model_cfg),
                       decode_clamp=conventions.decode_clamp, clip_before_nms=conventions.clip_before_nms)
