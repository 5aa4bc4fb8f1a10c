"""One run's files recognisably one set: a run id in each, compared when they are read together.

``debug-precision`` writes a graph (``-o``) and a report folder (``table.md``, ``table.json``,
``sensitivity.png``, ``recipe.json``). Killed between two writes, it left a graph keeping 3 layers high
beside a ``recipe.json`` of an earlier run saying none. Now every run draws a ``run_id``; the recipe
(and so ``table.json``, which embeds it) and the graph's metadata (``assd.run_id``) carry it; the
report is written first and the graph last, so a graph always has its report. ``check_recipe_set``
refuses, in one line, a recipe whose report beside it is of another run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import onnx

from assd.errors import UserError

RUN_ID_KEY = "assd.run_id"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def mark_graph(model: onnx.ModelProto, run_id: str) -> onnx.ModelProto:
    """Record ``run_id`` in the graph's metadata (replacing an earlier one); returns ``model``."""
    kept = [prop for prop in model.metadata_props if prop.key != RUN_ID_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=RUN_ID_KEY, value=run_id)
    return model


def graph_run_id(model: onnx.ModelProto) -> str | None:
    return next((prop.value for prop in model.metadata_props if prop.key == RUN_ID_KEY), None)


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
