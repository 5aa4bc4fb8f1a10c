"""Evaluation: VOC AP by hand and against the devkit's logic, COCO against pycocotools, detections
JSON, ``predict_dataset``/``evaluate_model`` and ``assd eval``."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from assd.cli import main
from assd.data import Annotation, parse_data_spec
from assd.errors import UserError
from assd.evaluation import (
    FirstImages,
    evaluate_detections,
    evaluate_model,
    from_coco_results,
    load_coco_results,
    predict_dataset,
    save_coco_results,
    to_coco_results,
)
from assd.evaluation.report import ap_table
from assd.evaluation.voc import voc_average_precisions
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint
from assd.runtime.postprocess import Detections, PostprocessConfig


@dataclass
class HandMadeDataset:
    """The dataset contract, with annotations given in the test (no image files)."""

    class_names: tuple
    annotations: list
    name: str = "hand"
    source: str = "hand-made"
    coco_category_ids: tuple | None = None
    coco_annotation_file: str | None = None

    def __len__(self):
        return len(self.annotations)

    @property
    def image_ids(self):
        return [a.image_id for a in self.annotations]

    def annotation(self, index):
        return self.annotations[index]

    def load_image(self, index):
        a = self.annotations[index]
        return np.full((a.height, a.width, 3), 100 + 20 * index, np.uint8)


def dets(*rows) -> Detections:
    """Detections from rows (x1, y1, x2, y2, score, label)."""
    array = np.array(rows, np.float64).reshape(-1, 6)
    return Detections(array[:, :4], array[:, 4], array[:, 5].astype(np.int64))


def ground_truth_as_detections(dataset) -> list[Detections]:
    out = []
    for i in range(len(dataset)):
        a = dataset.annotation(i)
        keep = ~a.crowd
        out.append(Detections(a.boxes[keep], np.ones(int(keep.sum())), a.labels[keep]))
    return out


# ---------------------------------------------------------------- VOC, by hand

def hand_example():
    # image "a": cat1 (0,0,10,10); cat2 (20,20,30,30) difficult; dog (30,30,50,50)
    # image "b": cat3 (0,0,10,10); cat4 (50,50,60,60).  "bird" has no ground truth anywhere.
    annotations = [
        Annotation("a", 100, 100, [[0, 0, 10, 10], [20, 20, 30, 30], [30, 30, 50, 50]], [1, 1, 2], [0, 1, 0]),
        Annotation("b", 100, 100, [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [0, 0]),
    ]
    detections = [
        dets((0, 0, 10, 10, 0.9, 1),      # d1 cat on cat1: TP
             (0, 0, 10, 10, 0.8, 1),      # d2 cat on cat1 again: duplicate -> FP
             (20, 20, 30, 30, 0.7, 1),    # d3 cat on the difficult cat2: ignored
             (30, 30, 50, 50, 0.95, 2),   # dog on the dog: TP
             (0, 0, 50, 50, 0.5, 3)),     # bird: no bird ground truth anywhere -> class not scored
        dets((50, 50, 60, 60, 0.6, 1),    # d4 cat4: TP
             (100, 100, 110, 110, 0.5, 1),  # d5 nothing there: FP
             (0, 0, 10, 9, 0.4, 1),       # d6 IoU 90/100 = 0.9 with cat3: TP
             (0, 0, 10, 4, 0.3, 1),       # d7 IoU 40/100 = 0.4 <= 0.5: FP
             (0, 0, 20, 20, 0.2, 2)),     # dog FP after the dog TP (recall already 1)
    ]
    return HandMadeDataset(("cat", "dog", "bird"), annotations), detections


def test_hand_computed_voc_example():
    dataset, detections = hand_example()
    # cat, ranked, d3 ignored: d1 TP, d2 FP, d4 TP, d5 FP, d6 TP, d7 FP; 3 non-difficult cats.
    #   recall    1/3, 1/3, 2/3, 2/3, 1,   1
    #   precision 1,   1/2, 2/3, 1/2, 3/5, 1/2
    # VOC07 (11 points): t = 0..0.3 -> max precision 1 (4 points); t = 0.4..0.6 -> 2/3 (3 points);
    #   t = 0.7..1.0 -> 3/5 (4 points): AP = (4 + 2 + 2.4) / 11 = 8.4 / 11.
    # VOC12 (all points): envelope 1 on recall (0, 1/3], 2/3 on (1/3, 2/3], 3/5 on (2/3, 1]:
    #   AP = 1/3 + 2/9 + 1/5 = 34/45.
    # dog: TP at rank 1 with recall 1 -> AP 1 for both metrics. bird: no ground truth -> not scored.
    voc07 = evaluate_detections(detections, dataset, "voc07")
    voc12 = evaluate_detections(detections, dataset, "voc12")
    assert set(voc07.per_class) == {"cat", "dog"}
    assert voc07.per_class["cat"] == pytest.approx(8.4 / 11, abs=1e-12)
    assert voc12.per_class["cat"] == pytest.approx(34 / 45, abs=1e-12)
    assert voc07.per_class["dog"] == voc12.per_class["dog"] == pytest.approx(1.0)
    assert voc07.mAP == pytest.approx((8.4 / 11 + 1) / 2)
    assert voc12.mAP == pytest.approx((34 / 45 + 1) / 2)
    assert voc07.to_dict()["metric"] == "voc07" and voc07.to_dict()["num_images"] == 2


def devkit_voc_ap(rec, prec, use_07_metric):
    """``voc_ap`` of the official devkit's ``voc_eval.py``, transcribed."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(gt_by_image, det_list, use_07_metric, ovthresh=0.5):
    """The class loop of the official ``voc_eval.py``, transcribed: integer 1-based inclusive boxes, +1 IoU.

    ``gt_by_image``: {image: (boxes [m, 4], difficult [m])} of one class; ``det_list``: (image, score, box).
    """
    class_recs = {image: {"bbox": b, "difficult": d, "det": [False] * len(b)} for image, (b, d) in gt_by_image.items()}
    npos = sum(int(np.sum(~d)) for _, d in gt_by_image.values())
    confidence = np.array([score for _, score, _ in det_list])
    BB = np.array([box for _, _, box in det_list], float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [det_list[x][0] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :]
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric)


