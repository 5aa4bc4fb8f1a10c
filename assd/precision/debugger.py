"""``assd debug-precision``: which layers must stay in higher precision for mAP to stay within tolerance.

    fp32 ONNX ──calibrate once──► Q/DQ graph (every layer int8) ──► one switchable graph, one session
        ──► per layer: Δ mAP kept high alone / lowered alone, loc/conf error, MAC share   (search.analyze)
        ──► greedy by sensitivity per MAC, bisection, drop the unneeded              (search.search)
        ──► final graph (kept layers high, recorded in its metadata), verified on its own
        ──► report folder: table.md / table.json, sensitivity.png, recipe.json        (report)

Everything runs with ONNX Runtime on the CPU, so the answer exists before any GPU is involved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from assd.calibration.paths import check_graph_outputs, private_workdir
from assd.calibration.recipe import KeptLayer, Recipe
from assd.calibration.run_set import mark_graph, new_run_id
from assd.errors import CheckFailed, UserError
from assd.precision.evaluator import VariantResult, available_threads
from assd.precision.report import REPORT_FILES
from assd.precision.search import LayerSensitivity, SearchResult, analyze, greedy_order, search
from assd.precision.setup import (
    DEFAULT_EVAL_IMAGES,
    DEFAULT_TOLERANCE,
    PRECISIONS,
    CalibrationRequest,
    PrecisionSetup,
    check_annotated,
    eval_images,
    prepare,
    reference_result,
)
from assd.runtime.metadata import load_fp32_source
from assd.utils import atomic_write_bytes


@dataclass
class DebugOptions:
    onnx: str
    data: str
    reference: str
    output: str
    precision: str = "int8"
    tolerance: float | None = None  # Δ mAP points (default: 1.0 int8, 0.3 fp16)
    calibration: CalibrationRequest | None = None  # int8 (default: entropy on --data)
    images: int = DEFAULT_EVAL_IMAGES
    report_dir: str | None = None  # default: <output stem>.precision/ beside the output
    metric: str | None = None

    def report_folder(self) -> Path:
        if self.report_dir:
            return Path(self.report_dir)
        output = Path(self.output)
        return output.with_name(f"{output.name.removesuffix('.onnx')}.precision")


@dataclass
class DebugResult:
    setup: PrecisionSetup
    all_low: VariantResult
    sensitivities: list[LayerSensitivity]
    search: SearchResult
    kept: list[LayerSensitivity]
    final: VariantResult  # the written graph, evaluated on its own
    tolerance: float
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return abs(self.final.delta_points) <= self.tolerance + 1e-9


def check_tolerance(tolerance: float | None, precision: str, option: str = "--tolerance") -> float:
    if tolerance is None:
        return DEFAULT_TOLERANCE[precision]
    if not math.isfinite(tolerance) or tolerance < 0:
        raise UserError(f"{option} {tolerance}: must be a finite number of mAP points >= 0")
    return tolerance


def check_options(options: DebugOptions) -> float:
    """Every check that needs no model run; returns the tolerance."""
    if options.precision not in PRECISIONS:
        raise UserError(f"--precision {options.precision}: choose one of {', '.join(PRECISIONS)}")
    tolerance = check_tolerance(options.tolerance, options.precision)
    if options.images < 1:
        raise UserError(f"--images {options.images}: must be at least 1")
    check_annotated(options.data)
    if options.calibration is not None and options.precision == "int8":
        _check_calibration(options.calibration)
    if not Path(options.reference).is_file():
        raise UserError(f"--reference {options.reference}: no such file: pass the checkpoint (.pt) or fp32 ONNX "
                        "the graph was exported from")
    calibration = options.calibration if options.precision == "int8" else None
    report = options.report_folder()
    if report.exists() and not report.is_dir():
        raise UserError(f"--report {report}: is a file: pass a folder for the report")
    check_graph_outputs(options.output, calibration.cache if calibration else None,
                        {"ONNX": options.onnx, "--reference": options.reference},
                        [options.data, calibration.data if calibration else None],
                        folders={"--report": (report, tuple(REPORT_FILES.values()))})
    return tolerance


def _check_calibration(calibration: CalibrationRequest) -> None:
    """--method, the range options and --calib-data (a folder with images or a data spec), before any work."""
    from assd.calibration.images import calibration_images
    from assd.calibration.quantize import METHODS, check_range_options

    if calibration.method not in (*METHODS, "auto"):
        raise UserError(f"--method {calibration.method}: choose one of {', '.join(METHODS)} or auto")
    check_range_options(calibration.images, calibration.percentile, calibration.num_bins)
    calibration_images(calibration.data, calibration.images)  # parses the spec / lists the folder; loads nothing


def kept_layers(setup: PrecisionSetup, result: SearchResult, sensitivities: list[LayerSensitivity],
                tolerance: float, echo: Callable[[str], None]) -> tuple[list[LayerSensitivity], VariantResult]:
    """The searched set, verified on the real graph; if the real graph misses the tolerance (the fp16
    switch only emulates the fp16 conversion), the next layers in greedy order are added until it holds."""
    kept = list(result.kept)
    final = setup.evaluator.evaluate_model(setup.graph([s.layer for s in kept]))
    spare = [s for s in greedy_order(sensitivities) if s not in kept]
    while abs(final.delta_points) > tolerance + 1e-9 and spare:
        kept.append(spare.pop(0))
        echo(f"the real graph has Δ {final.delta_points:+.2f} points: also keeping {kept[-1].layer.name} high")
        final = setup.evaluator.evaluate_model(setup.graph([s.layer for s in kept]))
    return kept, final


def make_recipe(setup: PrecisionSetup, all_low: VariantResult, kept: list[LayerSensitivity], result: SearchResult,
                final: VariantResult, tolerance: float) -> Recipe:
    layers = []
    for s in kept:
        why = [(f"kept high alone: Δ {s.kept_high.delta_points:+.2f} points (every layer low: "
               f"{all_low.delta_points:+.2f})")]
        if s.lowered is not None:
            why.append(f"lowered alone: Δ {s.lowered.delta_points:+.2f}")
        if s.layer.name in result.needed:
            why.append(f"the final set without it: Δ {result.needed[s.layer.name]:+.2f} (tolerance ±{tolerance:g})")
        layers.append(KeptLayer(s.layer.name, s.layer.node, round(s.layer.share, 6), "; ".join(why)))
    return Recipe(setup.precision, layers, model=setup.metadata.model_config.name, tolerance_points=tolerance,
                  delta_map_points={"low": round(all_low.delta_points, 4), "final": round(final.delta_points, 4)},
                  calibration=setup.calibration)


def debug_precision(options: DebugOptions, echo: Callable[[str], None] = print) -> DebugResult:
    """Run the debugger (see the module docstring); writes ``options.output`` and the report folder."""
    from assd.export.onnx_export import check_and_serialize
    from assd.precision.report import write_report

    tolerance = check_options(options)
    started = time.perf_counter()
    model, metadata = load_fp32_source(options.onnx, options.output, options.precision)
    calibration = options.calibration or CalibrationRequest(data=options.data)
    images = eval_images(options.data, options.images, metadata, options.onnx)
    reference = reference_result(options.reference, images, metadata, options.metric, echo)
    seconds = {}
    with private_workdir() as workdir:
        setup = prepare(options.onnx, model, metadata, options.precision, images, reference, options.reference,
                        calibration, workdir, options.metric, echo)
    seconds["setup"] = time.perf_counter() - started
    echo(f"{len(setup.layers)} {options.precision} layers; ONNX Runtime CPU, {available_threads()} threads, "
         f"{len(images)} images per variant")
    mark = time.perf_counter()
    step = max(len(setup.layers) // 4, 1)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            echo(f"  sensitivity: {done}/{total} layers ({time.perf_counter() - mark:.0f} s)")

    all_low, sensitivities = analyze(setup.evaluator, setup.layers, True, progress)
    seconds["sensitivity"] = time.perf_counter() - mark
    echo(f"every layer {options.precision}: Δ mAP {all_low.delta_points:+.2f} points (tolerance ±{tolerance:g})")
    mark = time.perf_counter()
    result = search(setup.evaluator, sensitivities, tolerance, echo)
    kept, final = kept_layers(setup, result, sensitivities, tolerance, echo)
    seconds["search"] = time.perf_counter() - mark
    graph = check_and_serialize(mark_graph(setup.graph([s.layer for s in kept]), run_id := new_run_id()))
    seconds["total"] = time.perf_counter() - started
    debug = DebugResult(setup, all_low, sensitivities, result, kept, final, tolerance, seconds)
    recipe = dataclasses.replace(make_recipe(setup, all_low, kept, result, final, tolerance), run_id=run_id)
    debug.files = write_report(options.report_folder(), debug, recipe, options)  # the report first, the graph last:
    atomic_write_bytes(options.output, graph)  # a graph always has its report (assd.calibration.run_set)
    debug.files["graph"] = str(options.output)
    return debug


def check_result(debug: DebugResult) -> None:
    if not debug.met:
        raise CheckFailed(f"no kept-high set found with |Δ mAP| <= {debug.tolerance:g} points (best: "
                          f"{debug.final.delta_points:+.2f} with {len(debug.kept)} layers high); the report says "
                          "where the loss is")
