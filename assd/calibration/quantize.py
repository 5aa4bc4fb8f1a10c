"""INT8 post-training quantization to a Q/DQ ONNX graph, laid out the way TensorRT consumes it.

* Every ``Conv`` gets ``QuantizeLinear -> DequantizeLinear`` on its activation input and an int8
  weight with a per-output-channel ``DequantizeLinear`` (symmetric: zero points are 0); biases stay
  float (TensorRT quantizes them itself); no Q/DQ on Conv outputs (TensorRT fuses the next Conv's input
  quantization into the producer, through ReLU and Add).
* Activations: symmetric per-tensor ranges measured on real images with ``entropy`` (KL divergence,
  TensorRT's algorithm, ``assd.calibration.entropy``), ``percentile`` (of |x|) or ``max``.
* The attention units (score MatMul, Softmax, weighting MatMul) are excluded: they keep the graph's
  float precision, as do the non-Conv ops.

Calibration and quantization use ONNX Runtime's tools (``create_calibrator``, ``quantize_static``);
the measured ranges are cached (``assd.calibration.cache``). ORT's ``quant_pre_process`` is not run:
the exported graph is already optimized (BatchNorms folded, constants folded, shapes inferred), and
it would only add ORT-specific opset imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from assd.calibration.cache import CalibrationSettings, load_cache, save_cache, sha256_file
from assd.calibration.entropy import entropy_ranges
from assd.calibration.images import ImageCalibrationReader, calibration_images
from assd.errors import UserError
from assd.export.fp16 import POSTPROCESS_PREFIX, attention_nodes
from assd.runtime.metadata import OnnxMetadata, load_fp32_source, set_metadata
from assd.utils import atomic_write_bytes

METHODS = ("entropy", "percentile", "max")
DEFAULT_IMAGES = 500
DEFAULT_PERCENTILE = 99.999
QUANTIZED_OP_TYPES = ("Conv",)
HISTOGRAM_BINS = 2048  # TensorRT's entropy calibrator uses 2048 bins as well
CHUNK_IMAGES = 4  # images whose intermediate tensors are held in memory at once (~0.6 GB each for assd513)


@dataclass
class QuantizeResult:
    metadata: OnnxMetadata
    cache_reused: bool
    images_used: int
    excluded_nodes: list[str]
    quantized_nodes: int


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "max": CalibrationMethod.MinMax}[method]


def _providers() -> list[str]:
    """ONNX Runtime's CUDA provider for the calibration runs when there is a GPU, else the CPU."""
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@contextlib.contextmanager
def _quiet_ort():
    """ORT's calibrators print progress to stdout and warn through the root logger; keep our output clean."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(previous)


def calibration_settings(method: str, num_images: int, source: str, percentile: float,
                         num_bins: int = HISTOGRAM_BINS) -> CalibrationSettings:
    if method not in METHODS:
        raise UserError(f"--calib-method {method}: choose one of {', '.join(METHODS)}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise UserError(f"--calib-percentile {percentile}: must be in (50, 100]")
    folder = Path(source)
    return CalibrationSettings(
        method=method, images=num_images, source=str(folder.resolve()) if folder.is_dir() else source,
        percentile=percentile if method == "percentile" else None, op_types=QUANTIZED_OP_TYPES,
        num_bins=num_bins if method != "max" else None)


def measure_ranges(onnx_path: str, metadata: OnnxMetadata, settings: CalibrationSettings,
                   echo: Callable[[str], None] = print) -> tuple[dict[str, tuple[float, float]], int]:
    """Run the fp32 graph on the calibration images and return ({tensor: (lowest, highest)}, images used)."""
    from onnxruntime.quantization import create_calibrator

    images = calibration_images(settings.source, settings.images)
    batch_size = metadata.fixed_batch or 1
    usable = len(images) // batch_size * batch_size
    if usable == 0:
        raise UserError(f"--calib-data {settings.source}: {len(images)} images, fewer than the model's fixed "
                        f"batch of {batch_size}")
    note = f" (the source has only {images.available})" if images.available < settings.images else ""
    echo(f"calibrating ({settings.method}) on {usable} images of {settings.source}{note}")
    reader = ImageCalibrationReader(images, metadata.model_config, batch_size=batch_size)
    # entropy: ORT collects the |x| histograms (as for percentile), the KL search is ours (entropy.py)
    collector_method = "percentile" if settings.method == "entropy" else settings.method
    options = {"symmetric": True}
    if settings.num_bins:
        options["num_bins"] = settings.num_bins
    if settings.percentile is not None:
        options["percentile"] = settings.percentile
    chunk = max(CHUNK_IMAGES // batch_size, 1) * batch_size
    with tempfile.TemporaryDirectory(prefix="assd-calib-") as tmp, _quiet_ort():
        calibrator = create_calibrator(
            Path(onnx_path), list(settings.op_types), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_ort_method(collector_method), providers=_providers(),
            extra_options=options)
        with tqdm(total=usable, desc="calibration", unit="img", file=sys.stderr, disable=None, leave=False) as bar:
            for start in range(0, usable, chunk):
                reader.set_range(start, min(start + chunk, usable))
                calibrator.collect_data(reader)
                bar.update(min(chunk, usable - start))
        if settings.method == "entropy":
            return entropy_ranges(calibrator.collector.histogram_dict), usable
        tensors = calibrator.compute_data()
    ranges = {}
    for name in tensors:
        lowest, highest = tensors[name].range_value
        ranges[name] = (float(np.asarray(lowest).min()), float(np.asarray(highest).max()))
    return ranges, usable


def _tensors_data(ranges: dict[str, tuple[float, float]], method: str):
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    return TensorsData(_ort_method(method), {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()})


def quantize_with_ranges(onnx_path: str, ranges: dict[str, tuple[float, float]], method: str,
                         excluded: list[str]) -> onnx.ModelProto:
    """The Q/DQ graph of ``onnx_path`` with the given activation ranges (see the module docstring)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="assd-quant-") as tmp, _quiet_ort():
        ranges_file, output = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(_tensors_data(ranges, method), ranges_file)
        quantize_static(
            onnx_path, output, calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method=_ort_method(method), calibration_cache_path=ranges_file,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)})
        return onnx.load(str(output))


