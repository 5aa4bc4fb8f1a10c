"""``assd convert``: torchvision's ssd300_vgg16 and the ASSD authors' checkpoints reproduced exactly,
strict mapping, and one-line errors for foreign, truncated and misdirected files."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from assd.cli import main
from assd.convert import convert_weights
from assd.data import read_rgb_image
from assd.errors import UserError
from assd.export import export_onnx
from assd.models import build_model, get_config, priors_for
from assd.models.box_coding import decode
from assd.models.checkpoint import load_checkpoint, save_checkpoint
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.preprocess import preprocess

PHOTO = "train2017/000000000009.jpg"  # coco128: a dining table with bowls and broccoli


@pytest.fixture(scope="module")
def torchvision_ssd(tmp_path_factory):
    """torchvision's ssd300_vgg16 with seeded random weights, saved as a state_dict. The class head is
    scaled so that scores spread over 0.2..0.8 (unscaled, a random net's softmax saturates near 1)."""
    torch.manual_seed(0)
    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        for conv in model.head.classification_head.module_list:
            conv.weight.mul_(0.3)
    path = tmp_path_factory.mktemp("tv") / "ssd300_vgg16_coco.pth"
    torch.save(model.state_dict(), path)
    return model, path


def torchvision_detections(model, image: np.ndarray, score_threshold: float = 0.01):
    model.score_thresh = score_threshold
    with torch.no_grad():
        found = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    return found["boxes"].numpy(), found["scores"].numpy(), found["labels"].numpy()


def assert_same_detections(boxes, scores, labels, reference, box_tolerance=0.05, score_tolerance=1e-4):
    ref_boxes, ref_scores, ref_labels = reference
    assert len(ref_scores) == 200 and len(set(ref_labels.tolist())) >= 5  # a full, varied list to compare
    assert ref_scores.max() - ref_scores.min() > 0.1
    assert len(scores) == len(ref_scores)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(boxes, ref_boxes, atol=box_tolerance, rtol=0)
    np.testing.assert_allclose(scores, ref_scores, atol=score_tolerance, rtol=0)


def predicted(out_dir):
    """Boxes xyxy, scores, labels from ``assd predict``'s detections.json (bbox is xywh in pixels)."""
    records = json.loads((out_dir / "detections.json").read_text())["detections"]
    xywh = np.array([r["bbox"] for r in records], np.float64).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return boxes, np.array([r["score"] for r in records]), np.array([r["label"] for r in records])


@pytest.mark.slow
@pytest.mark.realdata
def test_torchvision_ssd300_converted_predicts_what_torchvision_predicts(torchvision_ssd, coco128_root, tmp_path,
                                                                          capsys):
    model, weights = torchvision_ssd
    photo = coco128_root / PHOTO
    image = read_rgb_image(str(photo))
    reference = torchvision_detections(model, image)
    checkpoint, onnx_file = tmp_path / "ssd300.pt", tmp_path / "ssd300.onnx"

    main(["convert", str(weights), "-o", str(checkpoint), "--from", "torchvision-ssd300"])
    assert "ssd300-coco, 91 classes" in capsys.readouterr().out
    main(["predict", "--model", str(checkpoint), str(photo), "--out", str(tmp_path / "torch"),
          "--score-threshold", "0.01"])  # top 400 per class, 200 per image: the model's own defaults
    assert_same_detections(*predicted(tmp_path / "torch"), reference)

    main(["export", str(checkpoint), "--onnx", "-o", str(onnx_file), "--no-parity"])
    main(["predict", "--model", str(onnx_file), str(photo), "--out", str(tmp_path / "onnx"),
          "--score-threshold", "0.01"])
    assert_same_detections(*predicted(tmp_path / "onnx"), reference, score_tolerance=2e-4)

    # In-graph NMS: ONNX's NonMaxSuppression caps boxes per class after suppression, torchvision before;
    # at 0.05 no class of this photo has more than 400 candidates, so both keep the same boxes.
    network = load_checkpoint(checkpoint)
    graph_file = tmp_path / "ssd300.pp.onnx"
    pp = PostprocessConfig.for_model(network.cfg, score_threshold=0.05)
    export_onnx(network, graph_file, with_postprocess=True, postprocess=pp.to_dict())
    outputs = ort.InferenceSession(str(graph_file)).run(None, {"images": preprocess([image], network.cfg).numpy()})
    boxes, scores, classes, count = (output[0] for output in outputs)
    height, width = image.shape[:2]
    pixels = boxes[:count] * np.array([width, height, width, height], np.float32)
    assert_same_detections(pixels, scores[:count], classes[:count], torchvision_detections(model, image, 0.05))


def test_torchvision_mapping_is_strict(torchvision_ssd, tmp_path):
    _, weights = torchvision_ssd
    state = torch.load(weights, weights_only=True)
    converted = tmp_path / "ok.pt"
    result = convert_weights(weights, converted, "torchvision-ssd300")
    assert (result.model, result.num_classes, result.tensors) == ("ssd300-coco", 91, 71)
    network = load_checkpoint(converted)
    assert network.cfg == get_config("ssd300-coco")
    assert torch.equal(network.l2norm.weight, state["backbone.scale_weight"])
    torch.testing.assert_close(network.backbone.fc6.weight, state["backbone.extra.0.7.1.weight"], rtol=0, atol=0)

    without = {k: v for k, v in state.items() if k != "backbone.scale_weight"}
    extra = {**state, "backbone.extra.9.weight": torch.zeros(1)}
    reshaped = {**state, "head.regression_head.module_list.2.bias": torch.zeros(7)}
    wrapped = {"model": state, "epoch": 3}  # torchvision's reference scripts save {"model": ..., ...}
    for variant, message in [(without, r"missing 1 \(backbone\.scale_weight\)"),
                             (extra, r"unexpected 1 \(backbone\.extra\.9\.weight\)"),
                             (reshaped, r"tensor head\.regression_head\.module_list\.2\.bias has shape \(7,\)"),
                             (wrapped, None)]:
        source = tmp_path / "variant.pth"
        torch.save(variant, source)
        if message is None:
            convert_weights(source, tmp_path / "wrapped.pt", "torchvision-ssd300")
            continue
        with pytest.raises(UserError, match=message) as error:
            convert_weights(source, tmp_path / "bad.pt", "torchvision-ssd300")
        assert "\n" not in str(error.value) and not (tmp_path / "bad.pt").exists()


def test_conversion_errors_are_one_line(torchvision_ssd, tmp_path, capsys):
    _, weights = torchvision_ssd
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(UserError, match="not a readable torch state_dict .*ssd300_vgg16_coco-b556d3b4.pth"):
        convert_weights(truncated, tmp_path / "out.pt", "torchvision-ssd300")
    with pytest.raises(UserError, match="ASSD-Pytorch"):  # torchvision's file, announced as the authors'
        convert_weights(weights, tmp_path / "out.pt", "assd-pytorch")
    with pytest.raises(UserError, match="is an input of this command"):
        convert_weights(weights, weights, "torchvision-ssd300")
    with pytest.raises(UserError, match="not found"):
        convert_weights(tmp_path / "absent.pth", tmp_path / "out.pt", "torchvision-ssd300")
    mini = tmp_path / "mini.pt"
    save_checkpoint(build_model(get_config("assd-mini")), mini)  # an assd checkpoint is foreign here
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(mini), "-o", str(tmp_path / "out.pt"), "--from", "torchvision-ssd300"])
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message.count("\n") == 0 and "ssd300_vgg16" in message
    assert not (tmp_path / "out.pt").exists()


