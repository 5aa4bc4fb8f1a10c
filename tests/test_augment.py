"""SSD augmentation: boxes follow the pixels, the IoU crop keeps its promise, outputs are normalized."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from assd.data import EvalTransform, SSDAugmentation, parse_data_spec
from assd.models import get_config
from assd.runtime.preprocess import preprocess

MINI = get_config("assd-mini")
MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)


def _painted_image(width=300, height=200):
    """Grey image with a magenta (label 1) and a cyan (label 2) rectangle; their exact pixel boxes."""
    image = np.full((height, width, 3), 120, np.uint8)
    boxes = np.array([[40, 30, 140, 110], [170, 90, 260, 180]], np.float32)
    for (x1, y1, x2, y2), colour in zip(boxes.astype(int), (MAGENTA, CYAN)):
        image[y1:y2, x1:x2] = colour
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    return chw, torch.from_numpy(boxes), torch.tensor([1, 2])


def _colour_bounds(image_hwc: np.ndarray, colour, tolerance: float) -> np.ndarray | None:
    """Tight xyxy box of the pixels within ``tolerance`` of ``colour`` (None when there are none)."""
    close = np.all(np.abs(image_hwc.astype(np.float32) - np.array(colour, np.float32)) <= tolerance, axis=-1)
    rows, cols = np.nonzero(close)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def test_geometric_steps_keep_boxes_on_their_pixels():
    augment = SSDAugmentation(256, MINI.mean, MINI.std, p_photometric=0.0, p_zoom_out=0.5, p_flip=0.5,
                              iou_crop_options=(0.0, 0.3, 0.5, 1.0))
    image, boxes, labels = _painted_image()
    torch.manual_seed(0)
    shapes = set()
    for _ in range(40):
        out_image, out_boxes, out_labels = augment.geometric(image, boxes, labels)
        assert len(out_boxes) >= 1 and len(out_boxes) == len(out_labels)
        shapes.add(tuple(out_image.shape))
        pixels = out_image.permute(1, 2, 0).numpy()
        for box, label in zip(out_boxes.numpy(), out_labels.tolist()):
            bounds = _colour_bounds(pixels, MAGENTA if label == 1 else CYAN, tolerance=0)
            np.testing.assert_allclose(box, bounds, atol=1e-3)
    assert len(shapes) > 10  # crops and zoom-outs actually happened


def test_full_pipeline_boxes_match_pixels_after_resize():
    size = 128
    augment = SSDAugmentation(size, MINI.mean, MINI.std, p_photometric=0.0)
    image, boxes, labels = _painted_image()
    mean, std = np.array(MINI.mean), np.array(MINI.std)
    torch.manual_seed(1)
    for _ in range(25):
        out_image, out_boxes, out_labels = augment(image, boxes, labels)
        assert out_image.shape == (3, size, size) and out_image.dtype == torch.float32
        assert torch.all((out_boxes >= 0) & (out_boxes <= 1))
        pixels = (out_image.permute(1, 2, 0).numpy() * std + mean) * 255
        for box, label in zip(out_boxes.numpy() * size, out_labels.tolist()):
            # Bilinear resizing blends the edges: pixels at least half-way to the colour mark the object.
            bounds = _colour_bounds(pixels, MAGENTA if label == 1 else CYAN, tolerance=127)
            if box[2] - box[0] < 3 or box[3] - box[1] < 3:
                continue  # a sliver left by a crop
            np.testing.assert_allclose(box, bounds, atol=1.5)


@pytest.mark.parametrize("min_iou", [0.5, 0.7, 0.9])
def test_iou_crop_enforces_its_minimum_iou(min_iou):
    """One object; every crop window must overlap it with IoU >= min_iou. The output image is the crop
    window and the output box the object clipped to it, so both areas come from the output alone."""
    augment = SSDAugmentation(64, MINI.mean, MINI.std, p_photometric=0.0, p_zoom_out=0.0, p_flip=0.0,
                              iou_crop_options=(min_iou,))
    image = torch.zeros(3, 200, 300, dtype=torch.uint8)
    box = torch.tensor([[20.0, 15.0, 280.0, 190.0]])  # large enough for a 0.9-IoU crop to be findable
    box_area = 260.0 * 175.0
    torch.manual_seed(2)
    ious = []
    for _ in range(30):
        out_image, out_boxes, _ = augment.geometric(image, box, torch.tensor([1]))
        crop_area = out_image.shape[-1] * out_image.shape[-2]
        assert crop_area < 300 * 200  # a crop happened
        x1, y1, x2, y2 = out_boxes[0].tolist()
        inter = (x2 - x1) * (y2 - y1)
        ious.append(inter / (box_area + crop_area - inter))
    assert min(ious) >= min_iou - 1e-6


def test_without_the_constraint_crops_overlap_less():
    """The control for the test above: with 'any' crop the same object gets IoUs far below 0.5."""
    augment = SSDAugmentation(64, MINI.mean, MINI.std, p_photometric=0.0, p_zoom_out=0.0, p_flip=0.0,
                              iou_crop_options=(0.0,))
    image = torch.zeros(3, 200, 300, dtype=torch.uint8)
    box = torch.tensor([[20.0, 15.0, 280.0, 190.0]])
    torch.manual_seed(2)
    ious = []
    for _ in range(30):
        out_image, out_boxes, _ = augment.geometric(image, box, torch.tensor([1]))
        crop_area = out_image.shape[-1] * out_image.shape[-2]
        x1, y1, x2, y2 = out_boxes[0].tolist()
        inter = (x2 - x1) * (y2 - y1)
        ious.append(inter / (260.0 * 175.0 + crop_area - inter))
    assert min(ious) < 0.5


def test_zoom_out_fills_with_the_mean_colour():
    augment = SSDAugmentation(64, MINI.mean, MINI.std, p_photometric=0.0, p_zoom_out=1.0, p_flip=0.0,
                              iou_crop_options=(1.0,))
    image, boxes, labels = _painted_image()
    torch.manual_seed(3)
    out_image, out_boxes, _ = augment.geometric(image, boxes, labels)
    height, width = out_image.shape[-2:]
    assert 200 <= height <= 800 and 300 <= width <= 1200 and (height, width) != (200, 300)
    mean_colour = [round(255 * m) for m in MINI.mean]
    corners = out_image[:, [0, 0, -1, -1], [0, -1, 0, -1]].T.tolist()
    assert any(corner == mean_colour for corner in corners)
    np.testing.assert_allclose(out_boxes[:, 2] - out_boxes[:, 0], [100, 90])  # zoom-out keeps object sizes


def test_photometric_distortion_changes_colours_not_geometry():
    augment = SSDAugmentation(64, MINI.mean, MINI.std, p_photometric=1.0, p_zoom_out=0.0, p_flip=0.0,
                              iou_crop_options=(1.0,))
    image, boxes, labels = _painted_image()
    torch.manual_seed(4)
    out_image, out_boxes, _ = augment.geometric(image, boxes, labels)
    assert out_image.shape == image.shape and out_image.dtype == torch.uint8
    assert not torch.equal(out_image, image)
    torch.testing.assert_close(out_boxes, boxes)


def test_eval_transform_matches_runtime_preprocess():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(123, 201, 3), dtype=np.uint8)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    out, boxes, _ = EvalTransform(MINI.input_size, MINI.mean, MINI.std)(
        chw, torch.tensor([[0.0, 0.0, 201.0, 61.5]]), torch.tensor([3]))
    expected = preprocess([image], MINI)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 1.0, 0.5]]))


def test_outputs_use_the_configs_mean_and_std():
    config = dataclasses.replace(MINI, mean=(0.5, 0.25, 0.75), std=(0.5, 0.25, 0.125))
    dataset = parse_data_spec("synthetic:2", config=config)
    assert dataset.input_size == MINI.input_size
    image = dataset.load_image(0)
    tensor, _ = dataset[0]
    resized = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                                              size=(MINI.input_size,) * 2, mode="bilinear", align_corners=False)
    expected = (resized[0].permute(1, 2, 0).numpy() / 255 - np.array(config.mean)) / np.array(config.std)
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    training = parse_data_spec("synthetic:2", train=True, config=config)
    assert training[0][0].shape == (3, MINI.input_size, MINI.input_size)
