"""``assd debug-precision``: the layers to keep in higher precision so that mAP stays within tolerance."""

from __future__ import annotations

import click

from assd.commands.outputs import force_option
from assd.commands.runtime_options import runner_options, runtime_click_options


@click.command("debug-precision")
@force_option
@runtime_click_options()
@click.argument("onnx_file")
@click.option("--data", required=True, help="Annotated evaluation data: voc:ROOT[:SETS], coco:IMAGES:JSON, synthetic[:N].")
@click.option("--reference", required=True, help="The checkpoint (.pt) or fp32 ONNX the mAP is compared with.")
@click.option("--precision", type=click.Choice(["int8", "fp16"]), default="int8", show_default=True)
@click.option("--tolerance", type=float, default=None,
              help="Largest |Δ mAP| in points for the final graph (default: int8 1.0, fp16 0.3).")
@click.option("--images", type=int, default=32, show_default=True,
              help="Search images per variant (evenly spaced over --data); the answer is verified on every image "
                   "of --data (or --verify-data).")
@click.option("--verify-data", default=None,
              help="Annotated data to verify the final graph on (default: every image of --data).")
@click.option("--accept", type=click.Choice(["conservative", "point"]), default="conservative", show_default=True,
              help="What --tolerance is checked against on the verification images: the end of Δ's 95 % paired "
                   "bootstrap interval farthest from 0, or the point estimate (what eval-engine checks).")
@click.option("--calib-data", default=None, help="Calibration images for int8 (folder or data spec; default: --data).")
@click.option("--calib-images", type=int, default=100, show_default=True, help="Calibration images.")
@click.option("--method", type=click.Choice(["entropy", "percentile", "max", "auto"]), default="entropy",
              show_default=True, help="Calibration method (auto: the best of the three by Δ mAP).")
@click.option("--calib-cache", default=None,
              help="JSON cache of the calibration ranges (all methods): reused when the ONNX file and settings match.")
@click.option("-o", "--output", required=True,
              help="The final graph (.onnx): kept-high layers applied and recorded in its metadata.")
@click.option("--report", "report_dir", default=None,
              help="Report folder (table.md, table.json, sensitivity.png, recipe.json); default: OUTPUT.precision/.")
def debug_precision_command(onnx_file, data, reference, precision, tolerance, images, verify_data, accept,
                            calib_data, calib_images, method, calib_cache, output, report_dir, backend, threads,
                            performance_hint):
    """Per-layer precision sensitivity of the fp32 ONNX_FILE by Δ mAP (on the CPU: ONNX Runtime, or OpenVINO
    with --backend openvino, the CPU target), and the fewest, cheapest layers to keep in higher precision so
    that the INT8 / FP16 graph stays within --tolerance."""
    from assd.precision.debugger import DebugOptions, check_result, debug_precision
    from assd.precision.search import ranked
    from assd.precision.setup import CalibrationRequest

    runtime = runner_options(backend, threads, performance_hint)
    calibration = CalibrationRequest(data=calib_data or data, images=calib_images, method=method, cache=calib_cache)
    options = DebugOptions(onnx=onnx_file, data=data, reference=reference, output=output, precision=precision,
                           tolerance=tolerance, calibration=calibration, images=images, report_dir=report_dir,
                           verify_data=verify_data, accept=accept, **runtime)
    debug = debug_precision(options, echo=click.echo)
    top = ", ".join(f"{s.layer.name} ({s.kept_high.delta_points:+.2f} kept high alone)"
                    for s in ranked(debug.sensitivities)[:3])
    click.echo(f"most sensitive: {top}")
    kept = ", ".join(s.layer.name for s in debug.kept) or "none"
    check = debug.verification
    on = debug.setup.evaluator.backend.label
    click.echo(f"kept high: {kept} ({100 * sum(s.layer.share for s in debug.kept):.2f} % of the MACs); final graph "
               f"on {on}: "
               f"{check.text()}; checked |Δ| ({accept}) {check.bound:.2f} (tolerance ±{debug.tolerance:g}; every layer "
               f"{precision}: {debug.all_low.delta_points:+.2f} on {len(debug.setup.images)} search images) in "
               f"{debug.seconds['total']:.0f} s")
    click.echo(f"wrote {output} and {debug.files['table']}, {debug.files['plot']}, {debug.files['recipe']}")
    check_result(debug)