def test_conversion_checks_outputs_and_model_first(torchvision_ssd, tmp_path):
    _, weights = torchvision_ssd
    with pytest.raises(UserError, match="ASSD-Pytorch"):  # fails after the output check: no folder left behind
        convert_weights(weights, tmp_path / "sub" / "deeper" / "out.pt", "assd-pytorch")
    assert not (tmp_path / "sub").exists()
    (tmp_path / "foo.txt").write_text("x")
    with pytest.raises(UserError, match="foo.txt is a file, not a folder"):
        convert_weights(weights, tmp_path / "foo.txt" / "x.pt", "torchvision-ssd300")
    with pytest.raises(UserError, match="unknown model 'nope'"):  # before the (absent) source is read
        convert_weights(tmp_path / "absent.pth", tmp_path / "out.pt", "torchvision-ssd300", model="nope")


AUTHORS_ATTENTION = {"query": "conv1", "key": "conv2", "value": "conv3"}
XY_YX = [1, 0, 3, 2]  # (x, y, w, h) <-> (y, x, h, w)


def loc_head_in_yx_order(tensor: torch.Tensor) -> torch.Tensor:
    """A loc head's weight or bias with each anchor's 4 output channels in the authors' (y, x, h, w) order."""
    return tensor.reshape(-1, 4, *tensor.shape[1:])[:, XY_YX].reshape(tensor.shape)


