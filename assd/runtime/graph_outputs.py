"""``infer`` / ``infer_detections`` of the runners that execute an exported ONNX graph by output name.

ONNX Runtime and OpenVINO run the same files: ``loc``/``conf`` outputs, or a ``--with-postprocess`` graph's
padded ``boxes``/``scores``/``classes``/``count``. Each runner supplies ``_run(images, names)`` (the named
outputs as tensors on its device) and ``outputs`` / ``exported_postprocess`` / ``artifact`` from the metadata.
"""

from __future__ import annotations

import torch


class GraphOutputs:
    """Mixin placed before ``Runner`` in a runner's bases."""

    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, S, S] normalized -> loc [B, A, 4], conf [B, A, C] (a raw-outputs graph only)."""
        if self.outputs != "raw":
            self.refuse_raw_outputs()
        loc, conf = self._run(images, ["loc", "conf"])
        return loc, conf

    def infer_detections(self, images: torch.Tensor):
        """images -> ``PaddedDetections`` from the graph's own NMS, or the base class's decode + NMS."""
        from assd.runtime.padded import DETECTION_OUTPUTS, PaddedDetections

        if self.outputs != "detections":
            return super().infer_detections(images)
        boxes, scores, classes, count = self._run(images, list(DETECTION_OUTPUTS))
        return PaddedDetections(boxes, scores, classes, count, self.exported_postprocess, self.artifact)
