"""The debugger's report folder: ``table.md`` / ``table.json`` (the verification, ranked layers, per-map and
per-class Δ, the search), ``sensitivity.png`` (per layer, in network order) and ``recipe.json``.

Every Δ mAP is given with its 95 % paired bootstrap interval (``assd.precision.uncertainty``) and the
images it was measured on: the search images (sensitivities, search) or the verification images."""

from __future__ import annotations

from pathlib import Path

from assd.calibration.recipe import Recipe
from assd.precision.evaluator import VariantResult
from assd.precision.search import ranked
from assd.precision.uncertainty import Interval
from assd.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

REPORT_FILES = {"table": "table.md", "json": "table.json", "plot": "sensitivity.png", "recipe": "recipe.json"}


def _pct(share: float) -> str:
    return f"{100 * share:.2f}"


def _map_rows(low: VariantResult, final: VariantResult) -> list[str]:
    rows = [("| map | size | loc err (all low) | conf err (all low) | map tensor err (all low) | loc err (final) "
            "| conf err (final) | map tensor err (final) |"), "|---|---|---|---|---|---|---|---|"]
    for a, b in zip(low.per_map, final.per_map):
        size = "x".join(str(v) for v in a["size"])
        rows.append(f"| {a['map']} | {size} | {a['loc_error']:.4f} | {a['conf_error']:.4f} | {_map_error(a)} | "
                    f"{b['loc_error']:.4f} | {b['conf_error']:.4f} | {_map_error(b)} |")
    return rows


def _map_error(entry: dict) -> str:
    """The map tensor's error, '-' where it is not measured (OpenVINO runs the graphs as they deploy)."""
    return f"{entry['map_error']:.4f}" if "map_error" in entry else "-"


def _delta(result: VariantResult | None) -> str:
    """Δ with its interval (search images)."""
    if result is None:
        return ""
    return result.interval.text() if result.interval else f"{result.delta_points:+.2f}"


def _interval(interval: Interval | None, delta: float) -> str:
    return interval.text() if interval else f"{delta:+.2f}"


def add_intervals(debug) -> None:
    """Compute the interval of every variant the report shows (each once; cached on the variant)."""
    evaluator = debug.setup.evaluator
    for variant in [debug.all_low, debug.final, *(s.kept_high for s in debug.sensitivities),
                    *(s.lowered for s in debug.sensitivities if s.lowered is not None),
                    *(evaluator.cache[t["low"]] for t in debug.search.trials if t["low"] in evaluator.cache)]:
        evaluator.interval(variant)


def _verification_lines(debug, options) -> list[str]:
    verification, setup = debug.verification, debug.setup
    held = verification.held_out_images
    lines = [(f"- search images: {len(setup.images)} of `{options.data}` (evenly spaced): sensitivities, search and the "
             f"calibration method; verification images: all {verification.images} of `{verification.data}` "
             f"({held} of them not used by the search)"),
             (f"- rule: {verification.rule}; Δ are in points against the reference, "
             "`Δ [low, high]` = point estimate [95 % paired bootstrap interval over images]")]
    if debug.images_needed:
        below = " — **more than the verification images**" if debug.images_needed > verification.images else ""
        lines.append(f"- images needed for ±{debug.tolerance:g} to be resolved (interval ±{debug.tolerance / 2:g}): "
                     f"about {debug.images_needed}{below}; `--images` {len(setup.images)}")
    return lines


def _rounds(debug) -> list[str]:
    lines = ["", "## Verification rounds", "",
             ("| round | search target (search images) | layers kept high | Δ on all verification images | "
             "Δ held out from the search | checked abs Δ | meets ±tolerance |"), "|---|---|---|---|---|---|---|"]
    def text(interval: dict | None, delta: float, images: int) -> str:
        if interval is None:
            return f"{delta:+.2f} ({images} images)"
        return (f"{interval['delta_map_points']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}] "
                f"({interval['images']} images)")

    for number, entry in enumerate(debug.rounds, 1):
        check = entry["verification"]
        whole, held = check["interval"], check["held_out"]
        met = check["checked_abs_points"] <= debug.tolerance + 1e-9
        lines.append(f"| {number} | ±{entry['search_target_points']:g} | {len(entry['kept_high'])} | "
                     f"{text(whole, check['delta_map_points'], check['images'])} | "
                     f"{text(held, float('nan'), check['held_out_images']) if held else '-'} | "
                     f"{check['checked_abs_points']:.2f} | {'yes' if met else 'no'} |")
    return lines


def per_class(reference, low: VariantResult, final: VariantResult) -> list[dict]:
    return [{"class": name, "reference_ap": 100 * ap,
             "delta_all_low": 100 * (low.result.per_class.get(name, 0.0) - ap),
             "delta_final": 100 * (final.result.per_class.get(name, 0.0) - ap)}
            for name, ap in reference.per_class.items()]


