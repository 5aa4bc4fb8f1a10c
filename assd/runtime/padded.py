"""Detections computed inside the graph (``assd export --with-postprocess``), back to ``Detections``.

Such an artifact outputs, per image, the detections padded to K = its ``max_detections``:
``boxes [B, K, 4]`` (normalized xyxy), ``scores [B, K]`` (descending, 0 where padded), ``classes [B, K]``
(1..C-1, 0 where padded) and ``count [B]`` (valid rows), computed with the post-processing settings it
was exported with. Those settings can be made stricter afterwards without changing the result: greedy
NMS keeps or drops a box by the higher-scoring boxes only, so dropping the detections at or below a
higher score threshold gives what NMS run at that threshold gives, and the first N of the sorted rows
are what ``max_detections = N`` gives. Any other change (NMS IoU, top-k, a lower threshold, more
detections) needs a new export, and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assd.errors import UserError
from assd.runtime.postprocess import Detections, PostprocessConfig

DETECTION_OUTPUTS = ("boxes", "scores", "classes", "count")


def check_stricter(exported: PostprocessConfig, requested: PostprocessConfig, artifact: str) -> None:
    """UserError unless ``requested`` is ``exported`` made stricter (see the module docstring)."""
    unbounded = float("inf")  # max_detections None: no per-image cap
    fewer = (requested.max_detections or unbounded) <= (exported.max_detections or unbounded)
    if (requested.nms_iou == exported.nms_iou and requested.top_k == exported.top_k
            and requested.score_threshold >= exported.score_threshold and fewer):
        return
    raise UserError(f"{artifact}: its post-processing is part of the graph (score > {exported.score_threshold}, "
                    f"top-k {exported.top_k}, NMS IoU {exported.nms_iou}, {exported.max_detections} detections); "
                    f"asked for score > {requested.score_threshold}, top-k {requested.top_k}, NMS IoU "
                    f"{requested.nms_iou}, {requested.max_detections} detections: only a higher score threshold "
                    "or fewer detections can be applied afterwards: change the options or re-export")


@dataclass
class PaddedDetections:
    """The four outputs of a ``--with-postprocess`` graph for one batch (torch tensors, any device)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    count: torch.Tensor
    postprocess: PostprocessConfig  # the settings the graph was exported with
    artifact: str = "artifact"

    def unpad(self, requested: PostprocessConfig | None = None) -> list[Detections]:
        """Per image its valid rows as ``Detections`` (normalized boxes), filtered to ``requested``."""
        requested = requested or self.postprocess
        check_stricter(self.postprocess, requested, self.artifact)
        boxes, scores = self.boxes.float().cpu().numpy(), self.scores.float().cpu().numpy()
        classes, count = self.classes.cpu().numpy(), self.count.cpu().numpy()
        results = []
        for index in range(len(count)):
            valid = int(count[index])
            dets = Detections(boxes[index, :valid], scores[index, :valid], classes[index, :valid])
            keep = dets.scores > requested.score_threshold
            results.append(dets.select(keep).select(slice(0, requested.max_detections)))
        return results
