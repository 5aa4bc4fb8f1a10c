"""calibrate never writes onto its inputs, never beside them, refuses foreign cache files and out-of-range
options in one line (issue 11: items 1, 3, 10, 14 for calibrate)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
import torch

from assd.calibration import quantize_int8
from assd.calibration.cache import CACHE_FORMAT
from assd.cli import main
from assd.errors import UserError
from assd.export import export_onnx
from assd.models import build_model, get_config
from assd.runtime.metadata import read_metadata


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("safety") / "mini.onnx"
    export_onnx(build_model(get_config("assd-mini")).eval(), path)
    return path


@pytest.fixture
def images(voc_mini_root) -> Path:
    return voc_mini_root / "VOCdevkit" / "VOC2012" / "JPEGImages"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fails_in_one_line(args: list[str], capsys, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, error
    assert error.startswith("error:") and "\n" not in error and "Traceback" not in error
    assert message in error, error


def test_calib_cache_never_overwrites_a_file_that_is_not_ours(mini_onnx, images, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(mini_onnx.read_bytes())
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    for cache, message in [(model, "is the input ONNX"), (notes, "not an assd calibration cache")]:
        _fails_in_one_line(["calibrate", str(model), "--calib-data", str(images), "--calib-images", "2",
                            "-o", str(tmp_path / "out.onnx"), "--calib-cache", str(cache)], capsys, message)
    empty = tmp_path / "empty.json"
    empty.touch()
    with pytest.raises(UserError, match="refusing to overwrite"):
        quantize_int8(str(model), str(tmp_path / "out.onnx"), str(images), num_images=2, cache_path=str(empty))
    assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.name != "empty.json"} == before
    assert empty.read_bytes() == b""

    ours = tmp_path / "old.calib.json"  # ours (format marker), from an older version: rewritten
    ours.write_text(json.dumps({"format": CACHE_FORMAT, "version": 1, "ranges": {}}))
    quantize_int8(str(model), str(tmp_path / "out.onnx"), str(images), num_images=2, method="max",
                  cache_path=str(ours), echo=lambda _: None, num_bins=256)
    content = json.loads(ours.read_text())
    assert next(iter(content)) == "format" and content["version"] == 2
    assert set(content["ranges"]) == {"entropy", "percentile", "max"}


def test_calibration_writes_nothing_beside_the_input_and_keeps_temp_files_private(mini_onnx, images, tmp_path,
                                                                                   monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "mini.onnx"
    model.write_bytes(mini_onnx.read_bytes())
    users_file = folder / "mini-inferred.onnx"  # the name ONNX Runtime's shape inference writes beside a model
    users_file.write_text("the user's own file")
    listing = sorted(p.name for p in folder.iterdir())
    prefixes = []
    make_temp = tempfile.mkdtemp

    def recording(*args, **kwargs):
        prefixes.append(kwargs.get("prefix", args[1] if len(args) > 1 else None))
        return make_temp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    output = tmp_path / "out" / "mini.int8.onnx"
    quantize_int8(str(model), str(output), str(images), num_images=2, method="max", echo=lambda _: None,
                  num_bins=256)
    assert read_metadata(output).precision == "int8"
    assert sorted(p.name for p in folder.iterdir()) == listing
    assert users_file.read_text() == "the user's own file"
    assert prefixes and all(str(prefix).startswith("assd-") for prefix in prefixes), prefixes
    assert sorted(p.name for p in output.parent.iterdir()) == ["mini.int8.onnx"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--parity-images", "-1"], "--parity-images -1: must be 0"),
    (["--calib-images", "0"], "--calib-images 0: must be at least 1"),
    (["--calib-percentile", "101"], "--calib-percentile 101.0: must be in (50, 100]"),
    (["--calib-percentile", "nan"], "--calib-percentile nan"),
    (["--max-delta-map", "-1", "--eval-data", "synthetic:4"], "--max-delta-map -1.0"),
    (["--max-delta-map", "inf", "--eval-data", "synthetic:4"], "--max-delta-map inf"),
    (["--calib-method", "auto", "--eval-images", "0", "--eval-data", "synthetic:4"], "--eval-images 0"),
    (["--calib-method", "auto"], "Δ mAP needs annotated images: pass --eval-data"),
])
def test_calibrate_refuses_out_of_range_options_before_any_work(mini_onnx, images, tmp_path, capsys, extra, message):
    output = tmp_path / "out.onnx"
    _fails_in_one_line(["calibrate", str(mini_onnx), "--calib-data", str(images), "-o", str(output), *extra],
                       capsys, message)
    assert list(tmp_path.iterdir()) == []


def test_calibrate_outputs_never_land_on_inputs(mini_onnx, images, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(mini_onnx.read_bytes())
    alias = tmp_path / "alias.onnx"
    alias.symlink_to(model)
    digest = _digest(model)
    base = ["calibrate", str(model), "--calib-data", str(images), "--calib-images", "2"]
    _fails_in_one_line([*base, "-o", str(model)], capsys, "is the input ONNX")
    _fails_in_one_line([*base, "-o", str(alias)], capsys, "is the input ONNX")
    _fails_in_one_line([*base, "-o", str(tmp_path / "x.onnx"), "--calib-cache", str(tmp_path / "x.onnx")], capsys,
                       "is also --calib-cache")
    _fails_in_one_line([*base, "-o", str(tmp_path / "sub" / ".." / "model.onnx")], capsys, "is the input ONNX")
    (tmp_path / "file").write_text("x")
    _fails_in_one_line([*base, "-o", str(tmp_path / "file" / "out.onnx")], capsys, "is a file, not a folder")
    assert _digest(model) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["alias.onnx", "file",
                                                                                         "model.onnx"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--tolerance", "-1"], "--tolerance -1.0: must be a finite number"),
    (["--images", "0"], "--images 0: must be at least 1"),
    (["--calib-images", "0"], "--calib-images 0: must be at least 1"),
    (["-o", "{tmp}/final.txt"], "must end in .onnx"),
    (["-o", "{model}"], "is the input ONNX"),
    (["--report", "{tmp}/notes.txt"], "--report {tmp}/notes.txt: is a file"),
    (["--data", "{tmp}"], "an image folder has no annotations"),
    (["--reference", "{tmp}/missing.pt"], "missing.pt"),
])
def test_debug_precision_refuses_bad_input_in_one_line(mini_onnx, tmp_path, capsys, extra, message):
    (tmp_path / "notes.txt").write_text("mine")
    fill = {"tmp": str(tmp_path), "model": str(mini_onnx)}
    args = {"--data": "synthetic:2", "--reference": str(mini_onnx), "-o": str(tmp_path / "final.onnx")}
    for option, value in zip(extra[::2], extra[1::2]):
        args[option] = value.format(**fill)
    _fails_in_one_line(["debug-precision", str(mini_onnx), *[item for pair in args.items() for item in pair]], capsys,
                       message.format(**fill))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cache_with_damaged_settings_or_image_count_is_measured_again(tmp_path):
    from assd.calibration.cache import CACHE_VERSION, CalibrationSettings, load_cache

    settings = CalibrationSettings(images=2, source="synthetic:2", percentile=99.9, op_types=("Conv",), num_bins=256)
    good = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "onnx_sha256": "abc", "settings": settings.to_dict(),
            "images_used": 2, "ranges": {"max": {"x": [-1.0, 1.0]}}}
    cache = tmp_path / "c.calib.json"
    for damage in [{"settings": []}, {"settings": None}, {"images_used": "abc"}, {"images_used": [1]}]:
        cache.write_text(json.dumps({**good, **damage}))
        lookup = load_cache(cache, "abc", settings, ("max",))
        assert lookup.ranges is None and "is damaged" in lookup.reason, (damage, lookup.reason)
    cache.write_text(json.dumps(good))
    assert load_cache(cache, "abc", settings, ("max",)).ranges == {"max": {"x": (-1.0, 1.0)}}


@pytest.mark.parametrize("item", [5, ["a"], "layer", {"layer": 5, "node": "n"}, {"layer": ["a"], "node": "n"},
                                  {"layer": "a", "node": 3}, {"node": "n"}])
def test_recipe_with_non_string_layer_names_is_a_damaged_recipe(tmp_path, item):
    from assd.calibration.recipe import RECIPE_FORMAT, RECIPE_VERSION, load_recipe

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"format": RECIPE_FORMAT, "version": RECIPE_VERSION, "precision": "int8",
                                  "kept_high": [item]}))
    with pytest.raises(UserError, match="damaged recipe"):
        load_recipe(recipe)


def _forbid(monkeypatch, module, *names):
    def expensive(*_args, **_kwargs):
        raise AssertionError("expensive work started before the input was checked")

    for name in names:
        monkeypatch.setattr(module, name, expensive)


def test_keep_high_layers_are_resolved_before_any_calibration(mini_onnx, tmp_path, monkeypatch):
    from assd.calibration.recipe import KeptLayer, Recipe
    from assd.precision import gate
    from assd.precision.setup import CalibrationRequest

    _forbid(monkeypatch, gate, "prepare", "eval_images", "_apply_recipe_unmeasured")
    recipe = tmp_path / "recipe.json"
    for precision, calibration in [("int8", CalibrationRequest(data="synthetic:2")), ("fp16", None)]:
        Recipe(precision, [KeptLayer("no.such.layer", "node_Conv_0")]).save(recipe)
        request = gate.GateRequest(max_delta_map=1.0, keep_high=str(recipe), eval_data="synthetic:2")
        with pytest.raises(UserError, match="1 layer\\(s\\) not in this model \\(no.such.layer\\)"):
            gate.gate_graph(str(mini_onnx), str(tmp_path / "out.onnx"), precision, calibration, request)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_gate_names_its_own_evaluation_options(mini_onnx, tmp_path):
    from assd.precision.gate import GateRequest, gate_graph

    photos = tmp_path / "photos"
    photos.mkdir()
    request = GateRequest(max_delta_map=1.0, eval_data=str(photos))
    with pytest.raises(UserError, match=f"^--eval-data {photos}: an image folder has no annotations"):
        gate_graph(str(mini_onnx), str(tmp_path / "out.onnx"), "fp16", None, request)


def test_debug_precision_checks_calib_data_before_the_reference_run(mini_onnx, tmp_path, monkeypatch):
    from assd.precision import debugger
    from assd.precision.setup import CalibrationRequest

    _forbid(monkeypatch, debugger, "reference_result", "prepare", "eval_images")
    for data, message in [(tmp_path / "missing", "no such folder, and not a data spec"),
                          (tmp_path, "folder has no .jpg/.png/.bmp images"),
                          ("voc", "no such folder, and not a data spec")]:
        options = debugger.DebugOptions(str(mini_onnx), "synthetic:2", str(mini_onnx), str(tmp_path / "final.onnx"),
                                        calibration=CalibrationRequest(data=str(data)))
        with pytest.raises(UserError, match=f"--calib-data {data}: {message}"):
            debugger.debug_precision(options, echo=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_private_workdir_is_one_the_stale_temp_cleaner_removes(tmp_path):
    import os

    from assd.calibration.paths import private_workdir
    from assd.paths import clean_stale_temp_dirs

    with private_workdir() as workdir:
        assert workdir.name.startswith(f"assd-calibration-{os.getpid()}-") and workdir.is_dir()
        left_behind = tmp_path / workdir.name.replace(f"-{os.getpid()}-", "-999999999-")  # a SIGKILLed run's
        left_behind.mkdir()
        (left_behind / "model.onnx").write_text("x")
    assert not workdir.exists()
    assert clean_stale_temp_dirs(tmp_path) == [left_behind] and not left_behind.exists()


def test_one_method_without_a_cache_computes_only_its_ranges(mini_onnx, images, tmp_path, monkeypatch):
    import assd.calibration.quantize as quantize_module

    _forbid(monkeypatch, quantize_module, "entropy_ranges", "_percentile_ranges")
    result = quantize_int8(str(mini_onnx), str(tmp_path / "out.onnx"), str(images), num_images=2, method="max",
                           echo=lambda _: None, num_bins=256)
    assert result.quantized_nodes > 0 and read_metadata(tmp_path / "out.onnx").precision == "int8"
