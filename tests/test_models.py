"""The model family: fidelity to the paper (anchors, parameters), shapes, and the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from assd.errors import UserError
from assd.models import PRESETS, build_model, feature_sizes, get_config
from assd.models.assd import ASSD
from assd.models.attention import AttentionUnit
from assd.models.backbones import load_backbone_weights
from assd.models.box_coding import cxcywh_to_xyxy, decode, encode
from assd.models.config import ModelConfig
from assd.models.fusion import SemanticFusion
from assd.models.priors import generate_priors

# (preset, input size, anchors, parameters with 21 classes, paper's parameters in millions)
FIDELITY = [
    ("assd513", 513, 25_844, 67_546_820, 67.5),
    ("assd321", 321, 10_352, 66_675_118, 66.7),
    ("assd300", 300, 8_732, 29_420_974, 29.4),
    ("assd512", 512, 24_564, 30_177_476, 30.2),
    ("ssd321", 321, 10_352, 56_759_982, 56.8),
    ("ssd513", 513, 25_844, 57_549_764, 57.5),
]


def _meta_model(name: str, num_classes: int = 21) -> ASSD:
    with torch.device("meta"):
        return ASSD(get_config(name, num_classes=num_classes))


@pytest.mark.parametrize("name,size,anchors,params,paper_millions", FIDELITY)
def test_paper_anchor_and_parameter_counts(name, size, anchors, params, paper_millions):
    model = _meta_model(name)
    assert model.cfg.input_size == size
    assert model.priors_cxcywh.shape == (anchors, 4)
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == params
    assert abs(num_params / 1e6 - paper_millions) <= 0.1


def test_assd513_maps_match_the_paper():
    assert [h for h, _ in feature_sizes(get_config("assd513"))] == [65, 33, 17, 9, 5, 3, 1]
    assert [h for h, _ in feature_sizes(get_config("assd321"))] == [41, 21, 11, 6, 3, 1]


@pytest.mark.parametrize("name", list(PRESETS))
def test_output_shapes_and_feature_sizes_of_every_preset(name):
    """Shapes on the meta device (no compute): loc [B, A, 4], conf [B, A, C]; sizes as computed."""
    model = _meta_model(name, num_classes=7).eval()
    images = torch.empty(2, 3, model.cfg.input_size, model.cfg.input_size, device="meta")
    loc, conf = model(images)
    num_anchors = model.priors_cxcywh.shape[0]
    assert loc.shape == (2, num_anchors, 4)
    assert conf.shape == (2, num_anchors, 7)
    maps = model.feature_maps(images)
    assert [tuple(m.shape[-2:]) for m in maps] == feature_sizes(model.cfg)


def test_ablation_switches():
    assert not get_config("ssd513").attention and not get_config("ssd513").fusion
    assert get_config("ssd513-fusion").fusion and not get_config("ssd513-fusion").attention
    assert get_config("ssd513-att").attention and not get_config("ssd513-att").fusion
    assert _meta_model("ssd513").attention is None


def test_attention_unit_equals_naive_per_position_loop():
    torch.manual_seed(0)
    unit = AttentionUnit(16).double()
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out = unit(x)
    q = unit.query.weight.detach()[:, :, 0, 0]  # [C', C]
    k = unit.key.weight.detach()[:, :, 0, 0]
    v = unit.value.weight.detach()[:, :, 0, 0]  # [C, C]
    assert q.shape == (2, 16) and v.shape == (16, 16)
    expected = torch.empty_like(x)
    for b in range(2):
        positions = x[b].reshape(16, -1)  # [C, N]
        n = positions.shape[1]
        for i in range(n):
            scores = torch.stack([(q @ positions[:, i]) @ (k @ positions[:, j]) for j in range(n)])
            weights = torch.exp(scores) / torch.exp(scores).sum()  # no 1/sqrt(d) scaling
            mixed = sum(weights[j] * (v @ positions[:, j]) for j in range(n))
            expected[b].reshape(16, -1)[:, i] = positions[:, i] + mixed
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_attention_weights_are_row_stochastic():
    unit = AttentionUnit(8)
    weights = unit.attention_weights(torch.randn(1, 8, 5, 5))
    assert weights.shape == (1, 25, 25)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 25))


def test_fusion_output_shape():
    fusion = SemanticFusion((32, 64, 128), reduced=16)
    out = fusion([torch.randn(2, 32, 17, 17), torch.randn(2, 64, 9, 9), torch.randn(2, 128, 5, 5)])
    assert out.shape == (2, 32, 17, 17)
    assert (out >= 0).all()  # ReLU at the end


@pytest.mark.parametrize("name", ["assd513", "assd321", "assd300", "assd-mini"])
def test_priors_clipped_and_symmetric(name):
    cfg = get_config(name)
    priors = generate_priors(feature_sizes(cfg), cfg.min_scales, cfg.max_scales, cfg.aspect_ratios)
    corners = cxcywh_to_xyxy(priors)
    assert corners.min() >= 0 and corners.max() <= 1
    assert (priors[:, 2:] > 0).all()
    # Mirror left-right: prior (i, j, k) must be the mirror image of prior (i, W-1-j, k).
    start = 0
    for (height, width), per_location in zip(feature_sizes(cfg), cfg.anchors_per_location):
        grid = priors[start:start + height * width * per_location].reshape(height, width, per_location, 4)
        start += height * width * per_location
        mirrored = grid.flip(1)
        torch.testing.assert_close(1 - mirrored[..., 0], grid[..., 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(mirrored[..., 1:], grid[..., 1:], atol=1e-6, rtol=0)
        flipped = grid.flip(0)  # and top-bottom
        torch.testing.assert_close(1 - flipped[..., 1], grid[..., 1], atol=1e-6, rtol=0)


def test_priors_layout_of_one_map():
    priors = generate_priors([(2, 2)], [0.2], [0.4], [(2,)], clip=False)
    assert priors.shape == (2 * 2 * 4, 4)
    first = priors[:4]
    torch.testing.assert_close(first[:, :2], torch.full((4, 2), 0.25))
    s_prime = math.sqrt(0.2 * 0.4)
    expected_wh = torch.tensor([[0.2, 0.2], [s_prime, s_prime], [0.2 * 2**0.5, 0.2 / 2**0.5],
                                [0.2 / 2**0.5, 0.2 * 2**0.5]])
    torch.testing.assert_close(first[:, 2:], expected_wh)


def test_box_coding_round_trip():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.1, 0.8, 0.05, 0.1]])
    boxes = torch.tensor([[0.3, 0.35, 0.62, 0.71], [0.0, 0.7, 0.2, 0.95]])
    torch.testing.assert_close(decode(encode(boxes, priors, (0.1, 0.2)), priors, (0.1, 0.2)), boxes)


def test_small_preset_forward_backward_gives_finite_gradients():
    torch.manual_seed(0)
    model = build_model(get_config("assd-mini", num_classes=4)).train()
    images = torch.randn(2, 3, 256, 256)
    loc, conf = model(images)
    loss = loc.square().mean() + torch.nn.functional.cross_entropy(conf.reshape(-1, 4),
                                                                   torch.zeros(conf.shape[0] * conf.shape[1],
                                                                               dtype=torch.long))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in model.attention[0].parameters() for g in [g.grad])


def test_config_json_round_trip():
    cfg = get_config("assd321").with_classes(["cat", "dog"])
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert cfg.num_classes == 3


def test_unknown_preset_and_bad_num_classes():
    with pytest.raises(UserError, match="unknown model"):
        get_config("assd999")
    with pytest.raises(UserError, match="at least 2"):
        get_config("assd513", num_classes=1)


def test_backbone_weights_from_a_local_torchvision_file(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(get_config("assd-mini"), backbone_weights=str(path))
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_backbone_weights_errors(tmp_path, monkeypatch):
    model = ASSD(get_config("assd-mini"))
    with pytest.raises(UserError, match="not found"):
        load_backbone_weights(model.backbone, str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match="not a torchvision resnet18"):
        load_backbone_weights(model.backbone, str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read"):
        load_backbone_weights(model.backbone, str(garbage))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="--backbone-weights PATH"):
        load_backbone_weights(model.backbone, "imagenet")
