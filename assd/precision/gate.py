"""Accuracy-gated precision graphs: ``build-engine --int8/--fp16 --max-delta-map`` and ``calibrate``'s
``--calib-method auto`` / ``--max-delta-map`` / ``--keep-high``.

The gate runs before any TensorRT build (precision lives in the graph): make the INT8 / FP16 graph,
measure its Δ mAP against the fp32 graph on ``--eval-images`` search images of ``--eval-data`` (ONNX
Runtime, CPU), and when it exceeds the budget bisect for the layers to keep in higher precision. The
chosen graph (and ``--calib-method auto``'s method, chosen on the same search images) is then graded
on every image of ``--eval-data`` by the debugger's rule (``assd.precision.verify``: the conservative
bound of the paired bootstrap interval within ``--max-delta-map``; otherwise the search runs again
with a stricter target, then exit 1). A recipe (``--keep-high recipe.json``) applies a known set
without searching, and is verified the same way. The kept layers are recorded in the graph's metadata
(``assd.kept_high``), which ``build-engine`` copies into the engine's sidecar.

``finish``: the search runs on the fp32-based variants (one switchable graph), but what is verified,
written and then deployed can be another graph: ``build-engine`` passes the engine stage's composition
(``assd.engine.gated``: int8 Convs on an fp16 base, fp32 islands), so every graph the gate verifies is
composed first and the graph written is byte for byte the one verified (``GateResult.sha256``). Its
CPU run rounds every fp16 tensor as the engine stores it (``assd.runtime.fp16_preview``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from assd.calibration.paths import check_graph_outputs, private_workdir
from assd.calibration.recipe import Recipe, load_recipe, resolve_layers, set_kept_high
from assd.errors import CheckFailed, UserError
from assd.precision.debugger import check_tolerance, kept_layers
from assd.precision.search import LayerSensitivity, SearchResult, search_by_bisection
from assd.precision.setup import PRECISIONS, CalibrationRequest, eval_images, prepare
from assd.precision.verify import ACCEPT, Verifier, graph_detections, verification_dataset, verified_search
from assd.runtime.metadata import load_fp32_source
from assd.utils import atomic_write_bytes

DEFAULT_GATE_IMAGES = 50
# (the float graph to finish: fp16 the fp32 graph, int8 its fp32-based Q/DQ graph; node names to keep fp32)
Finish = Callable[[onnx.ModelProto, list[str]], onnx.ModelProto]


@dataclass
class GateRequest:
    max_delta_map: float | None = None  # Δ mAP budget in points (None: no gate)
    keep_high: str | None = None  # recipe file
    eval_data: str | None = None  # annotated data for Δ mAP (default: the calibration data when a data spec)
    eval_images: int = DEFAULT_GATE_IMAGES
    accept: str = "conservative"  # the budget is checked on Δ's conservative bound, or its point estimate


@dataclass
class GateResult:
    graph: str
    precision: str
    kept_high: list[str] = field(default_factory=list)
    delta_low: float | None = None  # Δ mAP points of the plain low-precision graph (search images)
    delta_final: float | None = None  # the written graph on the verification images
    method: str | None = None
    verification: dict | None = None  # ``Verification.to_dict()`` of the written graph
    sha256: str = ""  # of the written graph's bytes: the very bytes verified
    budget: float | None = None  # --max-delta-map
    search: str = ""  # what the search evaluated (the verified graph may be composed from it: ``finish``)

    def to_dict(self) -> dict:
        """What an engine sidecar records of the gate (``accuracy_gate``)."""
        return {"graph": Path(self.graph).name, "graph_sha256": self.sha256, "precision": self.precision,
                "max_delta_map": self.budget, "kept_high": self.kept_high, "calibration_method": self.method,
                "plain_delta_map_points_search": self.delta_low, "search": self.search,
                "delta_map_points": self.delta_final, "verification": self.verification}


def _eval_data(request: GateRequest, calibration: CalibrationRequest | None) -> str | None:
    if request.eval_data:
        return request.eval_data
    if calibration is not None and not Path(calibration.data).is_dir():
        return calibration.data
    return None


def check_request(onnx_path: str, output: str, precision: str, calibration: CalibrationRequest | None,
                  request: GateRequest) -> tuple[float | None, str | None]:
    """Checks that need no model run; returns (the Δ mAP budget, the evaluation data spec)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision}: the accuracy gate makes int8 or fp16 graphs")
    budget = None if request.max_delta_map is None else check_tolerance(request.max_delta_map, precision,
                                                                           "--max-delta-map")
    if request.eval_images < 1:
        raise UserError(f"--eval-images {request.eval_images}: must be at least 1")
    if request.accept not in ACCEPT:
        raise UserError(f"--accept {request.accept}: choose one of {', '.join(ACCEPT)}")
    data = _eval_data(request, calibration)
    needs_eval = budget is not None or (calibration is not None and calibration.method == "auto")
    if needs_eval and data is None:
        raise UserError("Δ mAP needs annotated images: pass --eval-data SPEC (voc:ROOT, coco:IMAGES:JSON or "
                        "synthetic:N); an image folder has no ground truth")
    check_graph_outputs(output, calibration.cache if calibration else None,
                        {"ONNX": onnx_path, "--keep-high": request.keep_high},
                        [calibration.data if calibration else None, request.eval_data])
    return budget, data if needs_eval or request.keep_high else None


