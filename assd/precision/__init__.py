"""Precision debugging: which layers must stay in higher precision so that mAP stays within tolerance.

``debug_precision(DebugOptions(...))`` is ``assd debug-precision``; ``gate_graph`` is the accuracy gate of
``assd calibrate`` and (through ``assd.engine.gated``, which composes what it verifies) ``assd build-engine``
(``--max-delta-map``, ``--keep-high``, ``--calib-method auto``). A stage of its own: it imports models,
runtime, export, calibration and evaluation; only ``assd.engine`` and ``assd.commands`` import it.

    setup      calibration once, the low-precision graph, one switchable graph, evaluation images
    switch     the switchable graph (one ``If`` per lowered tensor) and exposing extra outputs
    evaluator  mAP / Δ mAP / loc, conf and per-map errors of variants (ONNX Runtime or OpenVINO, CPU)
    backend    where variants and the verification run: ONNX Runtime's switchable session, or OpenVINO
               compiling each real graph (``--backend openvino``, the CPU target)
    layers     the layers (int8: quantized Convs; fp16: node groups), MACs, prediction maps
    search     per-layer sensitivity, greedy-by-sensitivity-per-MAC search, bisections
    uncertainty  paired bootstrap interval of Δ mAP over images
    verify     the chosen graph graded on the verification images; stricter search rounds when it fails
    report     table.md / table.json / sensitivity.png / recipe.json
"""

from assd.precision.debugger import DebugOptions, DebugResult, debug_precision
from assd.precision.gate import GateRequest, GateResult, gate_graph
from assd.precision.setup import CalibrationRequest

__all__ = ["CalibrationRequest", "DebugOptions", "DebugResult", "GateRequest", "GateResult", "debug_precision",
           "gate_graph"]
