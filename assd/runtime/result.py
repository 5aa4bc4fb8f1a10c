"""``Result``: the detections of one image or video frame, as applications receive them.

What ``assd.Detector`` returns for every artifact kind (checkpoint, ONNX, engine, served model URL) and
every source (images, video files, cameras, network streams): boxes in pixels of the original image,
with the frame's index and capture time for streams, serializable (``to_dict``, ``coco_rows``) and
drawable (``plot``, the drawing ``assd predict`` writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from assd.runtime.drawing import draw_detections
from assd.runtime.postprocess import Detections


@dataclass
class Result:
    """Detections of one image (numpy, on the CPU).

    Attributes:
        boxes: float32 ``[n, 4]`` xyxy in pixels of the original image, clipped to it, by decreasing score.
        scores: float32 ``[n]`` class probabilities.
        labels: int64 ``[n]`` in ``1..C-1`` (``class_names[label - 1]``).
        class_names: the model's class names (without background).
        image_size: ``(width, height)`` of the original image in pixels.
        frame_index: position of the frame in its source (images: their order), counting skipped frames.
        timestamp: capture time in seconds: the position in a video file, the wall clock
            (``time.time()``) when a camera or network frame was read; ``None`` for image files.
        source: the image file, or the video/stream/camera the frame came from.
        image: the original image (RGB uint8 ``[H, W, 3]``) when kept, for ``plot``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]
    image_size: tuple[int, int]
    frame_index: int = 0
    timestamp: float | None = None
    source: str = ""
    image: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_detections(cls, detections: Detections, class_names: Sequence[str], image_size: tuple[int, int],
                        **frame) -> Result:
        """From pixel ``Detections`` (``frame``: ``frame_index``, ``timestamp``, ``source``, ``image``)."""
        return cls(detections.boxes, detections.scores, detections.labels, tuple(class_names),
                   (int(image_size[0]), int(image_size[1])), **frame)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[label - 1] if 1 <= label <= len(self.class_names) else str(label)
                for label in self.labels.tolist()]

    @property
    def detections(self) -> Detections:
        """The detections as ``assd.runtime.postprocess.Detections`` (pixels)."""
        return Detections(self.boxes, self.scores, self.labels)

    def to_dict(self, decimals: int = 2) -> dict:
        """JSON-ready: frame, timestamp, source, image size and per detection its box (xyxy pixels, rounded
        to ``decimals``), score, label and class name (one line of ``assd predict``'s JSON Lines)."""
        rows = [{"box": [round(v, decimals) for v in box], "score": round(score, 5), "label": label, "name": name}
                for box, score, label, name in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(),
                                                   self.names)]
        timestamp = None if self.timestamp is None else round(self.timestamp, 6)
        return {"frame": self.frame_index, "timestamp": timestamp, "source": self.source,
                "image_size": list(self.image_size), "detections": rows}

    def coco_rows(self, image_id, category_ids: Sequence[int] | None = None) -> list[dict]:
        """COCO results rows (``image_id``, ``category_id``, ``bbox`` xywh pixels, ``score``), what
        ``assd eval --detections`` reads; ``category_ids[label - 1]`` maps labels (default: the label)."""
        rows = []
        for (x1, y1, x2, y2), score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            category = int(category_ids[label - 1]) if category_ids is not None else label
            rows.append({"image_id": image_id, "category_id": category,
                         "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                         "score": round(score, 5)})
        return rows

    def plot(self, image: np.ndarray | None = None, rgb: bool = False) -> np.ndarray:
        """An annotated copy of the image (the drawing ``assd predict`` writes): BGR uint8 as OpenCV
        shows and writes it (``rgb=True``: RGB). ``image`` (RGB with ``rgb=True``, else BGR) is needed
        when the result did not keep its image."""
        if image is None:
            if self.image is None:
                raise ValueError("this Result kept no image: pass the image to plot(image)")
            pixels = self.image
        else:
            pixels = image if rgb else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
        drawn = draw_detections(pixels, self.boxes, self.scores, self.labels, self.class_names)
        return drawn if rgb else cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)
