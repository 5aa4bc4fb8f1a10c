"""INT8 post-training quantization to a Q/DQ ONNX graph, laid out the way TensorRT consumes it.

* Every ``Conv`` gets ``QuantizeLinear -> DequantizeLinear`` on its activation input and an int8
  weight with a per-output-channel ``DequantizeLinear`` (symmetric: zero points are 0); biases stay
  float (TensorRT quantizes them itself); no Q/DQ on Conv outputs; the residual input of every Add
  fused into a Conv gets Q/DQ (``assd.calibration.placement``: TensorRT's placement rules).
* Activations: symmetric per-tensor ranges measured on real images. One pass collects |x| histograms
  (and exact min/max) of every Conv input/output and gives the ranges of all three methods:
  ``entropy`` (KL divergence, TensorRT's algorithm, ``assd.calibration.entropy``), ``percentile`` (of
  |x|, ONNX Runtime's computation) and ``max``. They are cached together (``assd.calibration.cache``).
* The attention units (score MatMul, Softmax, weighting MatMul) are excluded: they keep the graph's
  float precision, as do the non-Conv ops.

Calibration and quantization use ONNX Runtime's tools (``create_calibrator``, ``quantize_static``),
always on a copy of the model inside a private ``assd-*`` temporary folder: they write intermediates
beside the model they are given (``assd.calibration.paths``). ORT's ``quant_pre_process`` is not run:
the exported graph is already optimized (BatchNorms folded, constants folded, shapes inferred), and it
would only add ORT-specific opset imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from assd.calibration.cache import (
    CalibrationSettings,
    Ranges,
    cache_run_id,
    load_cache,
    save_cache,
    sha256_file,
)
from assd.calibration.cache_checks import check_cached_ranges, quantized_inputs
from assd.calibration.entropy import entropy_ranges
from assd.calibration.images import ImageCalibrationReader, calibration_images
from assd.calibration.paths import check_graph_outputs, private_workdir
from assd.calibration.placement import (
    keep_layers_high,
    layer_display_names,
    prune_unused,
    qdq_layers,
    quantize_residual_inputs,
    restore_float_consumers,
    topological_sort,
)
from assd.calibration.recipe import resolve_layers, set_kept_high
from assd.calibration.run_set import CALIBRATION_RUN_KEY, RUN_ID_KEY, mark_graph, new_run_id
from assd.errors import UserError
from assd.export.fp16 import POSTPROCESS_PREFIX, attention_nodes
from assd.runtime.int8_target import Int8Layout, set_int8_layout
from assd.runtime.metadata import OnnxMetadata, load_fp32_source, set_metadata
from assd.utils import atomic_write_bytes

METHODS = ("entropy", "percentile", "max")
DEFAULT_IMAGES = 500
DEFAULT_PERCENTILE = 99.999
QUANTIZED_OP_TYPES = ("Conv",)
HISTOGRAM_BINS = 2048  # TensorRT's entropy calibrator uses 2048 bins as well
TENSORRT_LAYOUT = Int8Layout(target="tensorrt", format="tensorrt-explicit-qdq", weights="int8 symmetric per-channel",
                             activations="int8 symmetric per-tensor")
CHUNK_IMAGES = 4  # images whose intermediate tensors are held in memory at once (~0.6 GB each for assd513)


@dataclass
class QuantizeResult:
    metadata: OnnxMetadata
    cache_reused: bool
    images_used: int
    excluded_nodes: list[str]
    quantized_nodes: int
    residual_adds: int = 0
    kept_high: list[str] = dataclasses.field(default_factory=list)


def _providers() -> list[str]:
    """ONNX Runtime's CUDA provider for the calibration runs when there is a GPU, else the CPU."""
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _say_provider(session, asked: str, echo: Callable[[str], None]) -> None:
    """Which provider the calibration session really runs on (``get_available_providers()`` lists what the
    wheel was built with, not what loads: a CUDA-13 onnxruntime-gpu on a CUDA-12 machine runs on the CPU)."""
    from assd.runtime.onnxruntime_runner import session_provider

    used = session_provider(session)
    if used == asked:
        echo(f"calibration runs on ONNX Runtime's {used}")
    else:
        echo(f"calibration runs on ONNX Runtime's {used}: {asked} does not load here (onnxruntime-gpu must match "
             "torch's CUDA major: pip install -e '.[tensorrt-cu12]' or '.[tensorrt-cu13]')")


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ORT's calibrators print progress to stdout and warn through the root logger; keep our output clean."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(previous)


def check_range_options(num_images: int, percentile: float, num_bins: int) -> None:
    """One-line errors for calibration options out of range (before any work)."""
    if num_images < 1:
        raise UserError(f"--calib-images {num_images}: must be at least 1")
    if not 50.0 < percentile <= 100.0:  # also refuses nan
        raise UserError(f"--calib-percentile {percentile}: must be in (50, 100]")
    if num_bins < 256:
        raise UserError(f"histogram bins {num_bins}: must be at least 256 (entropy compares 128 levels)")


