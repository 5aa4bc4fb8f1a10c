"""What runs in which precision in the graphs engines are built from: docs/deployment.md's table, checked.

The table (between ``<!-- precision-table:start -->`` and ``:end``) is read from the docs, and every
row's cells are checked on the graphs the engine stage composes (``assd.engine.precision_graph``) for an
``assd-mini`` with L2Norm and in-graph post-processing: the fp32 export, its fp16 and its int8 graph.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto

from assd.engine.build import CalibrationOptions
from assd.engine.precision_graph import compose_precision_graph
from assd.export import export_onnx
from assd.export.fp16 import attention_nodes, attention_score_nodes, l2norm_nodes
from assd.models import build_model, get_config
from assd.runtime.fp16_preview import float16_tensors
from assd.runtime.metadata import read_metadata

DOCS = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
COLUMNS = ("fp32", "fp16", "int8")


def precision_table() -> dict[str, dict[str, str]]:
    """{op group: {fp32|fp16|int8: cell}} from docs/deployment.md."""
    text = DOCS.read_text()
    body = text.split("<!-- precision-table:start -->")[1].split("<!-- precision-table:end -->")[0]
    rows = [line.strip().strip("|").split("|") for line in body.strip().splitlines()[2:]]
    return {cells[0].strip(): dict(zip(COLUMNS, (c.strip() for c in cells[1:]))) for cells in rows}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{precision: composed ONNX model} for an assd-mini (128 px) with L2Norm and in-graph NMS."""
    folder = tmp_path_factory.mktemp("table")
    cfg = get_config("assd-mini")
    cfg = dataclasses.replace(cfg, input_size=128, conventions=dataclasses.replace(cfg.conventions, l2norm=True))
    torch.manual_seed(0)
    fp32 = folder / "mini.onnx"
    export_onnx(build_model(cfg).eval(), fp32, with_postprocess=True)
    metadata = read_metadata(fp32)
    calibration = CalibrationOptions(data="synthetic:4", images=4, method="max")
    made = {"fp32": str(fp32)}
    for precision in ("fp16", "int8"):
        made[precision] = compose_precision_graph(str(fp32), str(folder / f"mini.{precision}.engine"), metadata,
                                                  precision, calibration, echo=lambda _: None)
    return {precision: onnx.load(path) for precision, path in made.items()}


def _conv_names(graph: onnx.GraphProto, prefixes: tuple[str, ...]) -> set[str]:
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1].startswith(prefixes)}


def group_nodes(fp32: onnx.GraphProto) -> dict[str, set[str]]:
    """The node names of every table row, found in the fp32 graph (the composed graphs keep them)."""
    scores = {n.name for n in attention_score_nodes(fp32)}
    return {
        "backbone, extras and fusion Convs": _conv_names(fp32, ("backbone.", "extras.", "fusion.")),
        "attention q / k / v projections (1×1 Convs)": _conv_names(fp32, ("attention.",)),
        "attention scores `q^T k` (MatMul) and their Softmax": scores,
        "attention weighting `ā v^T` (MatMul)": {n.name for n in attention_nodes(fp32)} - scores,
        "heads (loc / conf Convs)": _conv_names(fp32, ("loc_heads.", "conf_heads.")),
        "Adds (residual, attention output)": {n.name for n in fp32.node if n.op_type == "Add"
                                              and not n.name.startswith("pp/")},
        "fusion upsampling (Resize)": {n.name for n in fp32.node if n.op_type == "Resize"},
        "L2Norm (ReduceL2 → Clip → Div)": {n.name for n in l2norm_nodes(fp32)},
        "in-graph post-processing (decode, TopK, NMS)": {n.name for n in fp32.node if n.name.startswith("pp/")},
    }


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def _cell(model: onnx.ModelProto, names: set[str], fp16: set[str], types: dict[str, int]) -> str:
    """What the nodes ``names`` of ``model`` compute in: fp32, fp16 or "int8 → fp16" (the table's words)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    cells = set()
    for node in (n for n in model.graph.node if n.name in names):
        floats = [o for o in node.output if types.get(o) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        precision = "fp16" if floats and all(o in fp16 for o in floats) else "fp32" if not set(floats) & fp16 else "mixed"
        reads_int8 = node.op_type == "Conv" and all(
            producers.get(name) is not None and producers[name].op_type == "DequantizeLinear" for name in node.input[:2])
        cells.add(f"int8 → {precision}" if reads_int8 else precision)
    assert len(cells) == 1, (sorted(names)[:3], cells)
    return cells.pop()


def test_docs_precision_table_is_what_the_composed_graphs_compute(graphs):
    table = precision_table()
    groups = group_nodes(graphs["fp32"].graph)
    assert set(table) == set(groups) | {"graph inputs and outputs"}, set(table) ^ set(groups)
    assert all(groups.values()), [name for name, nodes in groups.items() if not nodes]
    for precision in COLUMNS:
        model = graphs[precision]
        fp16, types = float16_tensors(model), _types(model)
        for group, names in groups.items():
            assert _cell(model, names, fp16, types) == table[group][precision], (precision, group)
        io = [v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)]
        assert TensorProto.FLOAT16 not in io and table["graph inputs and outputs"][precision] == "fp32"
    qdq = [n.op_type for n in graphs["int8"].graph.node if n.op_type.endswith("Linear")]
    assert qdq.count("QuantizeLinear") > 0 and re.search("int8", table["heads (loc / conf Convs)"]["int8"])
