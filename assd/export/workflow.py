"""The ``assd export --onnx`` workflow: export, verify with ONNX Runtime, report parity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from assd.errors import CheckFailed, UserError
from assd.export.onnx_export import check_opset, export_onnx
from assd.export.parity import ParityReport, compare_postprocessed, compare_runners, default_parity_images
from assd.paths import check_outputs, temp_dir

# fp32 ONNX vs PyTorch: logits may differ by float rounding only (relative to their magnitude);
# detections must agree.
FP32_CONF_TOLERANCE = 1e-3
FP32_MIN_AGREEMENT = 0.95
# fp16 ONNX (--precision fp16, assd.export.fp16) vs PyTorch fp32: half-precision rounding of every layer
# (relative conf error measured 4e-4 on a trained assd-mini, see docs/deployment.md).
FP16_CONF_TOLERANCE = 1e-2
FP16_MIN_AGREEMENT = 0.9


def _load_images(folder: str | None, limit: int = 4):
    if folder is None:
        return default_parity_images(limit)
    from assd.data import UnreadableImage, read_rgb_image
    from assd.export.parity import IMAGE_SUFFIXES

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = []
    for path in files:
        try:
            images.append(read_rgb_image(path))
        except UnreadableImage as exc:
            raise UserError(f"{exc} (or pass another --parity-images folder)") from None
    if not images:
        raise UserError(f"{folder}: no .jpg/.png images for the parity check")
    return images


def _fill_batches(images: list, batch: str | int) -> list:
    """``images`` cycled to whole batches of a fixed-batch graph (which accepts no other batch size)."""
    if batch == "dynamic":
        return images
    batch = int(batch)
    count = batch * max(len(images) // batch, 1)
    return [images[i % len(images)] for i in range(count)]


def _parse_batch(batch: str | int) -> str | int:
    if str(batch) == "dynamic":
        return "dynamic"
    try:
        value = int(batch)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--batch {batch}: use 'dynamic' or a positive integer")
    return value


def export_and_check(model_spec: str, output: str, opset: int = 18, batch: str | int = "dynamic",
                     with_postprocess: bool = False, attention_op: bool = False, max_detections: int | None = None,
                     parity_images: str | None = None, check_parity: bool = True,
                     echo: Callable[[str], None] = print, precision: str = "fp32") -> ParityReport | None:
    """Export ``model_spec`` (checkpoint or preset) to ``output`` and check it against PyTorch.

    Raises ``CheckFailed`` (file kept, with a warning) when parity is off."""
    from assd.models.checkpoint import load_model
    from assd.models.limits import check_memory
    from assd.runtime.postprocess import PostprocessConfig
    from assd.runtime.runners import OnnxRuntimeRunner, TorchRunner

    batch = _parse_batch(batch)
    check_opset(opset)
    if not str(output).endswith(".onnx"):
        raise UserError(f"{output}: the output file must end in .onnx")
    if precision not in ("fp32", "fp16"):
        raise UserError(f"--precision {precision}: export writes fp32 or fp16 graphs (int8: 'assd calibrate')")
    check_outputs([model_spec, parity_images], files={"-o": output}, kinds={"-o": "onnx"})
    images = _fill_batches(_load_images(parity_images), batch) if check_parity else []  # inputs before outputs
    model = load_model(model_spec)
    postprocess_cfg = PostprocessConfig.for_model(model.cfg, max_detections=max_detections)
    example_batch = 2 if batch == "dynamic" else batch
    weights = sum(p.numel() for p in model.parameters()) * 4
    # The model, its folded copy, the ONNX proto, its bytes and the ONNX Runtime session hold weights.
    check_memory(model.cfg, example_batch, "cpu", what=f"export {model_spec}", extra_bytes=4 * weights,
                 hint="export with a smaller fixed --batch, or on a machine with more memory")
    with temp_dir("export") as tmp:
        fp32_file = output if precision == "fp32" else str(tmp / "fp32.onnx")
        export_onnx(model, fp32_file, opset=opset, batch=batch, with_postprocess=with_postprocess,
                    postprocess=postprocess_cfg.to_dict(), attention_op=attention_op)
        if precision == "fp16":
            from assd.export.fp16 import write_fp16_onnx

            write_fp16_onnx(fp32_file, output, echo=echo)
    size_mb = Path(output).stat().st_size / 1e6
    echo(f"wrote {output} ({size_mb:.1f} MB, {precision}, opset {opset}, batch {batch}, "
         f"{'detections' if with_postprocess else 'loc/conf'} outputs)")
    if not check_parity:
        return None
    import torch

    reference = TorchRunner(model, model_spec, torch.device("cpu"))
    step = batch if batch != "dynamic" else 2
    if with_postprocess:
        report = compare_postprocessed(reference, output, images, postprocess_cfg, batch_size=step)
    else:
        report = compare_runners(reference, OnnxRuntimeRunner(output, torch.device("cpu")), images,
                                 postprocess_cfg, batch_size=step)
    echo(report.summary())
    conf_tolerance, min_agreement = ((FP32_CONF_TOLERANCE, FP32_MIN_AGREEMENT) if precision == "fp32"
                                     else (FP16_CONF_TOLERANCE, FP16_MIN_AGREEMENT))
    if not Path(model_spec).is_file():
        # A preset name: untrained weights. Through 100 random layers the logits reach ~1e5, the softmax
        # saturates and hundreds of scores tie at 1.0, so which of them survive top-k/NMS is arbitrary
        # and the detection agreement measures nothing; the raw outputs must still match.
        min_agreement = 0.0
        echo("note: random weights (a preset, not a checkpoint): detection agreement is informative only; "
             "the check is on the raw outputs")
    if not report.passed(conf_tolerance, min_agreement):
        echo(f"warning: {output} was written but does not match PyTorch (tolerance: relative loc/conf max|d| <= "
             f"{conf_tolerance}, agreement >= {min_agreement:.0%})")
        raise CheckFailed(f"{output}: ONNX Runtime parity check failed")
    echo("parity OK")
    return report