def excluded_node_names(graph: onnx.GraphProto) -> list[str]:
    """The attention units and any in-graph post-processing: never quantized."""
    names = [node.name for node in attention_nodes(graph)]
    names += [node.name for node in graph.node if node.name.startswith(POSTPROCESS_PREFIX)]
    return names


def quantize_int8(onnx_path: str, output: str, calib_data: str, num_images: int = DEFAULT_IMAGES,
                  method: str = "entropy", cache_path: str | None = None, percentile: float = DEFAULT_PERCENTILE,
                  echo: Callable[[str], None] = print, num_bins: int = HISTOGRAM_BINS) -> QuantizeResult:
    """Write the INT8 Q/DQ graph of the fp32 assd ONNX file ``onnx_path`` to ``output`` (atomically),
    calibrated on ``num_images`` images of ``calib_data``; ranges cached in ``cache_path`` when given.
    ``num_bins``: histogram bins for entropy / percentile (fewer: faster, coarser)."""
    from assd.export.onnx_export import check_and_serialize

    if not str(output).endswith(".onnx"):
        raise UserError(f"{output}: the output file must end in .onnx")
    model, metadata = load_fp32_source(onnx_path, output, "int8")
    settings = calibration_settings(method, num_images, calib_data, percentile, num_bins)
    onnx_sha256 = sha256_file(onnx_path)
    lookup = load_cache(cache_path, onnx_sha256, settings) if cache_path else None
    if lookup is not None:
        echo(lookup.reason)
    if lookup is not None and lookup.ranges is not None:
        ranges, images_used, reused = lookup.ranges, lookup.images_used, True
    else:
        ranges, images_used = measure_ranges(onnx_path, metadata, settings, echo)
        reused = False
        if cache_path:
            save_cache(cache_path, ranges, onnx_sha256, settings, images_used)
            echo(f"wrote calibration cache {cache_path} ({len(ranges)} tensor ranges)")
    excluded = excluded_node_names(model.graph)
    quantized = quantize_with_ranges(str(onnx_path), ranges, method, excluded)
    int8_metadata = dataclasses.replace(metadata, precision="int8")
    set_metadata(quantized, int8_metadata)
    atomic_write_bytes(output, check_and_serialize(quantized))
    convs = sum(1 for node in quantized.graph.node if node.op_type == "Conv")
    return QuantizeResult(int8_metadata, reused, images_used, excluded, convs)