def _checked_recipe(path: str | None, model, precision: str) -> Recipe | None:
    """The ``--keep-high`` recipe, refused before any work when it is for another precision or names layers
    that are not in ``model`` (the fp32 graph)."""
    if not path:
        return None
    recipe = load_recipe(path)
    if recipe.precision != precision:
        raise UserError(f"--keep-high {path}: a {recipe.precision} recipe; this is a {precision} build")
    if precision == "int8":
        from assd.calibration.placement import layer_display_names

        names = layer_display_names(model.graph)
    else:
        from assd.precision.layers import fp16_layers

        names = {layer.node: layer.name for layer in fp16_layers(model)}
    resolve_layers(recipe.layer_names, names, f"--keep-high {path}")
    return recipe


def gate_graph(onnx_path: str, output: str, precision: str, calibration: CalibrationRequest | None,
               request: GateRequest, echo: Callable[[str], None] = print, finish: Finish | None = None) -> GateResult:
    """Write the gated ``precision`` graph of the fp32 ``onnx_path`` to ``output`` (see the module docstring;
    ``finish``: what turns a chosen graph into the graph to verify and write). Raises CheckFailed (after
    writing the best graph found) when the budget cannot be met."""
    budget, data = check_request(onnx_path, output, precision, calibration, request)
    model, metadata = load_fp32_source(onnx_path, output, precision)
    recipe = _checked_recipe(request.keep_high, model, precision)
    if precision == "int8" and calibration is None:
        raise UserError(f"{onnx_path}: --int8 from an fp32 graph needs calibration images: pass --calib-data SPEC")
    if data is None and recipe is None:
        raise UserError("nothing to gate: pass --max-delta-map, --keep-high or (with --int8) --calib-method auto")
    if data is None:  # a recipe and nothing to measure: apply it as is
        data_images = None
    else:
        data_option = "--eval-data" if request.eval_data else "--calib-data"
        data_images = eval_images(data, request.eval_images, metadata, onnx_path, (data_option, "--eval-images"))
    with private_workdir() as workdir:
        if data_images is None:
            return _apply_recipe_unmeasured(onnx_path, output, precision, calibration, recipe, echo, finish)
        setup = prepare(onnx_path, model, metadata, precision, data_images, None, onnx_path, calibration, workdir,
                        echo=echo)
    evaluator, every = setup.evaluator, frozenset(range(len(setup.layers)))
    names = {layer.node: layer.name for layer in setup.layers}
    plain = evaluator.evaluate(every)
    dataset = verification_dataset(data, metadata, onnx_path, data_option)
    verifier = Verifier(data, dataset, data_images, True, metadata, graph_detections(model, dataset, metadata),
                        evaluator.metric, request.accept)
    search = f"fp32-based {precision} variants" if finish is not None else f"{precision} variants"
    echo(f"accuracy gate on {len(data_images)} search images of {data}, verified on all {len(dataset)} (reference: "
         f"the fp32 graph, {plain.result.metric} mAP {100 * setup.reference.mAP:.2f} on the search images): plain "
         f"{precision} Δ mAP {plain.delta_points:+.2f} points" + (f" (budget ±{budget:g})" if budget is not None else "")
         + (f"; the search runs on {search}, each graph verified is the graph to build" if finish is not None else ""))
    graphs = _Graphs(setup, finish)
    every_layer = [LayerSensitivity(layer, i, None, None) for i, layer in enumerate(setup.layers)]
    if recipe is not None:
        nodes = resolve_layers(recipe.layer_names, names, f"--keep-high {request.keep_high}")
        chosen = [s for s in every_layer if s.layer.node in nodes]
        verification = verifier.verify(graphs.model([s.layer for s in chosen]))
    elif budget is None:
        chosen, verification = [], verifier.verify(graphs.model([]))
    else:
        def choose(target: float) -> list[LayerSensitivity]:
            result = SearchResult([], plain, True)
            if abs(plain.delta_points) > target + 1e-9:
                echo(f"over ±{target:g} on the search images: bisecting the {len(setup.layers)} layers for the fewest "
                     f"to keep {'out of int8' if precision == 'int8' else 'in fp32'}")
                result = search_by_bisection(evaluator, setup.layers, target)
                echo(f"  {len(result.trials)} variants evaluated")
            return kept_layers(setup, result, every_layer, target, echo)[0]  # checked on the real graph

        chosen, verification, _rounds = verified_search(
            choose, lambda kept: verifier.verify(graphs.model([s.layer for s in kept])), budget, echo)
    kept = [s.layer for s in chosen]
    blob = graphs.serialized(kept)
    atomic_write_bytes(output, blob)
    share = 100 * sum(layer.share for layer in kept)
    echo(f"wrote the {precision} graph {output}: verified: {verification.text()}, kept high: "
         f"{', '.join(layer.name for layer in kept) or 'none'}" + (f" ({share:.2f} % of the MACs)" if kept else ""))
    gate = GateResult(output, precision, [layer.name for layer in kept], plain.delta_points, verification.delta_points,
                      setup.method, verification.to_dict(), hashlib.sha256(blob).hexdigest(), budget, search)
    if budget is not None and not verification.met(budget):
        raise CheckFailed(f"{verification.text()}: checked |Δ| ({verification.accept}) {verification.bound:.2f} exceeds "
                          f"--max-delta-map {budget:g} "
                          f"with {len(kept)} layers high (graph written to {output}); run 'assd debug-precision' for the "
                          "full report")
    return gate