def calibration_settings(num_images: int, source: str, percentile: float,
                         num_bins: int = HISTOGRAM_BINS) -> CalibrationSettings:
    check_range_options(num_images, percentile, num_bins)
    folder = Path(source)
    return CalibrationSettings(images=num_images, source=str(folder.resolve()) if folder.is_dir() else source,
                               percentile=percentile, op_types=QUANTIZED_OP_TYPES, num_bins=num_bins)


def _percentile_ranges(histograms: dict, settings: CalibrationSettings) -> Ranges:
    """ONNX Runtime's own percentile computation on the merged |x| histograms."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("percentile", symmetric=True, num_bins=settings.num_bins,
                                   num_quantized_bins=128, percentile=settings.percentile, scenario="same")
    collector.histogram_dict = histograms
    with quiet_ort():
        thresholds = collector.compute_percentile()
    return {name: (float(np.asarray(values[0])), float(np.asarray(values[1]))) for name, values in thresholds.items()}


def ranges_from_histograms(histograms: dict, settings: CalibrationSettings,
                           methods: tuple[str, ...] = METHODS) -> dict[str, Ranges]:
    """{method: ranges} for ``methods`` (entropy, percentile, max) from ORT's |x| histograms {tensor: (hist,
    edges, min, max)} (max: the exact extremes the collector tracked)."""
    compute = {"entropy": lambda: entropy_ranges(histograms),
               "percentile": lambda: _percentile_ranges(histograms, settings),
               "max": lambda: {name: (float(values[2]), float(values[3])) for name, values in histograms.items()}}
    return {method: compute[method]() for method in methods}


def measure_ranges(model_path: str | Path, metadata: OnnxMetadata, settings: CalibrationSettings,
                   workdir: Path, echo: Callable[[str], None] = print,
                   methods: tuple[str, ...] = METHODS) -> tuple[dict[str, Ranges], int]:
    """Run the fp32 graph at ``model_path`` (inside ``workdir``) on the calibration images once and return
    ({method: {tensor: (lowest, highest)}} for ``methods``, images used)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    images = calibration_images(settings.source, settings.images)
    batch_size = metadata.fixed_batch or 1
    usable = len(images) // batch_size * batch_size
    if usable == 0:
        raise UserError(f"--calib-data {settings.source}: {len(images)} images, fewer than the model's fixed "
                        f"batch of {batch_size}")
    note = f" (the source has only {images.available})" if images.available < settings.images else ""
    echo(f"calibrating on {usable} images of {settings.source}{note} (one pass: {', '.join(methods)} ranges)")
    reader = ImageCalibrationReader(images, metadata.model_config, batch_size=batch_size)
    chunk = max(CHUNK_IMAGES // batch_size, 1) * batch_size
    providers = _providers()
    with quiet_ort():
        calibrator = create_calibrator(
            Path(model_path), list(settings.op_types), augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile, providers=providers,
            extra_options={"symmetric": True, "num_bins": settings.num_bins, "percentile": settings.percentile})
    _say_provider(calibrator.infer_session, providers[0], echo)
    progress = tqdm(total=usable, desc="calibration", unit="img", file=sys.stderr, disable=None, leave=False)
    with quiet_ort(), progress as bar:
        for start in range(0, usable, chunk):
            reader.set_range(start, min(start + chunk, usable))
            calibrator.collect_data(reader)
            bar.update(min(chunk, usable - start))
    return ranges_from_histograms(calibrator.collector.histogram_dict, settings, methods), usable


def calibrated_ranges(model_path: Path, onnx_sha256: str, metadata: OnnxMetadata, settings: CalibrationSettings,
                      cache_path: str | None, workdir: Path, echo: Callable[[str], None] = print,
                      methods: tuple[str, ...] = METHODS, run_id: str = "") -> tuple[dict[str, Ranges], int, bool]:
    """({method: ranges}, images used, reused from the cache?): from ``cache_path`` when it matches, else
    measured (every method when the cache is written, else only ``methods``); a cache written records
    ``run_id`` (the calling run's, ``assd.calibration.run_set``)."""
    if cache_path:
        lookup = load_cache(cache_path, onnx_sha256, settings, methods)
        if lookup.ranges is not None:  # ours and matching: its ranges are still checked (cache_checks)
            graph = onnx.load(str(model_path), load_external_data=False).graph
            check_cached_ranges(cache_path, lookup.ranges, quantized_inputs(graph, excluded_node_names(graph)))
        echo(lookup.reason)
        if lookup.ranges is not None:
            return lookup.ranges, lookup.images_used, True
    ranges, images_used = measure_ranges(model_path, metadata, settings, workdir, echo,
                                         METHODS if cache_path else methods)
    if cache_path:
        save_cache(cache_path, ranges, onnx_sha256, settings, images_used, run_id)
        echo(f"wrote calibration cache {cache_path} ({len(ranges['max'])} tensor ranges per method)")
    return ranges, images_used, False


def _tensors_data(ranges: Ranges):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()})


