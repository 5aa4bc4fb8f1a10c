"""One run's files recognisably one set: a run id in each, compared when they are read together.

``debug-precision`` writes a graph (``-o``) and a report folder (``table.md``, ``table.json``,
``sensitivity.png``, ``recipe.json``). Killed between two writes, it left a graph keeping 3 layers high
beside a ``recipe.json`` of an earlier run saying none. Now every run draws a ``run_id``; the recipe
(and so ``table.json``, which embeds it) and the graph's metadata (``assd.run_id``) carry it; the
report is written first and the graph last, so a graph always has its report. ``check_recipe_set``
refuses, in one line, a recipe whose report beside it is of another run.

``calibrate`` writes a cache (``--calib-cache``) and then a graph. The cache records the run that
measured its ranges (``run_id``); the graph its own run (``assd.run_id``) and the run whose ranges it
was quantized with (``assd.calibration_run_id``: this run's when it measured them, the cache's when it
reused them). A graph and a cache are *read together* when a command is given an already quantized
graph and a cache (``build-engine --int8 model.int8.onnx --calib-cache c.json``): the cache can then
only be the graph's companion, and ``check_graph_cache_set`` refuses a pair of two runs. A cache given
with an fp32 graph is used to calibrate it: it is matched by the ONNX file's SHA-256 and the settings
(``assd.calibration.cache``), never by run, so reusing a cache for a new graph keeps working.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import onnx

from assd.errors import UserError

RUN_ID_KEY = "assd.run_id"
CALIBRATION_RUN_KEY = "assd.calibration_run_id"  # the run that measured the ranges a Q/DQ graph holds


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def mark_graph(model: onnx.ModelProto, run_id: str, key: str = RUN_ID_KEY) -> onnx.ModelProto:
    """Record ``run_id`` under ``key`` in the graph's metadata (replacing an earlier one); returns ``model``."""
    kept = [prop for prop in model.metadata_props if prop.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=run_id)
    return model


def graph_run_id(model: onnx.ModelProto, key: str = RUN_ID_KEY) -> str | None:
    return next((prop.value for prop in model.metadata_props if prop.key == key), None)


def check_graph_cache_set(graph_path: str | Path, cache_path: str | Path | None) -> str | None:
    """The calibration run shared by the quantized graph ``graph_path`` and the cache ``cache_path``
    (None: nothing to compare: no cache, or a graph or cache without a run id, e.g. an fp32 graph);
    UserError when they are of two runs."""
    from assd.calibration.cache import cache_run_id
    from assd.runtime.metadata import load_onnx

    if not cache_path or not Path(cache_path).is_file():
        return None
    graph_run = graph_run_id(load_onnx(graph_path, load_weights=False), CALIBRATION_RUN_KEY)
    cache_run = cache_run_id(cache_path)
    if not graph_run or not cache_run:
        return None
    if graph_run != cache_run:
        raise UserError(f"--calib-cache {cache_path}: holds the ranges of calibration run {cache_run}, but {graph_path} "
                        f"was quantized with those of run {graph_run}: the two are not one calibrate output set (a run "
                        "stopped between its two files, or a file of another run); run 'assd calibrate' again to "
                        "write both, or drop --calib-cache (the graph's own scales are used)")
    return graph_run


def check_recipe_set(path: str | Path, run_id: str | None, report_name: str = "table.json") -> None:
    """UserError when the report ``report_name`` beside the recipe ``path`` records another run's recipe."""
    report = Path(path).parent / report_name
    if not run_id or not report.is_file():
        return
    try:
        other = json.loads(report.read_text()).get("recipe", {}).get("run_id")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return  # not a report of ours
    if other and other != run_id:
        raise UserError(f"--keep-high {path}: its report {report.name} beside it is of another debug-precision run "
                        f"(run {other}, the recipe's is {run_id}): the folder mixes two runs; run "
                        "'assd debug-precision' again")
