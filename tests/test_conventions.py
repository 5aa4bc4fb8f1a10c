"""Reference conventions (ModelConfig.conventions): config round trip, defaults unchanged, priors against
torchvision's DefaultBoxGenerator and the ASSD authors' formula, network switches, pre-processing,
post-processing, the --with-postprocess graph, FP16 and COCO label ids in evaluation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from assd.export import export_onnx
from assd.export.fp16 import tensor_types, write_fp16_onnx
from assd.models import PRESETS, build_model, get_config, priors_for
from assd.models.assd import ASSD, L2Norm, feature_sizes
from assd.models.box_coding import cxcywh_to_xyxy
from assd.models.config import Conventions, ModelConfig
from assd.models.fusion import SemanticFusion
from assd.models.presets import coco_91_class_names
from assd.runtime.postprocess import MAX_NMS_CANDIDATES, Detections, PostprocessConfig, detect, postprocess
from assd.runtime.preprocess import preprocess

AUTHORS_STEPS = (8, 16, 31, 57, 103, 171, 513)


def with_conventions(cfg: ModelConfig, **changes) -> ModelConfig:
    return dataclasses.replace(cfg, conventions=dataclasses.replace(cfg.conventions, **changes))


def test_conventions_round_trip_and_old_configs_get_todays_defaults():
    cfg = get_config("ssd300-coco")
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_json(get_config("assd513-authors").to_json()) == get_config("assd513-authors")
    old = get_config("assd-mini").to_dict()
    del old["conventions"]  # a checkpoint / ONNX file written before the field existed
    assert ModelConfig.from_dict(old).conventions == Conventions()
    with pytest.raises(ValueError, match="unknown convention fields"):
        ModelConfig.from_dict({**old, "conventions": {"pixel_order": "yx"}})
    with pytest.raises(ValueError, match="prior steps"):
        with_conventions(get_config("assd-mini"), prior_steps=(8, 16))
    with pytest.raises(ValueError, match="channel_order"):
        Conventions(channel_order="yuv")


def test_existing_presets_keep_todays_behaviour():
    for name in ["assd321", "assd513", "assd300", "assd512", "ssd321", "ssd513", "ssd513-fusion", "ssd513-att",
                 "assd-mini"]:
        assert get_config(name).conventions == Conventions()
    model = build_model(get_config("assd-mini"))
    assert model.l2norm is None and isinstance(model.extras[0][1], torch.nn.BatchNorm2d)
    assert model.fusion.align_corners is False
    assert PostprocessConfig.for_model(get_config("assd-mini")) == PostprocessConfig()


def test_conversion_presets_have_their_references_parameter_counts():
    from torchvision.models.detection import SSD300_VGG16_Weights

    with torch.device("meta"):
        ssd300, authors = ASSD(get_config("ssd300-coco")), ASSD(get_config("assd513-authors"))
    assert sum(p.numel() for p in ssd300.parameters()) == SSD300_VGG16_Weights.COCO_V1.meta["num_params"]
    assert sum(p.numel() for p in authors.parameters()) == 67_546_820  # assd513's: the same network
    assert get_config("ssd300-coco").class_names[:3] == ("person", "bicycle", "car")
    assert get_config("ssd300-coco", num_classes=21).conventions.label_ids is None


def test_ssd300_coco_priors_equal_torchvision_default_boxes():
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList

    cfg = get_config("ssd300-coco")
    generator = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                    scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    maps = [torch.zeros(1, 1, h, w) for h, w in feature_sizes(cfg)]
    anchors_xyxy = generator(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), maps)[0]  # pixels
    torch.testing.assert_close(cxcywh_to_xyxy(priors_for(cfg)) * 300, anchors_xyxy, atol=2e-4, rtol=0)
    assert priors_for(cfg)[:, 2:].max() == 1.0  # widths/heights clamped, centres not


def authors_priors_cycxhw() -> torch.Tensor:
    """priorbox.py of github yijingru/ASSD-Pytorch, written out: [cy, cx, h, w] per prior, unclipped."""
    sizes, min_sizes = (65, 33, 17, 9, 5, 3, 1), (20.52, 51.3, 133.38, 215.46, 297.54, 379.62, 461.7)
    max_sizes = (51.3, 133.38, 215.46, 297.54, 379.62, 461.7, 543.78)
    ratios = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
    coords = []
    for k, size in enumerate(sizes):
        f_k = 513 / AUTHORS_STEPS[k]
        for i in range(size):
            for j in range(size):
                cy, cx, s = (i + 0.5) / f_k, (j + 0.5) / f_k, min_sizes[k] / 513
                s_prime = math.sqrt(s * max_sizes[k] / 513)
                coords += [[cy, cx, s, s], [cy, cx, s_prime, s_prime]]
                for ratio in ratios[k]:
                    coords += [[cy, cx, s / math.sqrt(ratio), s * math.sqrt(ratio)],
                               [cy, cx, s * math.sqrt(ratio), s / math.sqrt(ratio)]]
    return torch.tensor(coords)


def test_assd513_authors_priors_equal_the_authors_formula():
    expected = authors_priors_cycxhw()[:, [1, 0, 3, 2]]  # their (y, x) order -> ours
    priors = priors_for(get_config("assd513-authors"))
    assert priors.shape == expected.shape == (25_844, 4)
    torch.testing.assert_close(priors, expected, atol=1e-6, rtol=0)
    assert priors[:, :2].max() > 1.0 and cxcywh_to_xyxy(priors).min() < 0  # steps pass the edge; unclipped


def test_l2norm_equals_torchvision_scale_weight_times_normalize():
    x = torch.randn(2, 8, 5, 5) * 50
    layer = L2Norm(8)
    torch.testing.assert_close(layer(x), 20.0 * F.normalize(x), rtol=0, atol=0)
    assert layer.weight.shape == (8,)


def test_fusion_upsampling_follows_align_corners():
    torch.manual_seed(0)
    fusion = SemanticFusion((4, 6, 8), reduced=3, align_corners=True).eval()
    maps = [torch.randn(1, 4, 9, 9), torch.randn(1, 6, 5, 5), torch.randn(1, 8, 3, 3)]
    reduced = [fusion.reduce[0](maps[0])] + [
        F.interpolate(conv(x), size=(9, 9), mode="bilinear", align_corners=True)  # = F.upsample_bilinear
        for conv, x in zip(fusion.reduce[1:], maps[1:])]
    expected = F.relu(fusion.project(fusion.bn(torch.cat(reduced, dim=1))))
    torch.testing.assert_close(fusion(maps), expected)
    fusion.align_corners = False
    assert not torch.allclose(fusion(maps), expected)


def test_extras_without_batchnorm_and_l2norm_state_dict():
    cfg = with_conventions(get_config("assd-mini"), l2norm=True, extras_batchnorm=False)
    model = ASSD(cfg)
    keys = set(model.state_dict())
    assert "l2norm.weight" in keys and not any(k.startswith("extras.") and "running_mean" in k for k in keys)
    assert [type(m).__name__ for m in model.extras[0]] == ["Conv2d", "ReLU", "Conv2d", "ReLU"]


def test_preprocess_bgr_reverses_channels_before_mean_std():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    cfg = get_config("assd-mini")
    bgr_cfg = with_conventions(cfg, channel_order="bgr")
    ours = preprocess([rgb], bgr_cfg)
    expected = preprocess([rgb[..., ::-1].copy()], cfg)  # the authors: cv2's BGR array, same mean/std
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_assd513_authors_preprocess_equals_the_authors_cv2_pipeline():
    import cv2

    cfg = get_config("assd513-authors")
    rgb = np.random.default_rng(2).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    # transforms.py of github yijingru/ASSD-Pytorch (test phase): cv2's BGR image, ConvertFromInts,
    # Resize (cv2.resize of the float image), SubtractMeans (/255, RGB ImageNet mean/std on B, G, R).
    bgr = cv2.resize(rgb[..., ::-1].astype(np.float32), (513, 513)) / 255
    theirs = (bgr - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    ours = preprocess([rgb], cfg)[0].permute(1, 2, 0).numpy()
    # cv2's and torch's half-pixel bilinear differ by float rounding only (<= 0.01 on 0..255 pixels).
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=0)


def test_training_transform_honours_the_channel_order(tmp_path):
    from assd.data import parse_data_spec

    cfg = with_conventions(get_config("assd-mini"), channel_order="bgr")
    dataset = parse_data_spec("synthetic:2", config=cfg)
    image, _ = dataset[0]
    torch.testing.assert_close(image[None], preprocess([dataset.load_image(0)], cfg), atol=1e-5, rtol=0)


def test_ssd300_coco_preprocess_equals_torchvision_transform():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    cfg = get_config("ssd300-coco")
    rgb = np.random.default_rng(1).integers(0, 256, (230, 410, 3), dtype=np.uint8)
    transform = GeneralizedRCNNTransform(300, 300, list(cfg.mean), list(cfg.std), size_divisible=1,
                                         fixed_size=(300, 300)).eval()
    theirs = transform([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0].tensors
    ours = preprocess([rgb], cfg)
    # They normalize, then resize; we resize, then normalize: both linear, equal up to float rounding.
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=0)


def test_decode_clamp_and_clip_before_nms():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    loc = torch.tensor([[[0.0, 0.0, 100.0, 100.0], [6.0, 6.0, 0.0, 0.0]]])  # exp(20) wide; shifted past the edge
    conf = torch.tensor([[[0.0, 5.0], [0.0, 4.0]]])
    plain = postprocess(loc, conf, priors, (0.1, 0.2))[0]
    assert plain.boxes.max() > 1e6
    clamped = postprocess(loc, conf, priors, (0.1, 0.2), decode_clamp=math.log(1000 / 16), clip_before_nms=True)[0]
    np.testing.assert_allclose(clamped.boxes, [[0, 0, 1, 1], [0.91, 0.91, 1, 1]], atol=1e-6)
    cfg = with_conventions(get_config("assd-mini"), decode_clamp=math.log(1000 / 16))
    width = detect(loc, conf, cfg, PostprocessConfig(), priors)[0].boxes[0]
    np.testing.assert_allclose(width[2] - width[0], 0.2 * 1000 / 16, rtol=1e-5)


def test_no_per_image_cap_keeps_top_k_per_class():
    generator = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.arange(25) / 25, torch.arange(20) / 20, indexing="ij"), -1)
    priors = torch.cat([grid.reshape(500, 2), torch.full((500, 2), 0.01)], dim=1)  # 500 disjoint boxes
    loc, conf = torch.zeros(1, 500, 4), torch.randn(1, 500, 4, generator=generator)
    capped = postprocess(loc, conf, priors, (0.1, 0.2), PostprocessConfig(score_threshold=0.0, top_k=100))[0]
    uncapped = postprocess(loc, conf, priors, (0.1, 0.2),
                           PostprocessConfig(score_threshold=0.0, top_k=100, max_detections=None))[0]
    assert len(capped) == 200 and len(uncapped) == 300
    assert PostprocessConfig.for_model(get_config("assd513-authors")).max_detections is None
    assert PostprocessConfig.for_model(get_config("ssd300-coco"), top_k=50).top_k == 50


def count_matches(reference: Detections, candidate: Detections, box_tolerance: float, score_tolerance: float) -> int:
    """Reference detections with a candidate of the same label, score and box (within the tolerances).
    Unlike an IoU match this also pairs the zero-area boxes that clipping to the image can leave."""
    same = ((reference.labels[:, None] == candidate.labels[None, :])
            & (np.abs(reference.scores[:, None] - candidate.scores[None, :]) <= score_tolerance)
            & (np.abs(reference.boxes[:, None] - candidate.boxes[None, :]).max(-1) <= box_tolerance))
    return int(same.any(axis=1).sum())


@pytest.fixture(scope="module")
def conventions_model():
    """assd-mini with every network and output convention switched on, unsaturated scores."""
    cfg = get_config("assd-mini", class_names=["a", "b", "c"])
    cfg = with_conventions(cfg, l2norm=True, extras_batchnorm=False, fusion_align_corners=True,
                           prior_steps=(8, 16, 32, 64, 128, 256), prior_clip="none", decode_clamp=0.5,
                           clip_before_nms=True, top_k=2000, max_detections=None, label_ids=(7, 3, 12))
    torch.manual_seed(3)
    model = build_model(cfg).eval()  # loc ~ N(0, 2.8): a fifth of the sizes hit the clamp, 5% of corners clip
    with torch.no_grad():
        for head in model.conf_heads:
            head.weight.mul_(0.5)
    return model


def test_with_postprocess_graph_honours_the_conventions(conventions_model, tmp_path):
    path = tmp_path / "pp.onnx"
    # Fewer candidates per class than top_k over this threshold: ONNX's NonMaxSuppression (top_k after
    # suppression) and the torch path (top_k before) then keep the same boxes.
    pp = PostprocessConfig.for_model(conventions_model.cfg, score_threshold=0.9)
    export_onnx(conventions_model, path, with_postprocess=True, postprocess=pp.to_dict())
    torch.manual_seed(2)
    images = torch.randn(2, 3, 256, 256)
    boxes, scores, classes, count = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    # No per-image cap: top_k per class, bounded by the NMS candidate cap every backend applies.
    assert boxes.shape == (2, min(2000 * 3, MAX_NMS_CANDIDATES), 4)
    with torch.no_grad():
        expected = detect(*conventions_model(images), conventions_model.cfg, pp)
    assert sum(len(dets) for dets in expected) > 20
    for index, dets in enumerate(expected):
        n = int(count[index])
        assert n == len(dets) and set(classes[index, :n]) <= {7, 3, 12}
        assert dets.boxes.min() >= 0 and dets.boxes.max() <= 1 and (dets.boxes[:, 2] == 1).any()
        graph = Detections(boxes[index, :n], scores[index, :n], classes[index, :n])
        reference = dets.with_label_ids(conventions_model.cfg)
        assert count_matches(reference, graph, box_tolerance=1e-5, score_tolerance=1e-5) == n


def test_fp16_graph_keeps_the_l2_norm_in_fp32(conventions_model, tmp_path):
    # A sum of squares over hundreds of channels overflows float16 (ONNX Runtime's CPU kernels compute
    # it in float32 anyway, so the graph's types are what this checks; TensorRT honours them).
    fp32, fp16 = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    export_onnx(conventions_model, fp32)
    write_fp16_onnx(str(fp32), str(fp16))
    model16 = onnx.load(str(fp16))
    types = tensor_types(model16)
    norms = [node for node in model16.graph.node if node.op_type == "ReduceL2"]
    assert len(norms) == 1 and types[norms[0].input[0]] == types[norms[0].output[0]] == onnx.TensorProto.FLOAT
    images = preprocess([np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)],
                        conventions_model.cfg)
    with torch.no_grad():
        _, conf = conventions_model(images)
    _, conf16 = ort.InferenceSession(str(fp16)).run(None, {"images": images.numpy()})
    np.testing.assert_allclose(conf16, conf.numpy(), atol=0.02 * float(conf.abs().max()))


def test_coco_label_ids_map_a_91_slot_model_onto_a_coco_dataset(coco128_root):
    from assd.data import parse_data_spec
    from assd.evaluation import FirstImages, check_class_names, predict_dataset
    from assd.evaluation.results_json import dataset_label_table

    dataset = FirstImages(parse_data_spec(f"coco:{coco128_root}/train2017:"
                                          f"{coco128_root}/annotations/instances_train2017.json"), 1)
    names = coco_91_class_names()
    cfg = dataclasses.replace(get_config("assd-mini"), num_classes=91, class_names=names,
                              conventions=Conventions(label_ids=tuple(range(1, 91))))
    check_class_names(cfg, dataset, "ssd")
    with pytest.raises(Exception, match="differ"):
        check_class_names(cfg.class_names, dataset, "ssd")
    table = dataset_label_table(cfg, dataset)
    for label, name in enumerate(names, start=1):
        if name == "N/A":
            assert table[label] == 0
        else:
            assert dataset.class_names[table[label] - 1] == name and dataset.coco_category_ids[table[label] - 1] == label
    anchors = len(priors_for(cfg))

    def infer(images):  # every anchor: "N/A" (id 12) first, then "stop sign" (id 13, dataset label 12)
        conf = torch.full((len(images), anchors, 91), -10.0)
        conf[:, :, 12], conf[:, :, 13] = 5.0, 4.0
        return torch.zeros(len(images), anchors, 4), conf

    dets = predict_dataset(infer, dataset, cfg, PostprocessConfig(top_k=1))[0]
    assert dets.labels.tolist() == [12]
    json.dumps(cfg.to_dict())  # label ids travel as plain JSON


def test_every_preset_builds_priors_that_match_its_heads():
    for name in PRESETS:
        cfg = get_config(name)
        sizes = feature_sizes(cfg)
        assert len(priors_for(cfg)) == sum(h * w * n for (h, w), n in zip(sizes, cfg.anchors_per_location))


@pytest.mark.parametrize("changes, message", [
    ({"prior_steps": (0,) * 6}, "prior_steps"), ({"prior_steps": (8, 16, math.inf, 64, 100, 300)}, "prior_steps"),
    ({"decode_clamp": "x"}, "decode_clamp 'x'"), ({"decode_clamp": math.nan}, "decode_clamp nan"),
    ({"prior_offset": None}, "prior_offset None"), ({"label_ids": (1, 2, 2)}, r"distinct.*\[2\]"),
    ({"label_ids": (0, 1)}, r"distinct.*\[0\]"), ({"label_ids": (1, "2")}, r"distinct.*\['2'\]"),
])
def test_conventions_refuse_numbers_no_implementation_uses(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_config("ssd300-coco").conventions, **changes)
    assert dataclasses.replace(get_config("ssd300-coco").conventions, decode_clamp=None).decode_clamp is None


@pytest.mark.parametrize("changes", [{"prior_steps": [0] * 5}, {"decode_clamp": "x"}, {"label_ids": [1, 1]}])
def test_checkpoint_with_bad_conventions_is_one_line_for_the_cli(tmp_path, capsys, changes):
    from assd.cli import main
    from assd.models.checkpoint import save_checkpoint

    path = tmp_path / "ck.pt"
    save_checkpoint(build_model(get_config("assd-mini", num_classes=3)), path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["model_config"]["conventions"].update(changes)
    torch.save(checkpoint, path)
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(path)])
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message.count("\n") == 0 and message.startswith(f"error: {path}: ")
    assert next(iter(changes)) in message