class _Graphs:
    """The real graph of each kept set, ``finish``ed, serialized once: what is verified is what is written."""

    def __init__(self, setup, finish: Finish | None):
        self.setup, self.finish, self.made = setup, finish, {}

    def serialized(self, kept: list) -> bytes:
        from assd.export.onnx_export import check_and_serialize

        key = tuple(layer.node for layer in kept)
        if key not in self.made:
            self.made[key] = check_and_serialize(finished(self.setup, kept, self.finish))
        return self.made[key]

    def model(self, kept: list) -> onnx.ModelProto:
        return onnx.ModelProto.FromString(self.serialized(kept))


def finished(setup, kept: list, finish: Finish | None) -> onnx.ModelProto:
    """``setup.graph(kept)``, then ``finish``: fp16 gets the fp32 graph and the kept layers' nodes (to keep
    fp32), int8 its Q/DQ graph with the kept layers unquantized; ``assd.kept_high`` set on the result."""
    model = setup.graph(kept)
    if finish is None:
        return model
    if setup.precision == "fp16":
        model = finish(setup.fp32_model, [name for layer in kept for name in layer.nodes])
    else:
        model = finish(model, [])
    set_kept_high(model, setup.precision, [layer.name for layer in kept])
    return model


def _apply_recipe_unmeasured(onnx_path: str, output: str, precision: str, calibration: CalibrationRequest | None,
                             recipe, echo: Callable[[str], None], finish: Finish | None = None) -> GateResult:
    """A recipe without evaluation data: the graph with the recipe's layers high, nothing measured."""
    from assd.export.onnx_export import check_and_serialize

    model, metadata = load_fp32_source(onnx_path, output, precision)
    if precision == "int8":
        from assd.calibration.quantize import quantize_int8

        with private_workdir() as workdir:
            result = quantize_int8(onnx_path, str(workdir / "int8.onnx"), calibration.data,
                                   num_images=calibration.images, method=calibration.method,
                                   cache_path=calibration.cache, percentile=calibration.percentile, echo=echo,
                                   num_bins=calibration.num_bins, keep_high=recipe.layer_names)
            graph = onnx.load(str(workdir / "int8.onnx"))
        kept = result.kept_high
        if finish is not None:
            graph = finish(graph, [])
            set_kept_high(graph, precision, kept)
    else:
        from assd.precision.layers import fp16_layers
        from assd.precision.setup import fp16_graph

        layers = fp16_layers(model)
        nodes = resolve_layers(recipe.layer_names, {layer.node: layer.name for layer in layers}, "--keep-high")
        chosen = [layer for layer in layers if layer.node in nodes]
        kept = [layer.name for layer in chosen]
        if finish is None:
            graph = fp16_graph(model, metadata, chosen)
        else:
            graph = finish(model, [name for layer in chosen for name in layer.nodes])
            set_kept_high(graph, precision, kept)
    blob = check_and_serialize(graph)
    atomic_write_bytes(output, blob)
    echo(f"wrote the {precision} graph {output} with the recipe's {len(kept)} layers kept high (no --eval-data: "
         "Δ mAP not measured)")
    return GateResult(output, precision, kept, method=calibration.method if calibration else None,
                      sha256=hashlib.sha256(blob).hexdigest(), search="none (a recipe, not measured)")
