"""``assd calibrate`` and ``assd build-engine``: INT8/FP16 graphs and TensorRT engines (issue 6)."""

from __future__ import annotations

import click

from assd.commands.outputs import exclusive_flag, force_option

CALIB_METHODS = ["entropy", "percentile", "max", "auto"]


def _add_options(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def _calibration_options(command):
    """The --calib-* options shared by 'calibrate' and 'build-engine --int8'."""
    return _add_options(command, [
        click.option("--calib-images", type=int, default=500, show_default=True,
                     help="Calibration images (evenly spaced over the source)."),
        click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="entropy", show_default=True,
                     help="How activation ranges are chosen (auto: the best of the three by Δ mAP on --eval-data)."),
        click.option("--calib-cache", type=click.Path(dir_okay=False), default=None,
                     help="JSON cache of the ranges: reused when the ONNX file and settings match, else rewritten."),
    ])


def _gate_options(command):
    """The accuracy gate's options shared by 'calibrate' and 'build-engine' (assd.precision.gate)."""
    return _add_options(command, [
        click.option("--max-delta-map", type=float, default=None,
                     help="Δ mAP budget in points: over it, layers are kept high (out of int8; fp32 for fp16) until "
                     "the graph is within it. build-engine verifies the graph it builds."),
        click.option("--keep-high", type=click.Path(dir_okay=False), default=None,
                     help="A recipe.json from 'assd debug-precision': keep its layers high (no search)."),
        click.option("--eval-data", default=None,
                     help="Annotated images for Δ mAP (default: --calib-data when it is a data spec)."),
        click.option("--eval-images", type=int, default=50, show_default=True,
                     help="Search images of --eval-data; the chosen graph is verified on all of it."),
        click.option("--accept", type=click.Choice(["conservative", "point"]), default="conservative",
                     show_default=True, help="What --max-delta-map is checked against: the end of Δ's 95 % paired "
                     "bootstrap interval farthest from 0, or the point estimate."),
    ])


def _gate_request(max_delta_map, keep_high, eval_data, eval_images, accept):
    from assd.precision.gate import GateRequest

    return GateRequest(max_delta_map=max_delta_map, keep_high=keep_high, eval_data=eval_data, eval_images=eval_images,
                       accept=accept)


def _check_graph_cache_set(onnx_file: str, calib_cache: str | None) -> None:
    """An already quantized graph given with a cache: the cache can only be its companion, so the two must
    be of one calibration run (``assd.calibration.run_set``); a cache given with an fp32 graph calibrates it."""
    from assd.calibration.run_set import check_graph_cache_set

    shared = check_graph_cache_set(onnx_file, calib_cache)
    if shared:
        click.echo(f"--calib-cache {calib_cache}: holds the ranges {onnx_file} was quantized with (calibration run "
                   f"{shared}); the graph's own Q/DQ scales are used")


@click.command("calibrate")
@force_option
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--calib-data", required=True,
              help="Calibration images: a folder, or voc:ROOT[:SETS], coco:IMAGES:JSON, synthetic[:N].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .int8.onnx file.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="Runtime the graph is laid out for: tensorrt (TensorRT's Q/DQ pattern; what build-engine takes) or "
                   "cpu (ONNX Runtime's QDQ format with Q/DQ on Conv outputs: int8 kernels on ONNX Runtime's CPU "
                   "provider and OpenVINO; docs/cpu.md).")
@_calibration_options
@click.option("--calib-percentile", type=float, default=99.999, show_default=True,
              help="Percentile of |x| kept (--calib-method percentile).")
@click.option("--parity-images", type=int, default=8, show_default=True,
              help="Images of --calib-data for the int8-vs-fp32 parity report (0: skip).")
@_gate_options
def calibrate_command(onnx_file, calib_data, output, target, calib_images, calib_method, calib_cache, calib_percentile,
                      parity_images, max_delta_map, keep_high, eval_data, eval_images, accept):
    """INT8 post-training quantization of the fp32 ONNX_FILE to a Q/DQ graph (--target tensorrt: TensorRT's explicit
    quantization; cpu: ONNX Runtime's QDQ format): per-channel int8 Conv weights, calibrated per-tensor activations,
    attention in float."""
    from assd.calibration.workflow import calibrate_and_report, check_calibrate_options, report_parity

    check_calibrate_options(calib_images, calib_percentile, parity_images)
    if target == "cpu":
        _calibrate_cpu(onnx_file, calib_data, output, calib_images, calib_method, calib_cache, calib_percentile,
                       parity_images, max_delta_map, keep_high)
        return
    if calib_method == "auto" or max_delta_map is not None or keep_high:
        from assd.precision.gate import gate_graph
        from assd.precision.setup import CalibrationRequest

        calibration = CalibrationRequest(data=calib_data, images=calib_images, method=calib_method, cache=calib_cache,
                                         percentile=calib_percentile)
        gate_graph(onnx_file, output, "int8", calibration, _gate_request(max_delta_map, keep_high, eval_data,
                                                                         eval_images, accept), echo=click.echo)
        report_parity(onnx_file, output, calib_data, parity_images, echo=click.echo)
        return
    calibrate_and_report(onnx_file, output, calib_data, num_images=calib_images, method=calib_method,
                         cache_path=calib_cache, percentile=calib_percentile, parity_images=parity_images,
                         echo=click.echo)


