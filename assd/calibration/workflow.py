"""``assd calibrate``: quantize an fp32 assd ONNX file to INT8 Q/DQ, then report parity with the fp32 graph."""

from __future__ import annotations

from collections.abc import Callable

from assd.calibration.images import calibration_images
from assd.calibration.quantize import DEFAULT_IMAGES, DEFAULT_PERCENTILE, QuantizeResult, quantize_int8
from assd.export.parity import ParityReport

PARITY_IMAGES = 8


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


def calibrate_and_report(onnx_path: str, output: str, calib_data: str, num_images: int = DEFAULT_IMAGES,
                         method: str = "entropy", cache_path: str | None = None,
                         percentile: float = DEFAULT_PERCENTILE, parity_images: int = PARITY_IMAGES,
                         echo: Callable[[str], None] = print) -> tuple[QuantizeResult, ParityReport | None]:
    """Write ``output`` (INT8 Q/DQ) and print what was done and how close it is to the fp32 graph."""
    result = quantize_int8(onnx_path, output, calib_data, num_images=num_images, method=method,
                           cache_path=cache_path, percentile=percentile, echo=echo)
    echo(f"wrote {output} (int8 Q/DQ: {result.quantized_nodes} Conv per-channel int8 weights and per-tensor "
         f"int8 activations, {method} ranges from {result.images_used} images; "
         f"{len(result.excluded_nodes)} attention nodes kept in float)")
    if parity_images <= 0:
        return result, None
    report = int8_parity(onnx_path, output, calib_data, parity_images)
    echo(f"int8 vs fp32 (ONNX Runtime CPU) {report.summary()}")
    return result, report
