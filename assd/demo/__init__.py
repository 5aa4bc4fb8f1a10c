"""``assd demo``: the whole pipeline offline in one command, on the built-in synthetic data by default.

Train ``assd-mini`` -> evaluate (mAP) -> export ONNX (parity) -> FP16 and INT8 graphs (and TensorRT
engines where TensorRT and a GPU exist) -> ``eval-engine`` each (Δ mAP) -> ``bench`` each (FPS) ->
detections and attention maps drawn; then one summary (``OUT/report.md``, ``OUT/report.json``).
Finished steps are remembered in ``OUT/demo_state.json`` and reused by the next run unless ``force``.

``run_demo(DemoOptions(out="runs/demo", quick=True))`` is what ``assd demo --quick`` runs.
"""

from assd.demo.pipeline import run_demo
from assd.demo.settings import BUDGETS, Budget, DataPlan, DemoOptions, plan_data

__all__ = ["BUDGETS", "Budget", "DataPlan", "DemoOptions", "plan_data", "run_demo"]