def test_agrees_with_the_official_devkit_logic():
    rng = np.random.default_rng(0)
    num_images, num_classes = 40, 4
    annotations, detections, devkit_gt, devkit_dets = [], [], {}, {}
    for image in range(num_images):
        count = rng.integers(0, 6)
        top_left = rng.integers(1, 150, size=(count, 2))
        gt_boxes = np.concatenate([top_left, top_left + rng.integers(5, 80, size=(count, 2))], 1)  # inclusive, 1-based
        gt_labels = rng.integers(1, num_classes, size=count)
        difficult = rng.random(count) < 0.2
        # Near copies of the ground truth (TPs, duplicates, misses) and random boxes (FPs).
        source = np.concatenate([gt_boxes, gt_boxes[: count // 2]]) if count else np.zeros((0, 4), int)
        jittered = source + rng.integers(-8, 9, size=source.shape)
        top_left = rng.integers(1, 150, size=(4, 2))
        random_boxes = np.concatenate([top_left, top_left + rng.integers(5, 80, size=(4, 2))], 1)
        det_boxes = np.concatenate([jittered, random_boxes])
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = np.concatenate([np.concatenate([gt_labels, gt_labels[: count // 2]]),
                                     rng.integers(1, num_classes, size=4)])
        if len(det_labels):
            det_labels[rng.random(len(det_labels)) < 0.1] = rng.integers(1, num_classes)  # some wrong classes
        scores = rng.random(len(det_boxes))
        # ours: continuous 0-based coordinates (x1 = xmin - 1, x2 = xmax), as assd.data gives them
        to_continuous = np.array([-1, -1, 0, 0])
        annotations.append(Annotation(image, 300, 300, gt_boxes + to_continuous, gt_labels, difficult))
        detections.append(Detections(det_boxes + to_continuous, scores, det_labels))
        for label in range(1, num_classes):
            devkit_gt.setdefault(label, {})[image] = (gt_boxes[gt_labels == label], difficult[gt_labels == label])
            devkit_dets.setdefault(label, []).extend(
                (image, s, b) for s, b in zip(scores[det_labels == label], det_boxes[det_labels == label]))
    for use_07 in (True, False):
        ours = voc_average_precisions(detections, annotations, num_classes, use_07_metric=use_07)
        for label in range(1, num_classes):
            expected = devkit_voc_eval(devkit_gt[label], devkit_dets[label], use_07)
            assert ours[label] == pytest.approx(expected, abs=1e-4)
            assert 0.05 < ours[label] < 0.95  # a case where matching details matter


# ---------------------------------------------------------------- COCO, against pycocotools

def pycocotools_stats(annotation_file, records, image_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(records), "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_coco_equals_pycocotools_with_category_ids_mapped_back(tmp_path):
    # Category ids 3 and 7 (not contiguous) <-> labels 1 and 2.
    coco_json = {
        "images": [{"id": 11, "width": 200, "height": 200, "file_name": "a.jpg"},
                   {"id": 12, "width": 200, "height": 200, "file_name": "b.jpg"}],
        "categories": [{"id": 3, "name": "cup"}, {"id": 7, "name": "fork"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 1800, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [100, 100, 30, 90], "area": 2500, "iscrowd": 0},
            {"id": 3, "image_id": 12, "category_id": 3, "bbox": [0, 0, 150, 150], "area": 20000, "iscrowd": 0},
            {"id": 4, "image_id": 12, "category_id": 7, "bbox": [5, 5, 12, 12], "area": 144, "iscrowd": 0}],
    }
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(coco_json))
    annotations = [Annotation(11, 200, 200, [[10, 10, 60, 50], [100, 100, 130, 190]], [1, 2], [0, 0]),
                   Annotation(12, 200, 200, [[0, 0, 150, 150], [5, 5, 17, 17]], [1, 2], [0, 0])]
    dataset = HandMadeDataset(("cup", "fork"), annotations, coco_category_ids=(3, 7),
                              coco_annotation_file=str(annotation_file))
    detections = [dets((12, 9, 61, 52, 0.9, 1), (98, 105, 131, 185, 0.8, 2), (0, 0, 40, 40, 0.7, 1)),
                  dets((10, 5, 150, 148, 0.6, 1), (4, 6, 16, 18, 0.5, 2), (5, 5, 17, 17, 0.4, 1))]
    ours = evaluate_detections(detections, dataset, "coco")
    records = [{"image_id": image_id, "category_id": {1: 3, 2: 7}[int(label)],
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
               for image_id, d in zip((11, 12), detections) for b, s, label in zip(d.boxes, d.scores, d.labels)]
    reference = pycocotools_stats(annotation_file, records, [11, 12])
    assert ours.mAP == pytest.approx(reference.stats[0], abs=1e-12)
    for key, value in zip(("AP50", "AP75", "APs", "APm", "APl"), reference.stats[1:6]):
        assert ours.extra[key] == pytest.approx(value, abs=1e-12)
    precision = reference.eval["precision"][:, :, :, 0, -1]
    assert ours.per_class["cup"] == pytest.approx(precision[:, :, 0].mean())
    assert ours.per_class["fork"] == pytest.approx(precision[:, :, 1].mean())
    assert 0.1 < ours.mAP < 0.9
    assert "Average Precision" in ours.summary


def test_coco_metric_on_voc_style_data_ignores_difficult():
    dataset, _ = hand_example()
    result = evaluate_detections(ground_truth_as_detections(dataset), dataset, "coco")
    assert result.mAP == pytest.approx(1.0)  # the detection on the difficult cat is ignored, not FP


# ---------------------------------------------------------------- real data

def test_voc_mini_ground_truth_gives_map_one(voc_mini_root):
    dataset = parse_data_spec(f"voc:{voc_mini_root}")
    detections = ground_truth_as_detections(dataset)
    for metric in ("voc07", "voc12"):
        result = evaluate_detections(detections, dataset, metric)
        assert result.mAP == pytest.approx(1.0, abs=1e-12) and len(result.per_class) == 20
        assert 0.0 <= result.mAP <= 1.0


def test_coco128_ground_truth_matches_pycocotools(coco128_root):
    dataset = parse_data_spec(f"coco:{coco128_root / 'train2017'}:{coco128_root / 'annotations/instances_train2017.json'}")
    detections = ground_truth_as_detections(dataset)
    ours = evaluate_detections(detections, dataset)  # default metric for COCO data: coco
    assert ours.metric == "coco" and ours.mAP >= 0.99
    records = to_coco_results(detections, dataset)
    reference = pycocotools_stats(dataset.coco_annotation_file, records, dataset.image_ids)
    assert ours.mAP == pytest.approx(reference.stats[0], abs=1e-12)
    assert ours.extra["AP50"] == pytest.approx(reference.stats[1], abs=1e-12)
    assert len(ours.per_class) == 71


# ---------------------------------------------------------------- detections JSON

def test_results_json_round_trip(tmp_path):
    dataset, detections = hand_example()
    path = tmp_path / "dets.json"
    save_coco_results(path, detections, dataset)
    records = json.loads(path.read_text())
    assert records[0] == {"image_id": "a", "category_id": "cat", "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9}
    loaded = load_coco_results(path, dataset)
    for a, b in zip(detections, loaded, strict=True):
        order = np.argsort(-a.scores, kind="stable")
        np.testing.assert_array_equal(a.boxes[order], b.boxes)
        np.testing.assert_array_equal(a.labels[order], b.labels)
    assert evaluate_detections(loaded, dataset, "voc12").mAP == evaluate_detections(detections, dataset, "voc12").mAP


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"image_id": "zzz", "category_id": "cat", "bbox": [0, 0, 1, 1], "score": 0.5}]', "image_id 'zzz' is not in"),
    ('[{"image_id": "a", "category_id": "horse", "bbox": [0, 0, 1, 1], "score": 0.5}]', "category_id 'horse'"),
    ('[{"image_id": "a", "category_id": "cat", "bbox": [0, 0, 1], "score": 0.5}]', "not \\[x, y, w, h\\]"),
    ('[{"image_id": "a", "category_id": "cat", "bbox": [0, 0, 1, 1], "score": "high"}]', "not a finite number"),
])
def test_bad_detection_files_are_one_line_user_errors(tmp_path, content, message):
    dataset, _ = hand_example()
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        load_coco_results(path, dataset)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_predict_output_format_is_accepted():
    dataset, _ = hand_example()
    document = {"postprocess": {}, "detections": [
        {"file_name": "x/a.jpg", "image_id": "a", "category_id": "dog", "label": 2, "bbox": [30, 30, 20, 20],
         "score": 0.9}]}
    loaded = from_coco_results(document, dataset)
    assert [len(d) for d in loaded] == [1, 0]


# ---------------------------------------------------------------- running a model

def test_predict_dataset_accepts_numpy_outputs_and_restores_train_mode():
    cfg = get_config("assd-mini", class_names=("cat", "dog", "bird"))
    model = build_model(cfg).train()
    dataset = FirstImages(hand_example()[0], 2)
    pp_cfg = PostprocessConfig(score_threshold=0.05, max_detections=20)
    model.eval()
    with torch.no_grad():
        from_torch = predict_dataset(model, dataset, cfg, pp_cfg, batch_size=2)
        from_numpy = predict_dataset(lambda x: tuple(t.numpy() for t in model(x)), dataset, cfg, pp_cfg,
                                     batch_size=1)
    for a, b in zip(from_torch, from_numpy, strict=True):
        assert 0 < len(a) <= 20
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        assert a.boxes[:, 2].max() <= 100 and a.boxes.min() >= 0  # pixels of the 100x100 images
    model.train()
    result = evaluate_model(model, dataset, "voc12", batch_size=2, postprocess_cfg=pp_cfg)
    assert model.training  # restored
    assert result.postprocess == pp_cfg.to_dict() and result.num_images == 2
    assert 0.0 <= result.mAP <= 1.0


def test_evaluate_model_refuses_other_classes():
    model = build_model(get_config("assd-mini", class_names=("cat", "horse", "bird")))
    with pytest.raises(UserError, match="cat, horse, bird.*cat, dog, bird"):
        evaluate_model(model, hand_example()[0])


def test_ap_table_has_a_column_per_class():
    dataset, detections = hand_example()
    table = ap_table(evaluate_detections(detections, dataset, "voc12"), dataset.class_names)
    header, values = table.splitlines()
    assert header.split() == ["mAP", "cat", "dog", "bird"]
    assert values.split() == [f"{100 * (34 / 45 + 1) / 2:.1f}", "75.6", "100.0", "-"]


# ---------------------------------------------------------------- assd eval

def run_cli(*args, capsys):
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_assd_eval_model_end_to_end(tmp_path, voc_mini_root, capsys):
    torch.manual_seed(0)
    save_checkpoint(build_model("assd-mini"), tmp_path / "mini.pt")
    out = tmp_path / "eval.json"
    code, stdout, stderr = run_cli("eval", "--model", str(tmp_path / "mini.pt"), "--data", f"voc:{voc_mini_root}",
                                   "--limit", "3", "--metric", "voc12", "--device", "cpu", "--json", str(out),
                                   capsys=capsys)
    assert code == 0, stderr
    record = json.loads(out.read_text())
    assert record["metric"] == "voc12" and record["num_images"] == 3 and 0.0 <= record["mAP"] <= 1.0
    assert record["postprocess"] == PostprocessConfig().to_dict()
    assert record["model"] == str(tmp_path / "mini.pt") and record["data"] == f"voc:{voc_mini_root}"
    assert set(record["per_class"]) <= set(get_config("assd-mini").class_names) and record["per_class"]
    assert "mAP (voc12, 3 images)" in stdout and "aeroplane" in stdout


def test_assd_eval_detections_and_errors(tmp_path, voc_mini_root, capsys):
    dataset = FirstImages(parse_data_spec(f"voc:{voc_mini_root}"), 5)
    save_coco_results(tmp_path / "gt.json", ground_truth_as_detections(dataset), dataset)
    out = tmp_path / "eval.json"
    code, stdout, stderr = run_cli("eval", "--detections", str(tmp_path / "gt.json"), "--data",
                                   f"voc:{voc_mini_root}", "--limit", "5", "--json", str(out), capsys=capsys)
    assert code == 0, stderr
    assert "mAP (voc07, 5 images): 1.0000" in stdout
    assert json.loads(out.read_text())["mAP"] == 1.0 and json.loads(out.read_text())["metric"] == "voc07"

    save_checkpoint(build_model(get_config("assd-mini", class_names=("a", "b"))), tmp_path / "ab.pt")
    code, _, stderr = run_cli("eval", "--model", str(tmp_path / "ab.pt"), "--data", f"voc:{voc_mini_root}",
                              capsys=capsys)
    assert code == 2 and stderr.startswith("error: ") and "2 classes (a, b)" in stderr and "aeroplane" in stderr
    assert len(stderr.strip().splitlines()) == 1

    (tmp_path / "bad.json").write_text("[1, 2")
    code, _, stderr = run_cli("eval", "--detections", str(tmp_path / "bad.json"), "--data", f"voc:{voc_mini_root}",
                              capsys=capsys)
    assert code == 2 and "not valid JSON" in stderr and len(stderr.strip().splitlines()) == 1
