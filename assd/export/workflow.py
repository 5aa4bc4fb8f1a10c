"""The ``assd export --onnx`` workflow: export, verify with ONNX Runtime, report parity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from assd.errors import CheckFailed, UserError
from assd.export.onnx_export import export_onnx
from assd.export.parity import ParityReport, compare_postprocessed, compare_runners, default_parity_images

# fp32 ONNX vs PyTorch: logits may differ by float rounding only; detections must agree.
FP32_CONF_TOLERANCE = 1e-2
FP32_MIN_AGREEMENT = 0.95


def _load_images(folder: str | None, limit: int = 4):
    if folder is None:
        return default_parity_images(limit)
    import cv2

    from assd.export.parity import IMAGE_SUFFIXES

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = []
    for path in files:
        image = cv2.imread(str(path))
        if image is None:
            raise UserError(f"{path}: unreadable image: remove it or pass another --parity-images folder")
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if not images:
        raise UserError(f"{folder}: no .jpg/.png images for the parity check")
    return images


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
                     echo: Callable[[str], None] = print) -> ParityReport | None:
    """Export ``model_spec`` (checkpoint or preset) to ``output`` and check it against PyTorch.

    Raises ``CheckFailed`` (file kept, with a warning) when parity is off."""
    from assd.models.checkpoint import load_model
    from assd.runtime.postprocess import PostprocessConfig
    from assd.runtime.runners import OnnxRuntimeRunner, TorchRunner

    batch = _parse_batch(batch)
    if not str(output).endswith(".onnx"):
        raise UserError(f"{output}: the output file must end in .onnx")
    model = load_model(model_spec)
    postprocess_cfg = PostprocessConfig()
    if max_detections is not None:
        postprocess_cfg = PostprocessConfig.from_dict({**postprocess_cfg.to_dict(), "max_detections": max_detections})
    export_onnx(model, output, opset=opset, batch=batch, with_postprocess=with_postprocess,
                postprocess=postprocess_cfg.to_dict(), attention_op=attention_op)
    size_mb = Path(output).stat().st_size / 1e6
    echo(f"wrote {output} ({size_mb:.1f} MB, opset {opset}, batch {batch}, "
         f"{'detections' if with_postprocess else 'loc/conf'} outputs)")
    if not check_parity:
        return None
    import torch

    images = _load_images(parity_images)
    if batch != "dynamic":
        images = images[: max(int(batch), 1) * max(len(images) // int(batch), 1)]
    reference = TorchRunner(model, model_spec, torch.device("cpu"))
    step = batch if batch != "dynamic" else 2
    if with_postprocess:
        report = compare_postprocessed(reference, output, images, postprocess_cfg, batch_size=step)
    else:
        report = compare_runners(reference, OnnxRuntimeRunner(output, torch.device("cpu")), images,
                                 postprocess_cfg, batch_size=step)
    echo(report.summary())
    if not report.passed(FP32_CONF_TOLERANCE, FP32_MIN_AGREEMENT):
        echo(f"warning: {output} was written but does not match PyTorch (tolerance: conf max|d| <= "
             f"{FP32_CONF_TOLERANCE}, agreement >= {FP32_MIN_AGREEMENT:.0%})")
        raise CheckFailed(f"{output}: ONNX Runtime parity check failed")
    echo("parity OK")
    return report
