"""``assd calibrate``: quantize an fp32 assd ONNX file to INT8 Q/DQ, then report parity with the fp32 graph."""

from __future__ import annotations

from collections.abc import Callable

from assd.calibration.images import calibration_images
from assd.calibration.quantize import (
    DEFAULT_IMAGES,
    DEFAULT_PERCENTILE,
    HISTOGRAM_BINS,
    QuantizeResult,
    check_range_options,
    quantize_int8,
)
from assd.errors import UserError
from assd.export.parity import ParityReport

PARITY_IMAGES = 8


def check_calibrate_options(num_images: int, percentile: float, parity_images: int) -> None:
    """One-line errors (exit 2) for every out-of-range calibrate option, before anything runs."""
    check_range_options(num_images, percentile, HISTOGRAM_BINS)
    if parity_images < 0:
        raise UserError(f"--parity-images {parity_images}: must be 0 (no parity report) or more")


def int8_parity(fp32_path: str, int8_path: str, calib_data: str, num_images: int = PARITY_IMAGES) -> ParityReport:
    """loc/conf differences and detection agreement of the int8 graph against the fp32 graph (both ONNX
    Runtime on CPU, the thresholds stored in the model) on ``num_images`` images of ``calib_data``."""
    import torch

    from assd.export.parity import compare_runners
    from assd.runtime.postprocess import PostprocessConfig
    from assd.runtime.runners import OnnxRuntimeRunner

    reference = OnnxRuntimeRunner(fp32_path, torch.device("cpu"))
    candidate = OnnxRuntimeRunner(int8_path, torch.device("cpu"))
    images = calibration_images(calib_data, num_images)
    batch = [images.load(i) for i in range(len(images))]
    step = reference.max_batch or 2
    batch = batch[: len(batch) // step * step] or batch
    postprocess_cfg = PostprocessConfig.from_dict(reference.postprocess) if reference.postprocess else None
    return compare_runners(reference, candidate, batch, postprocess_cfg, batch_size=step)


def report_parity(onnx_path: str, output: str, calib_data: str, parity_images: int,
                  echo: Callable[[str], None] = print) -> ParityReport | None:
    """Print (and return) the int8-vs-fp32 parity on ``parity_images`` images (0: none)."""
    if parity_images <= 0:
        return None
    report = int8_parity(onnx_path, output, calib_data, parity_images)
    echo(f"int8 vs fp32 (ONNX Runtime CPU) {report.summary()}")
    return report


def calibrate_and_report(onnx_path: str, output: str, calib_data: str, num_images: int = DEFAULT_IMAGES,
                         method: str = "entropy", cache_path: str | None = None,
                         percentile: float = DEFAULT_PERCENTILE, parity_images: int = PARITY_IMAGES,
                         echo: Callable[[str], None] = print,
                         keep_high: list[str] | None = None) -> tuple[QuantizeResult, ParityReport | None]:
    """Write ``output`` (INT8 Q/DQ) and print what was done and how close it is to the fp32 graph."""
    check_calibrate_options(num_images, percentile, parity_images)
    result = quantize_int8(onnx_path, output, calib_data, num_images=num_images, method=method,
                           cache_path=cache_path, percentile=percentile, echo=echo, keep_high=keep_high)
    kept = f", {len(result.kept_high)} layers kept in float by the recipe" if result.kept_high else ""
    echo(f"wrote {output} (int8 Q/DQ: {result.quantized_nodes} Conv per-channel int8 weights and per-tensor "
         f"int8 activations, {result.residual_adds} residual Add inputs quantized for Conv+Add fusion, {method} "
         f"ranges from {result.images_used} images; {len(result.excluded_nodes)} attention nodes kept in float{kept})")
    return result, report_parity(onnx_path, output, calib_data, parity_images, echo)
