"""``assd debug-precision``: which layers must stay in higher precision for mAP to stay within tolerance.

    fp32 ONNX ──calibrate once──► Q/DQ graph (every layer int8) ──► one switchable graph, one session
        ──► per layer: Δ mAP kept high alone / lowered alone, loc/conf error, MAC share   (search.analyze)
        ──► greedy by sensitivity per MAC, bisection, drop the unneeded              (search.search)
        ──► final graph (kept layers high, recorded in its metadata), verified on every image of --data
            (or --verify-data) with a paired bootstrap interval; over the tolerance: search again with a
            stricter target, else exit 1                                               (verify)
        ──► report folder: table.md / table.json, sensitivity.png, recipe.json        (report)

The sensitivities and the search use ``--images`` search images (evenly spaced over ``--data``); the
answer is graded on the verification images, never only on those that made it (``assd.precision.verify``).

Everything runs on the CPU, so the answer exists before any GPU is involved: with ONNX Runtime (the
TensorRT target's preview), or with ``--backend openvino`` on OpenVINO, the CPU target, where every
variant and the verification run the real graph with OpenVINO's int8 kernels (``assd.precision.backend``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from assd.calibration.cache import cache_run_id
from assd.calibration.paths import check_graph_outputs, private_workdir
from assd.calibration.recipe import KeptLayer, Recipe
from assd.calibration.run_set import CALIBRATION_RUN_KEY, mark_graph, new_run_id
from assd.errors import CheckFailed, UserError
from assd.precision.backend import PrecisionBackend, choose_precision_backend
from assd.precision.evaluator import VariantResult
from assd.precision.report import REPORT_FILES, write_report
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
from assd.precision.uncertainty import images_needed
from assd.precision.verify import ACCEPT, Verification, Verifier, verification_dataset, verified_search
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
    images: int = DEFAULT_EVAL_IMAGES  # search images (evenly spaced over data)
    report_dir: str | None = None  # default: <output stem>.precision/ beside the output
    metric: str | None = None
    verify_data: str | None = None  # verification images (default: every image of data)
    accept: str = "conservative"  # the tolerance is checked on Δ's conservative bound, or its point estimate
    backend: str = "auto"  # where variants and the verification run: auto/onnxruntime, or openvino (the CPU target)
    threads: int | None = None  # ONNX Runtime's intra-op threads / OpenVINO's INFERENCE_NUM_THREADS (None: theirs)
    performance_hint: str | None = None  # OpenVINO's PERFORMANCE_HINT (latency, throughput)

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
    final: VariantResult  # the written graph, evaluated on its own on the search images
    tolerance: float
    verification: Verification  # the written graph on the verification images (decides ``met``)
    rounds: list[dict] = field(default_factory=list)  # search target and verification per round
    images_needed: int | None = None  # verification images for the tolerance to be resolved (see uncertainty)
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.verification.met(self.tolerance)


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
    if options.accept not in ACCEPT:
        raise UserError(f"--accept {options.accept}: choose one of {', '.join(ACCEPT)}")
    check_annotated(options.data)
    if options.verify_data:
        check_annotated(options.verify_data, "--verify-data")
    if options.calibration is not None and options.precision == "int8":
        _check_calibration(options.calibration)
    check_reference(options.reference)
    check_backend(options)
    calibration = options.calibration if options.precision == "int8" else None
    report = options.report_folder()
    if report.exists() and not report.is_dir():
        raise UserError(f"--report {report}: is a file: pass a folder for the report")
    check_graph_outputs(options.output, calibration.cache if calibration else None,
                        {"ONNX": options.onnx, "--reference": options.reference},
                        [options.data, options.verify_data, calibration.data if calibration else None],
                        folders={"--report": (report, tuple(REPORT_FILES.values()))})
    return tolerance


def check_backend(options: DebugOptions) -> PrecisionBackend:
    """``--backend`` (auto/onnxruntime or openvino), ``--threads`` and ``--performance-hint``, before any work."""
    return choose_precision_backend(options.onnx, options.backend, options.threads, options.performance_hint,
                                    options.precision)


def check_reference(reference: str) -> None:
    """The reference is the model before any precision change: a checkpoint or an fp32 ONNX graph."""
    from assd.runtime.metadata import read_metadata

    path = Path(reference)
    if not path.is_file():
        raise UserError(f"--reference {reference}: no such file: pass the checkpoint (.pt) or fp32 ONNX "
                        "the graph was exported from")
    if path.suffix.lower() == ".onnx":
        precision = read_metadata(path).precision
        if precision != "fp32":
            raise UserError(f"--reference {reference}: is a {precision} graph, not a reference: pass the checkpoint "
                            "(.pt) or the fp32 ONNX export it was made from")
    elif path.suffix.lower() not in (".pt", ".pth"):
        raise UserError(f"--reference {reference}: not a checkpoint (.pt) or fp32 ONNX graph: pass the one the "
                        "graph was exported from")


def _mark_ranges_run(graph, options: DebugOptions):
    """An int8 graph records the run that measured its ranges (``assd.calibration_run_id``, as calibrate's
    graphs do): the ``--calib-cache`` this run reused or wrote holds that run's id, so build-engine can tell
    the graph's own cache from another run's (``assd.calibration.run_set.check_graph_cache_set``)."""
    cache = options.calibration.cache if options.calibration and options.precision == "int8" else None
    ranges_run = cache_run_id(cache) if cache else None
    return mark_graph(graph, ranges_run, CALIBRATION_RUN_KEY) if ranges_run else graph


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
                verification: Verification, tolerance: float, backend: dict | None = None) -> Recipe:
    layers = []
    for s in kept:
        why = [(f"kept high alone: Δ {s.kept_high.delta_points:+.2f} points (every layer low: "
               f"{all_low.delta_points:+.2f})")]
        if s.lowered is not None:
            why.append(f"lowered alone: Δ {s.lowered.delta_points:+.2f}")
        if s.layer.name in result.needed:
            why.append(f"the final set without it: Δ {result.needed[s.layer.name]:+.2f} on the search images "
                       f"(tolerance ±{tolerance:g})")
        layers.append(KeptLayer(s.layer.name, s.layer.node, round(s.layer.share, 6), "; ".join(why)))
    return Recipe(setup.precision, layers, model=setup.metadata.model_config.name, tolerance_points=tolerance,
                  delta_map_points={"low": round(all_low.delta_points, 4),
                                    "final": round(verification.delta_points, 4)},
                  calibration=setup.calibration, backend=backend)


def _verifier(options: DebugOptions, setup: PrecisionSetup, metadata, echo: Callable[[str], None],
              backend: PrecisionBackend) -> Verifier:
    """The verification images (every image of --verify-data, else of --data) and the reference on them."""
    spec = options.verify_data or options.data
    dataset = verification_dataset(spec, metadata, options.onnx, "--verify-data" if options.verify_data else "--data")
    same = options.verify_data is None or options.verify_data == options.data
    if same and len(dataset) == len(setup.images):
        echo(f"warning: --images {options.images} takes every image of --data: no image is held out from the search "
             "(pass --verify-data, or more images in --data, for an independent check)")
    _result, reference = reference_result(options.reference, dataset, metadata, options.metric, echo)
    return Verifier(spec, dataset, setup.images, same, metadata, reference, setup.evaluator.metric, options.accept,
                    backend.runner_options())


def _search_and_verify(setup: PrecisionSetup, sensitivities: list[LayerSensitivity], tolerance: float,
                       verifier: Verifier, echo: Callable[[str], None]):
    """(search result, kept layers, the final graph on the search images, its verification, rounds)."""
    last: dict = {}

    def choose(target: float) -> list[LayerSensitivity]:
        last["result"] = search(setup.evaluator, sensitivities, target, echo)
        kept, last["final"] = kept_layers(setup, last["result"], sensitivities, target, echo)
        return kept

    def verify(kept: list[LayerSensitivity]) -> Verification:
        return verifier.verify(setup.graph([s.layer for s in kept]))

    kept, verification, rounds = verified_search(choose, verify, tolerance, echo)
    return last["result"], kept, last["final"], verification, rounds


def debug_precision(options: DebugOptions, echo: Callable[[str], None] = print) -> DebugResult:
    """Run the debugger (see the module docstring); writes ``options.output`` and the report folder."""
    from assd.export.onnx_export import check_and_serialize

    tolerance = check_options(options)
    backend = check_backend(options)
    started = time.perf_counter()
    model, metadata = load_fp32_source(options.onnx, options.output, options.precision)
    calibration = options.calibration or CalibrationRequest(data=options.data)
    images = eval_images(options.data, options.images, metadata, options.onnx)
    reference = reference_result(options.reference, images, metadata, options.metric, echo)
    seconds = {}
    with private_workdir() as workdir:
        setup = prepare(options.onnx, model, metadata, options.precision, images, reference, options.reference,
                        calibration, workdir, options.metric, echo, backend)
    verifier = _verifier(options, setup, metadata, echo, backend)
    seconds["setup"] = time.perf_counter() - started
    if options.precision == "fp16":
        report_fp16_range(model, metadata, images, options.data, echo)
    where = backend.describe(setup.evaluator.threads)
    if backend.real_graphs:
        where += " (every variant the real graph, as deployed)"
    echo(f"{len(setup.layers)} {options.precision} layers; {where}, {len(images)} search images per variant, "
         f"{len(verifier.dataset)} verification images")
    mark = time.perf_counter()
    step = max(len(setup.layers) // 4, 1)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            echo(f"  sensitivity: {done}/{total} layers ({time.perf_counter() - mark:.0f} s)")

    all_low, sensitivities = analyze(setup.evaluator, setup.layers, True, progress)
    seconds["sensitivity"] = time.perf_counter() - mark
    low = setup.evaluator.interval(all_low)
    echo(f"every layer {options.precision}: Δ mAP {low.text() if low else f'{all_low.delta_points:+.2f}'} points "
         f"on the search images (tolerance ±{tolerance:g})")
    mark = time.perf_counter()
    result, kept, final, verification, rounds = _search_and_verify(setup, sensitivities, tolerance, verifier, echo)
    seconds["search"] = time.perf_counter() - mark
    graph = mark_graph(setup.graph([s.layer for s in kept]), run_id := new_run_id())
    graph = check_and_serialize(_mark_ranges_run(graph, options))
    seconds["total"] = time.perf_counter() - started
    debug = DebugResult(setup, all_low, sensitivities, result, kept, final, tolerance, verification, rounds,
                        images_needed(verification.interval, tolerance), seconds)
    if debug.images_needed and debug.images_needed > verification.images:
        echo(f"warning: ±{tolerance:g} points needs about {debug.images_needed} verification images here (the 95 % "
             f"interval of Δ is ±{verification.interval.half_width:.2f} on {verification.images}; it shrinks as "
             "1/sqrt(images)); --images and the data are below that")
    recipe = dataclasses.replace(make_recipe(setup, all_low, kept, result, verification, tolerance,
                                             backend.to_dict(setup.evaluator.threads)), run_id=run_id)
    debug.files = write_report(options.report_folder(), debug, recipe, options)  # the report first, the graph last:
    atomic_write_bytes(options.output, graph)  # a graph always has its report (assd.calibration.run_set)
    debug.files["graph"] = str(options.output)
    return debug


def report_fp16_range(model, metadata, images, source: str, echo: Callable[[str], None] = print):
    """The fp16 range audit (``assd.calibration.fp16_range``) of ``model``'s fp16 conversion on the evaluation
    images, said through ``echo``: tensors out of float16's range, which ``build-engine --fp16`` keeps fp32."""
    from assd.calibration.fp16_range import audit_fp16_range
    from assd.export.fp16 import convert_to_fp16, fp16_source_tensors
    from assd.runtime.preprocess import preprocess

    batch = metadata.fixed_batch or 1
    batches = (preprocess([images.load_image(j) for j in range(i, i + batch)], metadata.model_config).numpy()
               for i in range(0, len(images) // batch * batch, batch))
    audit = audit_fp16_range(model, fp16_source_tensors(convert_to_fp16(model)), batches, source=source)
    echo(audit.summary().replace("kept in float32", "which build-engine --fp16 keeps in float32"))
    for line in audit.lines()[:10]:
        echo(f"  {line}")
    return audit


def check_result(debug: DebugResult) -> None:
    if not debug.met:
        check = debug.verification
        needed = (f"; about {debug.images_needed} verification images would resolve ±{debug.tolerance:g}"
                  if debug.images_needed and debug.images_needed > check.images else "")
        raise CheckFailed(f"the final graph ({len(debug.kept)} layers high) on {debug.setup.evaluator.backend.label} "
                          f"has {check.text()}: checked |Δ| "
                          f"({check.accept}) {check.bound:.2f} exceeds ±{debug.tolerance:g} after {len(debug.rounds)} "
                          f"search rounds{needed}; the report says where the loss is")
