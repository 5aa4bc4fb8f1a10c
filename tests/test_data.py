"""Datasets: VOC and COCO on the real test photos, the synthetic set, data specs and bad input."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from assd.data import (
    SYNTHETIC_CLASSES,
    Annotation,
    collate_detection,
    parse_data_spec,
    parse_voc_sets,
    render_synthetic,
)
from assd.errors import UserError
from assd.models.config import VOC_CLASSES

# ---------------------------------------------------------------- VOC (real photos)

def test_voc_mini_loads_with_difficult_flags(voc_mini_root):
    dataset = parse_data_spec(f"voc:{voc_mini_root}")
    assert dataset.name == "voc" and len(dataset) == 100
    assert dataset.class_names == VOC_CLASSES
    assert dataset.skipped == [] and dataset.dropped_boxes == []
    annotations = [dataset.annotation(i) for i in range(len(dataset))]
    # The XML files hold 273 <object> elements (the data README says 278), 38 of them difficult.
    assert sum(len(a.labels) for a in annotations) == 273
    assert sum(int(a.difficult.sum()) for a in annotations) == 38
    assert {int(label) for a in annotations for label in a.labels} == set(range(1, 21))
    for a in annotations:
        assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
        assert np.all(a.boxes[:, :2] >= 0) and np.all(a.boxes[:, 2] <= a.width) and np.all(a.boxes[:, 3] <= a.height)
        assert np.all(a.boxes[:, 2:] > a.boxes[:, :2])
        assert not a.crowd.any()
    assert dataset.image_ids[0] == "2007_000027"


def test_voc_coordinates_are_zero_based_continuous(voc_mini_root):
    dataset = parse_data_spec(f"voc:{voc_mini_root / 'VOCdevkit'}:2012-trainval")
    first = dataset.annotation(dataset.image_ids.index("2007_000027"))
    # XML: xmin=174 ymin=101 xmax=349 ymax=351 (1-based inclusive) -> (173, 100, 349, 351).
    np.testing.assert_array_equal(first.boxes, [[173, 100, 349, 351]])
    assert (first.width, first.height) == (486, 500)
    image = dataset.load_image(0)
    assert image.dtype == np.uint8 and image.shape == (first.height, first.width, 3)


def test_voc_training_targets_drop_difficult(voc_mini_root):
    dataset = parse_data_spec(f"voc:{voc_mini_root}", input_size=64)
    index = next(i for i in range(len(dataset)) if dataset.annotation(i).difficult.any())
    annotation = dataset.annotation(index)
    image, target = dataset[index]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert len(target["boxes"]) == int((~annotation.difficult).sum())
    assert target["labels"].dtype == torch.int64
    scale = np.array([annotation.width, annotation.height] * 2, dtype=np.float32)
    np.testing.assert_allclose(target["boxes"].numpy(), annotation.boxes[~annotation.difficult] / scale, atol=1e-6)


def test_voc_set_names():
    assert parse_voc_sets("07+12") == [("2007", "trainval"), ("2012", "trainval")]
    assert parse_voc_sets("2007-test") == [("2007", "test")]
    assert parse_voc_sets("12-val+2007") == [("2012", "val"), ("2007", "trainval")]
    with pytest.raises(UserError, match="bad image set 'trainval'"):
        parse_voc_sets("trainval")


def test_voc_missing_year_is_a_user_error(voc_mini_root):
    with pytest.raises(UserError, match="no VOC2007/Annotations.*found: VOC2012"):
        parse_data_spec(f"voc:{voc_mini_root}:07+12")


# ---------------------------------------------------------------- COCO (real photos)

def _coco_spec(root: Path) -> str:
    return f"coco:{root / 'train2017'}:{root / 'annotations' / 'instances_train2017.json'}"


def test_coco128_loads_and_maps_categories(coco128_root):
    dataset = parse_data_spec(_coco_spec(coco128_root))
    assert dataset.name == "coco" and len(dataset) == 128 and dataset.skipped == []
    raw = json.loads(Path(dataset.coco_annotation_file).read_text())
    categories = sorted(raw["categories"], key=lambda c: c["id"])
    assert dataset.coco_category_ids == tuple(c["id"] for c in categories)
    assert dataset.class_names == tuple(c["name"] for c in categories)
    assert dataset.class_names[0] == "person" and len(dataset.class_names) == 80
    # Round trip: every json annotation reappears with the label that maps back to its category id.
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    for ann in raw["annotations"][:200]:
        annotation = dataset.annotation(index_of[ann["image_id"]])
        x, y, w, h = ann["bbox"]
        match = np.all(np.abs(annotation.boxes - np.array([x, y, x + w, y + h], dtype=np.float32)) < 1e-3, axis=1)
        assert match.any()
        assert dataset.coco_category_ids[int(annotation.labels[match][0]) - 1] == ann["category_id"]
    annotations = [dataset.annotation(i) for i in range(len(dataset))]
    assert sum(len(a.labels) for a in annotations) == 939
    assert sum(int(a.crowd.sum()) for a in annotations) == 10


def test_coco128_crowd_boxes_are_not_training_targets(coco128_root):
    dataset = parse_data_spec(_coco_spec(coco128_root), input_size=32)
    crowded = [i for i in range(len(dataset)) if dataset.annotation(i).crowd.any()]
    assert crowded
    for index in crowded:
        annotation = dataset.annotation(index)
        assert np.array_equal(annotation.difficult, annotation.crowd)
        _, target = dataset[index]
        assert len(target["labels"]) == int((~annotation.crowd).sum())


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_varied():
    first, second = parse_data_spec("synthetic:8"), parse_data_spec("synthetic:8")
    assert len(first) == 8 and first.class_names == SYNTHETIC_CLASSES and first.image_ids == list(range(8))
    sizes, counts = set(), set()
    for i in range(8):
        np.testing.assert_array_equal(first.load_image(i), second.load_image(i))
        a, b = first.annotation(i), second.annotation(i)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert 200 <= a.width <= 400 and 200 <= a.height <= 400
        assert first.load_image(i).shape == (a.height, a.width, 3)
        assert 1 <= len(a.labels) <= 4 and set(a.labels.tolist()) <= {1, 2, 3, 4}
        sizes.add((a.width, a.height))
        counts.add(len(a.labels))
    assert len(sizes) > 4 and len(counts) > 1
    assert not np.array_equal(first.load_image(0)[:50, :50], first.load_image(1)[:50, :50])


def test_synthetic_boxes_tightly_enclose_the_drawn_shapes():
    for index in range(12):
        image, annotation, masks = render_synthetic(20240517, index)
        for box, mask in zip(annotation.boxes, masks):
            rows, cols = np.nonzero(mask)
            np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            colours = np.unique(image[mask].reshape(-1, 3), axis=0)
            assert len(colours) == 1  # the shape is drawn in one flat colour, nothing drawn over it
            # ... and in the image, the pixels of that colour span exactly the box.
            rows, cols = np.nonzero(np.all(image == colours[0], axis=-1))
            np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def test_synthetic_validation_split_is_disjoint_and_consistent():
    train, val = parse_data_spec("synthetic:20"), parse_data_spec("synthetic:5:20")
    assert set(train.image_ids).isdisjoint(val.image_ids) and val.image_ids == list(range(20, 25))
    longer = parse_data_spec("synthetic:25")
    np.testing.assert_array_equal(val.load_image(2), longer.load_image(22))
    assert parse_data_spec("synthetic").__len__() == 200


def test_training_batches_collate_and_datasets_pickle():
    dataset = parse_data_spec("synthetic:4", train=True, input_size=96)
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone.load_image(3), dataset.load_image(3))
    images, targets = collate_detection([dataset[i] for i in range(4)])
    assert images.shape == (4, 3, 96, 96) and len(targets) == 4
    for target in targets:
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["boxes"].shape == (len(target["labels"]), 4)
        assert torch.all((target["boxes"] >= 0) & (target["boxes"] <= 1))
        assert torch.all(target["boxes"][:, 2:] > target["boxes"][:, :2])


def test_annotation_defaults_crowd_to_false():
    annotation = Annotation("x", 10, 10, [[0, 0, 5, 5]], [1], [False])
    assert annotation.crowd.tolist() == [False]


# ---------------------------------------------------------------- bad input

def _write_voc(root: Path, objects_per_image: list[list[tuple]], size=(64, 48)) -> Path:
    """A VOC2012 folder with one image per entry; objects are ``(name, xmin, ymin, xmax, ymax)``."""
    year = root / "VOCdevkit" / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    width, height = size
    for i, objects in enumerate(objects_per_image):
        image_id = f"img{i:03d}"
        ids.append(image_id)
        cv2.imwrite(str(year / "JPEGImages" / f"{image_id}.jpg"), np.full((height, width, 3), 90, np.uint8))
        xml_objects = "".join(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for name, x1, y1, x2, y2 in objects)
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{xml_objects}</annotation>")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return year


def test_malformed_xml_is_skipped_and_counted(tmp_path, caplog):
    year = _write_voc(tmp_path, [[("dog", 5, 5, 30, 30)]] * 4)
    (year / "Annotations" / "img002.xml").write_text("<annotation><size><width>64</wid")
    with caplog.at_level(logging.WARNING, logger="assd.data"):
        dataset = parse_data_spec(f"voc:{tmp_path}")
    assert len(dataset) == 3 and "img002" not in dataset.image_ids
    assert len(dataset.skipped) == 1
    file, reason = dataset.skipped[0]
    assert file.endswith("img002.xml") and "malformed XML" in reason
    assert "skipped 1 of 4 images" in caplog.text


def test_mostly_broken_set_is_fatal_and_names_the_problem(tmp_path):
    _write_voc(tmp_path, [[("dragon", 5, 5, 30, 30)]] * 3 + [[("dog", 5, 5, 30, 30)]])
    with pytest.raises(UserError, match=r"3 of 4 samples are unusable.*img000\.xml: object 0: unknown class 'dragon'"):
        parse_data_spec(f"voc:{tmp_path}")


def test_boxes_outside_the_image_are_clipped_or_dropped(tmp_path):
    _write_voc(tmp_path, [[("dog", 5, 5, 70, 30), ("cat", 100, 100, 120, 120)], [("cow", 1, 1, 10, 10)]])
    dataset = parse_data_spec(f"voc:{tmp_path}")
    np.testing.assert_array_equal(dataset.annotation(0).boxes, [[4, 4, 64, 30]])  # clipped to the 64 px width
    assert len(dataset.dropped_boxes) == 1
    assert dataset.dropped_boxes[0][0].endswith("img000.xml") and "no area" in dataset.dropped_boxes[0][1]


def test_inverted_box_makes_the_sample_unusable(tmp_path):
    _write_voc(tmp_path, [[("dog", 30, 5, 10, 30)]] + [[("dog", 5, 5, 30, 30)]] * 3)
    dataset = parse_data_spec(f"voc:{tmp_path}")
    assert len(dataset) == 3 and "invalid box" in dataset.skipped[0][1]


def test_corrupt_image_raises_for_eval_and_is_skipped_in_training(tmp_path):
    year = _write_voc(tmp_path, [[("dog", 5, 5, 30, 30)]] * 3)
    corrupt = year / "JPEGImages" / "img001.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    dataset = parse_data_spec(f"voc:{tmp_path}")
    with pytest.raises(UserError, match=r"img001\.jpg: corrupt image file"):
        dataset.load_image(1)
    with pytest.raises(UserError, match=r"img001\.jpg"):
        dataset.__getitem__(1)
    training = parse_data_spec(f"voc:{tmp_path}", train=True, input_size=32)
    image, _target = training[1]  # served from the next sample instead
    assert image.shape == (3, 32, 32)
    assert [file for file, _ in training.skipped] == [str(corrupt)]


def test_malformed_coco_json_names_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    broken = tmp_path / "instances.json"
    broken.write_text('{"images": [')
    with pytest.raises(UserError, match=r"instances\.json: not a valid COCO instances json"):
        parse_data_spec(f"coco:{tmp_path / 'images'}:{broken}")


@pytest.mark.parametrize("images, categories, bad", [
    ([{"id": "x"}], [{"id": 1, "name": "a"}], r"images\[0\] has id 'x'"),
    ([{"id": 1, "file_name": "1.jpg"}, {"id": "2", "file_name": "2.jpg"}], [{"id": 1, "name": "a"}],
     r"images\[1\] has id '2'"),
    ([{"id": True}], [{"id": 1, "name": "a"}], r"images\[0\] has id True"),
    ([{"id": 1}], [{"id": 1, "name": "a"}, {"id": "b", "name": "b"}], r"categories\[1\] has id 'b'"),
    ([{"id": 1}], [{"id": 2.0, "name": "a"}], r"categories\[0\] has id 2.0"),
])
def test_coco_ids_must_be_integers(tmp_path, images, categories, bad):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    with pytest.raises(UserError, match=rf"ann\.json: {bad}, not a whole number") as info:
        parse_data_spec(f"coco:{tmp_path / 'images'}:{tmp_path / 'ann.json'}")
    assert "\n" not in str(info.value)


def test_empty_image_file_is_refused_before_decoding(tmp_path):
    from assd.data.images import UnreadableImage, read_rgb_image

    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UnreadableImage, match=r"empty\.jpg: empty file"):
        read_rgb_image(tmp_path / "empty.jpg")


def test_coco_unknown_category_and_missing_image_are_skipped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for image_id in range(1, 5):
        entries.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 40, "height": 30})
        if image_id != 4:
            cv2.imwrite(str(images / f"{image_id}.jpg"), np.zeros((30, 40, 3), np.uint8))
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100},
            {"id": 2, "image_id": 2, "category_id": 99, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100},
            {"id": 3, "image_id": 3, "category_id": 3, "bbox": [35, 2, 10, 10], "iscrowd": 1, "area": 100}]
    (tmp_path / "ann.json").write_text(json.dumps({"images": entries, "annotations": anns, "categories": [
        {"id": 7, "name": "kite"}, {"id": 3, "name": "car"}]}))
    dataset = parse_data_spec(f"coco:{images}:{tmp_path / 'ann.json'}")
    assert dataset.class_names == ("car", "kite") and dataset.coco_category_ids == (3, 7)
    assert dataset.image_ids == [1, 3]
    reasons = dict(dataset.skipped)
    assert "unknown category_id 99" in reasons[str(images / "2.jpg")]
    assert reasons[str(images / "4.jpg")] == "image file missing"
    crowd = dataset.annotation(1)
    np.testing.assert_array_equal(crowd.boxes, [[35, 2, 40, 12]])  # clipped to the 40 px width
    assert crowd.crowd.tolist() == [True] and crowd.labels.tolist() == [1]


@pytest.mark.parametrize("spec, message", [
    ("imagenet:/data", "unknown data kind 'imagenet'"),
    ("coco:only-one-part", "COCO needs an image folder and an annotation json"),
    ("synthetic:many", "N and START must be whole numbers"),
    ("synthetic:0", "N and START must be whole numbers"),
    ("synthetic:99999999999999999999999", "1 <= N <= 1000000000"),
    ("synthetic:5:99999999999999999999999", "START <= 1000000000"),
    ("voc:", "no VOC root folder"),
])
def test_bad_specs_name_the_spec_and_the_accepted_forms(spec, message):
    with pytest.raises(UserError) as info:
        parse_data_spec(spec)
    text = str(info.value)
    assert f"data spec '{spec}'" in text and message in text
    assert "voc:ROOT[:SETS]" in text and "coco:IMAGES_DIR:ANNOTATIONS_JSON" in text and "synthetic[:N[:START]]" in text


def test_missing_voc_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="VOC root folder not found"):
        parse_data_spec(f"voc:{tmp_path / 'nowhere'}")


# ---------------------------------------------------------------- issue 11: one size rule, truncated JPEGs, COCO

def test_the_images_real_size_wins_over_its_annotation_in_eval_and_training(tmp_path, caplog):
    year = _write_voc(tmp_path, [[("dog", 5, 5, 90, 70)], [("cat", 5, 5, 30, 30)]])  # annotated as 64x48
    cv2.imwrite(str(year / "JPEGImages" / "img000.jpg"), np.full((90, 120, 3), 90, np.uint8))  # really 120x90
    evaluation = parse_data_spec(f"voc:{tmp_path}")
    assert evaluation.annotation(0).boxes.tolist() == [[4, 4, 64, 48]]  # clipped to the wrong size ...
    with caplog.at_level(logging.WARNING, logger="assd.data"):
        evaluation.load_image(0)
    np.testing.assert_array_equal(evaluation.annotation(0).boxes, [[4, 4, 90, 70]])  # ... until the image is seen
    assert (evaluation.annotation(0).width, evaluation.annotation(0).height) == (120, 90)
    assert "img000.jpg: image is 120x90 but its annotation says 64x48: using the image's size" in caplog.text
    assert [file for file, _ in evaluation.size_mismatches] == [str(year / "JPEGImages" / "img000.jpg")]
    training = parse_data_spec(f"voc:{tmp_path}", train=True, input_size=32)
    image, target = training[0]  # served, not refused: the same rule as evaluation
    assert image.shape == (3, 32, 32) and training.skipped == [] and len(target["labels"]) == 1
    headers_only = parse_data_spec(f"voc:{tmp_path}")
    headers_only.use_real_image_sizes()  # eval --detections: no image is decoded
    np.testing.assert_array_equal(headers_only.annotation(0).boxes, [[4, 4, 90, 70]])


def test_truncated_jpeg_is_unreadable_in_eval_and_skipped_by_name_in_training(tmp_path):
    year = _write_voc(tmp_path, [[("dog", 5, 5, 30, 30)]] * 3)
    photo = year / "JPEGImages" / "img001.jpg"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    data = photo.read_bytes()
    photo.write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(photo)) is not None  # OpenCV alone decodes it (grey rows, unnamed libjpeg warning)
    dataset = parse_data_spec(f"voc:{tmp_path}")
    with pytest.raises(UserError, match=r"img001\.jpg: corrupt image file: a truncated or malformed JPEG"):
        dataset.load_image(1)
    training = parse_data_spec(f"voc:{tmp_path}", train=True, input_size=32)
    training[1]  # the next sample is served instead
    assert training.skipped[0][0] == str(photo) and "truncated" in training.skipped[0][1]


def test_jpeg_completeness_follows_the_marker_chain():
    from assd.data.images import jpeg_is_complete

    _ok, encoded = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    data = encoded.tobytes()
    assert jpeg_is_complete(data) and jpeg_is_complete(data + b"trailing bytes after EOI")
    assert not any(jpeg_is_complete(data[:cut]) for cut in (4, 100, len(data) // 2, len(data) - 1))


@pytest.mark.parametrize("content, missing", [({}, "images"), ({"images": [], "annotations": []}, "categories"),
                                              ({"images": [], "annotations": [], "categories": {}}, "categories")])
@pytest.mark.parametrize("train", [False, True])
def test_coco_json_without_categories_is_one_line_for_eval_and_training(tmp_path, content, missing, train):
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text(json.dumps(content))
    with pytest.raises(UserError, match=rf"ann\.json: not a (valid )?COCO instances json.*'?{missing}"):
        parse_data_spec(f"coco:{tmp_path / 'images'}:{tmp_path / 'ann.json'}", train=train, input_size=32)