def _calibrate_cpu(onnx_file, calib_data, output, calib_images, calib_method, calib_cache, calib_percentile,
                   parity_images, max_delta_map, keep_high):
    """``calibrate --target cpu`` (assd.calibration.cpu_target); the accuracy gate is TensorRT-target only."""
    from assd.calibration.cpu_target import calibrate_cpu_and_report
    from assd.errors import UserError

    gated = [name for name, value in (("--calib-method auto", calib_method == "auto"),
                                      ("--max-delta-map", max_delta_map is not None), ("--keep-high", keep_high))
             if value]
    if gated:
        raise UserError(f"--target cpu: {', '.join(gated)} (the accuracy gate) works on the TensorRT-target graph only: "
                        "drop it, or measure the cpu graph with 'assd eval-engine --reference'")
    calibrate_cpu_and_report(onnx_file, output, calib_data, num_images=calib_images, method=calib_method,
                             cache_path=calib_cache, percentile=calib_percentile, parity_images=parity_images,
                             echo=click.echo)


@click.command("build-engine")
@force_option
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .engine file.")
@exclusive_flag("precision", "fp32", "--fp32", help="Build the fp32 graph as is.")
@exclusive_flag("precision", "fp16", "--fp16", help="Convert an fp32 graph to fp16 first (default: "
              "the ONNX file's own precision).")
@exclusive_flag("precision", "int8", "--int8", help="Calibrate an fp32 graph to int8 Q/DQ first "
              "(needs --calib-data).")
@click.option("--batch", default=None, help="Optimization profile MIN:OPT:MAX (default 1:8:32, or the fixed batch).")
@click.option("--workspace", type=float, default=None, help="Builder workspace limit in GB (default: TensorRT's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file: read when present, written after the build.")
@click.option("--calib-data", default=None, help="Calibration images for --int8 (folder or data spec).")
@_calibration_options
@_gate_options
@click.option("--version-compatible", is_flag=True, help="Engine runs on this TensorRT version or newer "
              "(same major, or 10 -> 11).")
@click.option("--hardware-compat", type=click.Choice(["none", "same-cc", "ampere+"]), default="none",
              show_default=True, help="GPUs the engine may run on: this GPU model only (none), any GPU of its "
              "compute capability (same-cc, TensorRT >= 10.9), any Ampere or newer GPU (ampere+).")
@click.option("--tf32", is_flag=True, help="Allow TF32 for float32 layers (TensorRT's default; off here: ASSD's "
              "unscaled attention scores need full fp32).")
def build_engine_command(onnx_file, output, precision, batch, workspace, timing_cache, calib_data, calib_images,
                         calib_method, calib_cache, max_delta_map, keep_high, eval_data, eval_images, accept,
                         version_compatible, hardware_compat, tf32):
    """Build a strongly typed TensorRT engine (+ OUTPUT.json sidecar) from an assd ONNX_FILE."""
    from assd.data import data_spec_inputs
    from assd.engine.build import CalibrationOptions, EngineOptions, build_engine, precision_graph_path
    from assd.paths import check_outputs
    from assd.runtime.engine_info import sidecar_path
    from assd.runtime.int8_target import refuse_cpu_target

    refuse_cpu_target(onnx_file, "build-engine")
    if calib_method == "auto" and precision != "int8":
        from assd.errors import UserError

        raise UserError("--calib-method auto: chooses the INT8 calibration ranges by Δ mAP; it applies to --int8 "
                        "builds from an fp32 graph only: drop it, or pass --int8")
    graph = precision_graph_path(onnx_file, output, precision) if precision in ("fp16", "int8") else None
    check_outputs([onnx_file, keep_high, *data_spec_inputs(calib_data), *data_spec_inputs(eval_data)],
                  files={"-o": output, "the engine sidecar": sidecar_path(output), "the precision graph": graph,
                         "--timing-cache": timing_cache, "--calib-cache": calib_cache}, kinds={"-o": "engine"})
    _check_graph_cache_set(onnx_file, calib_cache)

    gated = max_delta_map is not None or keep_high or calib_method == "auto"  # the accuracy gate makes the graph
    options = EngineOptions(
        precision=precision, batch=batch, workspace_gb=workspace, timing_cache=timing_cache,
        version_compatible=version_compatible, hardware_compat=hardware_compat, tf32=tf32,
        calibration=CalibrationOptions(data=calib_data, images=calib_images, method=calib_method, cache=calib_cache),
        gate=_gate_request(max_delta_map, keep_high, eval_data, eval_images, accept) if gated else None)
    build_engine(onnx_file, output, options, echo=click.echo)
