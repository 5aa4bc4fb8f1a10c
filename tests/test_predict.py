"""``assd predict`` and ``assd attention`` on a randomly initialised assd-mini checkpoint."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from assd.cli import main
from assd.models import build_model, get_config
from assd.models.checkpoint import save_checkpoint


def run_cli(capsys, *args):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def mini_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mini.pt"
    save_checkpoint(build_model("assd-mini"), path)
    return path


def write_photo(path, width, height, seed):
    """A smooth image with a few blobs (lossless PNG, so 'drawn on' is measurable)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 90)], -1).astype(np.uint8)
    for _ in range(3):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, center, int(rng.integers(10, 40)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    cv2.imwrite(str(path), image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def changed_fraction(drawn: np.ndarray, original: np.ndarray) -> float:
    return float(np.mean(np.abs(drawn.astype(int) - original.astype(int)).max(axis=2) > 40))


def read_rgb(path):
    image = cv2.imread(str(path))
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_predict_writes_json_and_drawn_images(tmp_path, mini_checkpoint, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    originals = {"one": write_photo(folder / "one.png", 160, 120, 0), "two": write_photo(folder / "two.png", 90, 140, 1)}
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "predict", "--model", mini_checkpoint, folder, folder / "one.png",
                                   "--out", out, "--score-threshold", "0", "--max-detections", "10", "--device", "cpu")
    assert code == 0, stderr
    document = json.loads((out / "detections.json").read_text())
    assert document["postprocess"]["score_threshold"] == 0.0
    records = document["detections"]
    assert len(records) == 20  # both images once (the repeated file is not run twice), 10 detections each
    class_names = get_config("assd-mini").class_names
    for record in records:
        assert record["image_id"] in originals and record["file_name"].endswith(record["image_id"] + ".png")
        assert record["category_id"] in class_names and class_names[record["label"] - 1] == record["category_id"]
        x, y, w, h = record["bbox"]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and 0 <= record["score"] <= 1
    for stem, original in originals.items():
        drawn = read_rgb(out / f"{stem}.jpg")
        assert drawn.shape == original.shape
        assert changed_fraction(drawn, original) > 0.01
    assert "20 detections in 2 images" in stdout


def test_predict_unreadable_image_is_a_one_line_error(tmp_path, mini_checkpoint, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    code, _, stderr = run_cli(capsys, "predict", "--model", mini_checkpoint, broken, "--out", tmp_path / "out",
                              "--device", "cpu")
    assert code == 2 and str(broken) in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "detections.json").exists()
    code, _, stderr = run_cli(capsys, "predict", "--model", mini_checkpoint, tmp_path / "missing.png", "--out",
                              tmp_path / "out")
    assert code == 2 and "missing.png" in stderr


def test_attention_writes_one_overlay_per_map_and_a_grid(tmp_path, mini_checkpoint, capsys):
    original = write_photo(tmp_path / "photo.png", 200, 150, 2)
    out = tmp_path / "attention"
    code, stdout, stderr = run_cli(capsys, "attention", "--model", mini_checkpoint, tmp_path / "photo.png",
                                   "--out", out, "--device", "cpu")
    assert code == 0, stderr
    num_maps = len(get_config("assd-mini").min_scales)
    for index in range(num_maps):
        overlay = read_rgb(out / f"attention_map{index}.png")
        assert overlay.shape == original.shape
        assert changed_fraction(overlay, original) > 0.3  # the heat map covers the whole image
    grid = read_rgb(out / "attention_grid.png")
    assert grid.shape[1] >= 4 * 320 // 2
    facts = json.loads((out / "attention.json").read_text())
    assert "best detection" in facts["query_source"] and len(facts["maps"]) == num_maps

    code, stdout, stderr = run_cli(capsys, "attention", "--model", mini_checkpoint, tmp_path / "photo.png",
                                   "--out", tmp_path / "two", "--query", "10,140", "--maps", "0,2", "--device", "cpu")
    assert code == 0, stderr
    assert "query (10, 140): given" in stdout
    assert sorted(p.name for p in (tmp_path / "two").glob("attention_map*.png")) == ["attention_map0.png",
                                                                                      "attention_map2.png"]
    facts = json.loads((tmp_path / "two" / "attention.json").read_text())
    assert facts["query_xy"] == [10.0, 140.0] and facts["query_source"] == "given"
    rows, cols = facts["maps"][0]["size"]
    assert facts["maps"][0]["cell_row_col"] == [int(140 / 150 * rows), int(10 / 200 * cols)]


def test_attention_errors(tmp_path, mini_checkpoint, capsys):
    write_photo(tmp_path / "photo.png", 64, 64, 3)
    no_attention = dataclasses.replace(get_config("assd-mini"), name="mini-ssd", attention=False)
    save_checkpoint(build_model(no_attention), tmp_path / "ssd.pt")
    for model, extra, message in [(tmp_path / "ssd.pt", [], "no attention units"),
                                  (mini_checkpoint, ["--maps", "0,99"], "--maps 99"),
                                  (mini_checkpoint, ["--query", "500,5"], "outside the 64x64 image"),
                                  (mini_checkpoint, ["--query", "five"], "--query five")]:
        code, _, stderr = run_cli(capsys, "attention", "--model", model, tmp_path / "photo.png", "--out",
                                  tmp_path / "out", "--device", "cpu", *extra)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_default_query_stays_inside_the_image_for_a_box_flat_on_the_edge(monkeypatch):
    from assd.evaluation import attention_maps
    from assd.runtime.postprocess import Detections

    class Model:  # only what default_query touches
        cfg = get_config("assd-mini", num_classes=3)
        priors_cxcywh = None

        def __call__(self, batch):
            return None, None

    flat = Detections(np.array([[1.0, 0.2, 1.0, 1.0]], np.float32), np.array([0.9], np.float32), np.array([1]))
    monkeypatch.setattr(attention_maps, "detect", lambda *args, **kwargs: [flat])
    (x, y), how = attention_maps.default_query(Model(), torch.zeros(1), 214, 224)
    assert 0 <= x < 214 and 0 <= y < 224 and "best detection" in how