def excluded_node_names(graph: onnx.GraphProto) -> list[str]:
    """The attention units and any in-graph post-processing: never quantized."""
    names = [node.name for node in attention_nodes(graph)]
    names += [node.name for node in graph.node if node.name.startswith(POSTPROCESS_PREFIX)]
    return names


def build_qdq_model(model_path: Path, ranges: Ranges, workdir: Path) -> onnx.ModelProto:
    """The Q/DQ graph of the fp32 model at ``model_path`` (a copy inside ``workdir``) with these activation
    ranges: every quantizable Conv in int8 (see the module docstring and ``assd.calibration.placement``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    excluded = excluded_node_names(onnx.load(str(model_path), load_external_data=False).graph)
    ranges_file, output = workdir / "ranges.json", workdir / "int8.onnx"
    with quiet_ort():
        save_tensors_data(_tensors_data(ranges), ranges_file)
        quantize_static(
            str(model_path), str(output), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=ranges_file,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)})
    model = onnx.load(str(output))
    restore_float_consumers(model)
    quantize_residual_inputs(model, ranges)
    prune_unused(model)
    topological_sort(model.graph)
    return model


def private_copy(onnx_path: str | Path, workdir: Path) -> Path:
    """The model copied into ``workdir`` (ORT's tools get this copy, never the user's file)."""
    target = workdir / "model.onnx"
    shutil.copyfile(onnx_path, target)
    return target


def check_int8_outputs(onnx_path: str, output: str, cache_path: str | None, calib_data: str | None = None) -> None:
    """Everything about the output paths that can be refused before any work."""
    check_graph_outputs(output, cache_path, {"ONNX": onnx_path}, [calib_data])


def write_int8_graph(model: onnx.ModelProto, metadata: OnnxMetadata, output: str,
                     kept_high: list[str] | None = None, layout: Int8Layout = TENSORRT_LAYOUT,
                     run_ids: tuple[str, str] = ("", "")) -> OnnxMetadata:
    """Set the int8 metadata (the target runtime's ``layout``, the kept-high layers) on ``model`` and write it
    atomically. ``run_ids``: (this run, the run that measured its ranges), recorded as ``assd.run_id`` and
    ``assd.calibration_run_id`` (``assd.calibration.run_set``; empty: not recorded)."""
    from assd.export.onnx_export import check_and_serialize

    int8_metadata = dataclasses.replace(metadata, precision="int8")
    set_metadata(model, int8_metadata)
    set_int8_layout(model, layout)
    if kept_high:
        set_kept_high(model, "int8", kept_high)
    for run_id, key in zip(run_ids, (RUN_ID_KEY, CALIBRATION_RUN_KEY)):
        if run_id:
            mark_graph(model, run_id, key)
    atomic_write_bytes(output, check_and_serialize(model))
    return int8_metadata


def quantize_int8(onnx_path: str, output: str, calib_data: str, num_images: int = DEFAULT_IMAGES,
                  method: str = "entropy", cache_path: str | None = None, percentile: float = DEFAULT_PERCENTILE,
                  echo: Callable[[str], None] = print, num_bins: int = HISTOGRAM_BINS,
                  keep_high: list[str] | None = None) -> QuantizeResult:
    """Write the INT8 Q/DQ graph of the fp32 assd ONNX file ``onnx_path`` to ``output`` (atomically),
    calibrated on ``num_images`` images of ``calib_data``; ranges cached in ``cache_path`` when given.
    ``num_bins``: histogram bins (fewer: faster, coarser); ``keep_high``: layer (or node) names whose
    Conv stays in float (a recipe's layers)."""
    if method not in METHODS:
        raise UserError(f"--calib-method {method}: choose one of {', '.join(METHODS)}")
    check_int8_outputs(onnx_path, output, cache_path, calib_data)
    model, metadata = load_fp32_source(onnx_path, output, "int8")
    settings = calibration_settings(num_images, calib_data, percentile, num_bins)
    names = layer_display_names(model.graph)
    nodes = resolve_layers(keep_high or [], names, "--keep-high")
    run_id = new_run_id()  # in the cache this run writes and in its graph (assd.calibration.run_set)
    with private_workdir() as workdir:
        copy = private_copy(onnx_path, workdir)
        ranges, images_used, reused = calibrated_ranges(copy, sha256_file(onnx_path), metadata, settings,
                                                        cache_path, workdir, echo, methods=(method,), run_id=run_id)
        quantized = build_qdq_model(copy, ranges[method], workdir)
    ranges_run = (cache_run_id(cache_path) or "") if reused else run_id
    layers = qdq_layers(quantized, model)
    if nodes:
        quantized = keep_layers_high(quantized, model, nodes)
    kept = [names[node] for node in nodes]
    int8_metadata = write_int8_graph(quantized, metadata, output, kept, run_ids=(run_id, ranges_run))
    residual_adds = sum(1 for layer in layers if layer.residual and layer.node not in nodes)
    return QuantizeResult(int8_metadata, reused, images_used, excluded_node_names(model.graph),
                          len(layers) - len(nodes), residual_adds, kept)