def markdown(debug, recipe: Recipe, options) -> str:
    setup, low, final, verification = debug.setup, debug.all_low, debug.final, debug.verification
    reference = setup.reference
    kept_names = {s.layer.name for s in debug.kept}
    evaluated = setup.evaluator.runs
    lines = [(f"# Precision debugging: {Path(options.onnx).name} ({setup.metadata.model_config.name}, "
             f"{setup.precision})"), "",
             (f"- reference `{setup.reference_name}`: {reference.metric} mAP {100 * reference.mAP:.2f} on the search "
              f"images, {100 * verification.reference.mAP:.2f} on the verification images"),
             *_verification_lines(debug, options),
             (f"- backend: {setup.evaluator.backend.describe(setup.evaluator.threads)}"
              + ("; every variant and the verification ran the real graph (int8 kernels), as eval-engine "
                 "--backend openvino runs it; kept layers are fp32" if setup.evaluator.backend.real_graphs else ""))]
    if setup.calibration:
        calibration = setup.calibration
        line = (f"- calibration: {calibration['method']} ranges from {calibration['images']} images of "
                f"`{calibration['source']}`" + (" (cache reused)" if calibration.get("cache_reused") else ""))
        if setup.method_deltas:
            line += "; `auto` compared " + ", ".join(f"{m} Δ {d:+.2f}" for m, d in setup.method_deltas.items())
        lines.append(line)
    lines += [(f"- every layer {setup.precision} (search images): mAP {low.map_points:.2f}, Δ {_delta(low)}, "
              f"loc error {low.loc_error:.4f}, conf error {low.conf_error:.4f}"),
              f"- final graph `{Path(options.output).name}`: {len(debug.kept)} of {len(setup.layers)} layers kept high "
              f"({_pct(sum(s.layer.share for s in debug.kept))} % of the MACs); search images: Δ {_delta(final)}; "
              f"verification: mAP {100 * verification.result.mAP:.2f}, "
              f"Δ {_interval(verification.interval, verification.delta_points)} on {verification.images} images"
              + (f", held out from the search Δ {verification.held_out.text()} on {verification.held_out_images}"
                 if verification.held_out and verification.held_out_images != verification.images else "")
              + f"; checked |Δ| ({verification.accept}) {verification.bound:.2f} against ±{debug.tolerance:g} — "
              + ("meets the tolerance" if debug.met else "**does not meet the tolerance**"),
              (f"- time: setup {debug.seconds['setup']:.0f} s, sensitivity {debug.seconds['sensitivity']:.0f} s, "
              f"search {debug.seconds['search']:.0f} s, total {debug.seconds['total']:.0f} s ({evaluated} variants "
              f"evaluated, {setup.evaluator.backend.label} CPU)")]
    lines += _rounds(debug)
    lines += ["", "## Layers kept in higher precision", ""]
    if recipe.kept_high:
        lines += ["| layer | MACs % | why |", "|---|---|---|"]
        lines += [f"| `{k.layer}` | {_pct(k.macs_share)} | {k.why} |" for k in recipe.kept_high]
    else:
        lines.append(f"none: the plain {setup.precision} graph meets the tolerance")
    lines += ["", "## Layers by sensitivity", "",
              (f"On the {len(setup.images)} search images. Δ mAP in points against the reference [95 % paired bootstrap "
               "interval]; points recovered = |Δ every layer low| - |Δ only this layer high|; errors are relative to "
               "the fp32 graph's outputs."), "",
              ("| rank | layer | MACs % | Δ mAP, only this layer high | points recovered | Δ mAP, only this layer "
               "low | loc err, only low | conf err, only low | kept high |"), "|---|---|---|---|---|---|---|---|---|"]
    for rank, s in enumerate(ranked(debug.sensitivities), 1):
        lowered = s.lowered
        lines.append(f"| {rank} | `{s.layer.name}` | {_pct(s.layer.share)} | {_delta(s.kept_high)} | "
                     f"{s.recovery:+.2f} | {_delta(lowered)} | {lowered.loc_error:.4f} | "
                     f"{lowered.conf_error:.4f} | {'yes' if s.layer.name in kept_names else ''} |")
    lines += ["", "## Per prediction map", "", ("Relative output error against the fp32 graph on each map's anchors "
              "(loc, conf) and on the map tensor the heads read (the attention unit's output)."), ""]
    lines += _map_rows(low, final)
    lines += ["", "## Per class AP", "", f"On the {len(setup.images)} search images.", "",
              "| class | reference AP | Δ every layer low | Δ final |", "|---|---|---|---|"]
    lines += [f"| {row['class']} | {row['reference_ap']:.2f} | {row['delta_all_low']:+.2f} | {row['delta_final']:+.2f} |"
              for row in per_class(reference, low, final)]
    lines += ["", "## Search", "", f"The last round's sets, on the {len(setup.images)} search images.", "",
              "| # | layers kept high | Δ mAP |", "|---|---|---|"]
    cache = setup.evaluator.cache
    for number, trial in enumerate(debug.search.trials, 1):
        names = ", ".join(f"`{n}`" for n in trial["kept"][:6]) + (" ..." if len(trial["kept"]) > 6 else "")
        lines.append(f"| {number} | {len(trial['kept'])}: {names or '-'} | {_delta(cache.get(trial['low']))} |")
    return "\n".join(lines) + "\n"