def authors_key(key: str) -> str:
    """The names ``ASSD_ResNet101`` (assd_resnet101.py, github yijingru/ASSD-Pytorch) gives our tensors,
    written out independently of assd.convert: extras are one flat list (conv, BN, ReLU per conv)."""
    rules = [(r"backbone\.(.*)", r"\1"), (r"fusion\.reduce\.(.*)", r"fusion_layers.\1"), (r"fusion\.bn\.(.*)", r"fusion_bn.\1"),
             (r"fusion\.project\.(.*)", r"fusion_conv.\1"), (r"loc_heads\.(.*)", r"locs_layers.\1"),
             (r"conf_heads\.(.*)", r"conf_layers.\1")]
    if match := re.fullmatch(r"extras\.(\d)\.(\d)\.(.*)", key):
        return f"extra_layers.{6 * int(match.group(1)) + int(match.group(2))}.{match.group(3)}"
    if match := re.fullmatch(r"attention\.(\d)\.(\w+)\.weight", key):
        return f"att_layers.{match.group(1)}.{AUTHORS_ATTENTION[match.group(2)]}.weight"
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    raise AssertionError(f"no authors' name for {key}")


@pytest.mark.slow
def test_assd_pytorch_checkpoint_reproduces_the_authors_network(tmp_path):
    torch.manual_seed(0)
    original = build_model(get_config("assd513-authors")).eval()
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    # Their layout: their names, DataParallel's prefix, each anchor's loc channels in (y, x, h, w) order.
    authors = {f"module.{authors_key(k)}": (loc_head_in_yx_order(v) if k.startswith("loc_heads.") else v)
               for k, v in original.state_dict().items()}
    assert len(authors) == len(original.state_dict()) and "module.extra_layers.22.running_var" in authors
    source = tmp_path / "assd513_voc.pth"
    torch.save(authors, source)
    result = convert_weights(source, tmp_path / "assd513.pt", "assd-pytorch")
    assert (result.model, result.num_classes) == ("assd513-authors", 21)
    converted = load_checkpoint(tmp_path / "assd513.pt")
    assert converted.cfg.conventions.fusion_align_corners and converted.fusion.align_corners
    assert converted.cfg.conventions.prior_clip == "none" and converted.cfg.conventions.channel_order == "bgr"

    image = torch.randn(1, 3, 513, 513)
    with torch.no_grad():
        loc_xy, conf = original(image)
        loc, conf_converted = converted(image)
    loc_yx = loc_xy[..., XY_YX]  # the hand-built expectation: what the authors' network outputs
    torch.testing.assert_close(conf_converted, conf, rtol=0, atol=0)
    torch.testing.assert_close(loc, loc_yx[..., XY_YX], rtol=0, atol=0)
    # Their decode (assd_resnet101.py) of their (y, x) outputs against their [cy, cx, h, w] priors equals
    # our boxes with x and y swapped.
    priors_yx = priors_for(converted.cfg)[:, XY_YX]
    centers = priors_yx[:, :2] + loc_yx[0, :, :2] * 0.1 * priors_yx[:, 2:]
    sizes = priors_yx[:, 2:] * torch.exp(loc_yx[0, :, 2:] * 0.2)
    theirs_y1x1y2x2 = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)
    ours = decode(loc[0], priors_for(converted.cfg), converted.cfg.variances)
    torch.testing.assert_close(ours, theirs_y1x1y2x2[:, XY_YX], atol=1e-5, rtol=0)
