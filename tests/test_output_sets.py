"""Output sets of debug-precision: its int8 graph names the calibration run whose ranges it holds, so
build-engine can pair it with its own ``--calib-cache`` and refuse another run's (issue 25)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from assd.calibration.cache import save_cache
from assd.calibration.quantize import calibration_settings
from assd.calibration.run_set import CALIBRATION_RUN_KEY, check_graph_cache_set, graph_run_id
from assd.errors import UserError
from assd.precision.debugger import DebugOptions, _mark_ranges_run
from assd.precision.setup import CalibrationRequest


def _graph() -> onnx.ModelProto:
    node = helper.make_node("Identity", ["x"], ["y"])
    value = helper.make_tensor_value_info
    return helper.make_model(helper.make_graph([node], "g", [value("x", TensorProto.FLOAT, [1])],
                                               [value("y", TensorProto.FLOAT, [1])]))


def _options(cache, precision="int8") -> DebugOptions:
    return DebugOptions(onnx="m.onnx", data="synthetic:4", reference="m.pt", output="m.int8.onnx",
                        precision=precision, calibration=CalibrationRequest(data="synthetic:4", cache=cache))


def test_debug_precision_graph_records_its_caches_run_and_build_engine_pairs_them(tmp_path):
    cache = tmp_path / "c.json"
    save_cache(cache, {"entropy": {"x": (0.0, 1.0)}}, "0" * 64, calibration_settings(4, "synthetic:4", 99.9, 256),
               4, run_id="run-a")
    graph = _mark_ranges_run(_graph(), _options(str(cache)))
    assert graph_run_id(graph, CALIBRATION_RUN_KEY) == "run-a"
    onnx.save(graph, tmp_path / "m.int8.onnx")
    assert check_graph_cache_set(tmp_path / "m.int8.onnx", cache) == "run-a"
    save_cache(cache, {"entropy": {"x": (0.0, 1.0)}}, "0" * 64, calibration_settings(4, "synthetic:4", 99.9, 256),
               4, run_id="run-b")  # a later run rewrote the cache
    with pytest.raises(UserError):
        check_graph_cache_set(tmp_path / "m.int8.onnx", cache)


def test_no_cache_or_fp16_leaves_the_graph_unmarked(tmp_path):
    assert graph_run_id(_mark_ranges_run(_graph(), _options(None)), CALIBRATION_RUN_KEY) is None
    assert graph_run_id(_mark_ranges_run(_graph(), _options(str(tmp_path / "c.json"), "fp16")),
                        CALIBRATION_RUN_KEY) is None
