"""Verification rounds (assd.precision.verify), the reference check and --calib-method auto where it is offered.
Fast: stub searches and an untrained assd-mini; the real case is tests/test_precision_debug.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from assd.cli import main
from assd.export import export_onnx
from assd.models import build_model, get_config
from assd.precision.uncertainty import Interval
from assd.precision.verify import Verification, search_targets, verified_search


def _check(low: float, high: float, delta: float) -> Verification:
    result = SimpleNamespace(mAP=0.5 + delta / 100)
    return Verification("synthetic:16", result, SimpleNamespace(mAP=0.5), 16, 8, 8,
                        Interval(delta, low, high, 16), Interval(delta, low, high, 8))


def _layer(name: str):
    return SimpleNamespace(layer=SimpleNamespace(name=name))


def test_a_graph_is_graded_by_its_conservative_bound_and_searched_again_with_stricter_targets():
    layers = [_layer(f"l{i}") for i in range(4)]
    targets, verified = [], []

    def choose(target: float):  # the stricter the target, the more layers kept
        targets.append(target)
        return layers[:{1.0: 1, 0.5: 2, 0.25: 2, 0.0: 4}[target]]

    def verify(kept):  # the point estimate is within ±1 already; the interval's far end only with 2 layers
        verified.append(len(kept))
        return _check(-1.4, 0.1, -0.6) if len(kept) == 1 else _check(-0.9, 0.2, -0.3)

    chosen, check, rounds = verified_search(choose, verify, 1.0, lambda _: None)
    assert targets == [1.0, 0.5] and verified == [1, 2] and len(chosen) == 2 and check.met(1.0)
    assert [r["verification"]["checked_abs_points"] for r in rounds] == [1.4, 0.9]


def test_no_round_meeting_the_tolerance_is_reported_as_such():
    _chosen, check, rounds = verified_search(lambda target: [_layer("a")], lambda kept: _check(-2.0, -0.5, -1.2), 1.0,
                                            lambda _: None)
    assert not check.met(1.0) and len(rounds) == len(search_targets(1.0)) == 4
    assert "Δ -1.20 [-2.00, -0.50] points on 16 verification images" in check.text()
    assert search_targets(0.0) == [0.0]


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("verify")
    export_onnx(build_model(get_config("assd-mini")).eval(), folder / "mini.onnx")
    return folder / "mini.onnx"


def _one_line_exit_2(args: list[str], capsys, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and message in err, err


def test_reference_must_be_a_checkpoint_or_an_fp32_graph(mini_onnx, tmp_path, capsys):
    from assd.export.fp16 import write_fp16_onnx

    fp16 = tmp_path / "mini.fp16.onnx"
    write_fp16_onnx(str(mini_onnx), str(fp16))
    engine = tmp_path / "mini.engine"
    engine.write_bytes(b"x")
    base = ["debug-precision", str(mini_onnx), "--data", "synthetic:2", "-o", str(tmp_path / "final.onnx")]
    _one_line_exit_2([*base, "--reference", str(fp16)], capsys, "is a fp16 graph, not a reference")
    _one_line_exit_2([*base, "--reference", str(engine)], capsys, "not a checkpoint (.pt) or fp32 ONNX graph")
    _one_line_exit_2([*base, "--reference", str(mini_onnx), "--verify-data", str(tmp_path)], capsys,
                     "--verify-data")
    assert not (tmp_path / "final.onnx").exists()


def test_calib_method_auto_is_refused_before_any_work_where_it_does_not_apply(mini_onnx, tmp_path, capsys, monkeypatch):
    from assd.precision import gate

    def expensive(*_args, **_kwargs):
        raise AssertionError("the gate started")

    monkeypatch.setattr(gate, "gate_graph", expensive)
    for precision in (["--fp16"], []):
        _one_line_exit_2(["build-engine", str(mini_onnx), *precision, "--calib-method", "auto", "--eval-data",
                          "synthetic:4", "-o", str(tmp_path / "m.engine")], capsys, "--calib-method auto")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