def plot_png(debug) -> bytes:
    """Bar plot per layer in network order: Δ mAP lowered alone, and recovered by keeping it high alone."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ordered = sorted(debug.sensitivities, key=lambda s: s.layer.index)
    kept = {s.layer.name for s in debug.kept}
    positions = list(range(len(ordered)))
    figure = Figure(figsize=(max(8.0, 0.16 * len(ordered)), 4.5), dpi=100)
    axes = figure.add_subplot()
    def spread(results: list[VariantResult]) -> list[list[float]]:  # error bars: the 95 % interval
        return [[r.delta_points - r.interval.low if r.interval else 0.0 for r in results],
                [r.interval.high - r.delta_points if r.interval else 0.0 for r in results]]

    lowered = [s.lowered for s in ordered]
    axes.bar([p - 0.2 for p in positions], [r.delta_points for r in lowered], width=0.4, yerr=spread(lowered),
             error_kw={"lw": 0.6, "capsize": 1.5}, color="#d62728", label="Δ mAP, only this layer low (95 % interval)")
    axes.bar([p + 0.2 for p in positions], [s.recovery for s in ordered], width=0.4, color="#1f77b4",
             label="points recovered, only this layer high")
    for p, s in zip(positions, ordered):
        if s.layer.name in kept:
            axes.axvspan(p - 0.5, p + 0.5, color="#2ca02c", alpha=0.15, lw=0)
    axes.axhline(0, color="black", lw=0.6)
    for sign in (-1, 1):
        axes.axhline(sign * debug.tolerance, color="gray", lw=0.6, ls="--")
    axes.set_xticks(positions)
    axes.set_xticklabels([s.layer.name for s in ordered], rotation=90, fontsize=6)
    axes.set_ylabel("mAP points")
    check = debug.verification
    axes.set_title(f"{debug.setup.metadata.model_config.name} {debug.setup.precision}: sensitivity per layer on "
                   f"{len(debug.setup.images)} search images (green: kept high; dashed: ±tolerance; every layer low: "
                   f"Δ {_delta(debug.all_low)})\nfinal graph on {check.images} verification images: Δ "
                   f"{_interval(check.interval, check.delta_points)}", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def as_json(debug, recipe: Recipe, options) -> dict:
    setup = debug.setup

    def variant(result: VariantResult) -> dict:  # on the search images
        return {"mAP": result.map_points, "delta_map_points": result.delta_points, "loc_error": result.loc_error,
                "conf_error": result.conf_error, "per_map": result.per_map,
                "interval": result.interval and result.interval.to_dict()}

    return {"onnx": str(options.onnx), "model": setup.metadata.model_config.name, "precision": setup.precision,
            "data": options.data, "images": len(setup.images), "search_images": len(setup.images),
            "metric": setup.reference.metric, "verification": debug.verification.to_dict(), "rounds": debug.rounds,
            "images_needed": debug.images_needed,
            "reference": {"artifact": setup.reference_name, "mAP": 100 * setup.reference.mAP},
            "calibration": setup.calibration, "backend": recipe.backend, "tolerance_points": debug.tolerance,
            "all_low": variant(debug.all_low),
            "final": {**variant(debug.final), "graph": str(options.output), "met": debug.met,
                      "kept_high": [s.layer.name for s in debug.kept],
                      "kept_macs_share": sum(s.layer.share for s in debug.kept)},
            "layers": [s.to_dict() for s in ranked(debug.sensitivities)],
            "per_class": per_class(setup.reference, debug.all_low, debug.final),
            "search": [{key: value for key, value in trial.items() if key != "low"} for trial in debug.search.trials],
            "seconds": debug.seconds, "variants_evaluated": setup.evaluator.runs,
            "recipe": recipe.to_dict()}


def write_report(folder: Path, debug, recipe: Recipe, options) -> dict[str, str]:
    """Write the four report files (atomically) into ``folder``; returns {kind: path}."""
    files = {kind: folder / name for kind, name in REPORT_FILES.items()}
    add_intervals(debug)
    atomic_write_text(files["table"], markdown(debug, recipe, options))
    atomic_write_json(files["json"], as_json(debug, recipe, options))
    atomic_write_bytes(files["plot"], plot_png(debug))
    recipe.save(files["recipe"])
    return {kind: str(path) for kind, path in files.items()}
