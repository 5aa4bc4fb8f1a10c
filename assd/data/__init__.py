"""Datasets (PASCAL VOC, COCO, synthetic), their annotations and SSD's training augmentation.

``parse_data_spec("voc:ROOT:07+12", train=True, config=cfg)`` gives a ``DetectionDataset`` whose items
are ``(image [3, S, S], {"boxes": [n, 4] xyxy in 0..1, "labels": [n]})``; ``collate_detection`` batches
them. ``annotation(i)`` and ``load_image(i)`` serve evaluation (pixels, difficult objects flagged).
"""

from assd.data.annotation import Annotation, clip_boxes
from assd.data.coco import coco_dataset
from assd.data.dataset import DetectionDataset, ImageRecord, collate_detection
from assd.data.images import UnreadableImage, image_size, read_rgb_image
from assd.data.spec import SPEC_FORMS, data_spec_inputs, parse_data_spec
from assd.data.synthetic import SYNTHETIC_CLASSES, SyntheticDataset, render_synthetic
from assd.data.transforms import EvalTransform, SSDAugmentation, build_transform, resize_normalize
from assd.data.voc import parse_voc_sets, voc_dataset

__all__ = [
    "SPEC_FORMS",
    "SYNTHETIC_CLASSES",
    "Annotation",
    "DetectionDataset",
    "EvalTransform",
    "ImageRecord",
    "SSDAugmentation",
    "SyntheticDataset",
    "UnreadableImage",
    "build_transform",
    "clip_boxes",
    "coco_dataset",
    "collate_detection",
    "data_spec_inputs",
    "image_size",
    "parse_data_spec",
    "parse_voc_sets",
    "read_rgb_image",
    "render_synthetic",
    "resize_normalize",
    "voc_dataset",
]
