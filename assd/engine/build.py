"""``assd build-engine``: an assd ONNX file -> a strongly typed TensorRT engine + its JSON sidecar.

Precision lives in the ONNX graph (TensorRT 11 removed the FP16/INT8 builder flags and implicit INT8
calibrators; TensorRT 10 builds the same graphs with ``STRONGLY_TYPED``): ``--fp16`` / ``--int8`` on an
fp32 ONNX first write the fp16 graph (``assd.export.fp16``) or the calibrated Q/DQ graph
(``assd.calibration``) beside the engine, and a graph with ``Attention`` nodes is lowered to
MatMul -> Softmax -> MatMul (``assd.export.attention_lowering``), then that graph is built. Checks run
cheapest first, so bad input fails with one line anywhere: arguments and ONNX metadata, then "is
TensorRT installed?", then "is there a CUDA device?", then what this TensorRT and GPU can build
(``engine_info.check_build_target``) — on a machine without TensorRT/GPU the graph to build is still
written, ready to be taken to a GPU machine. Float32 layers are built without TF32 unless ``tf32``:
ASSD's unscaled attention scores (~1e5 with random weights) lose too much in TF32's 10-bit mantissa.
With ``gate`` (``--max-delta-map`` / ``--keep-high`` / ``--calib-method auto``) the accuracy gate makes
the graph (``assd.engine.gated``): it verifies the composed graph itself, and that file is built as is.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import assd
from assd.calibration.cache import sha256_file
from assd.calibration.fp16_range import read_fp16_range
from assd.calibration.recipe import read_kept_high
from assd.engine.precision_graph import compose_precision_graph, precision_graph_path  # noqa: F401
from assd.errors import UserError
from assd.runtime.engine_info import HARDWARE_COMPAT_LEVELS, EngineInfo, check_build_target, sidecar_path
from assd.runtime.metadata import OnnxMetadata, read_metadata
from assd.runtime.sidecar_checks import MAX_ENGINE_BATCH
from assd.runtime.tensorrt_support import import_tensorrt, require_tensorrt
from assd.utils import atomic_write_bytes, atomic_write_json

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
DEFAULT_BATCH = (1, 8, 32)


@dataclass(frozen=True)
class BatchRange:
    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str | None, fixed_batch: int | None = None) -> BatchRange:
        """``"MIN:OPT:MAX"`` or ``"N"`` (all three N); None: the ONNX's fixed batch, else 1:8:32."""
        if text is None:
            return cls(fixed_batch, fixed_batch, fixed_batch) if fixed_batch else cls(*DEFAULT_BATCH)
        try:
            values = [int(part) for part in text.split(":")]
        except ValueError:
            values = []
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2] <= MAX_ENGINE_BATCH:
            raise UserError(f"--batch {text}: use MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX <= {MAX_ENGINE_BATCH} (e.g. "
                            "1:8:32) or one size")
        batch = cls(*values)
        if fixed_batch and batch != cls(fixed_batch, fixed_batch, fixed_batch):
            raise UserError(f"--batch {text}: the ONNX file has a fixed batch of {fixed_batch}: use --batch "
                            f"{fixed_batch} or re-export with --batch dynamic")
        return batch


@dataclass(frozen=True)
class CalibrationOptions:
    data: str | None = None
    images: int = 500
    method: str = "entropy"
    cache: str | None = None


@dataclass(frozen=True)
class EngineOptions:
    precision: str | None = None  # None: the ONNX file's own precision
    batch: str | None = None
    workspace_gb: float | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"
    tf32: bool = False  # allow TF32 for float32 layers (TensorRT's default; off here, see the module docstring)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    gate: object | None = None  # an ``assd.precision.gate.GateRequest``: the accuracy gate makes the graph


def check_options(onnx_path: str, output: str, options: EngineOptions) -> tuple[OnnxMetadata, str, BatchRange]:
    """Validate everything that needs no TensorRT: returns (ONNX metadata, target precision, batch range)."""
    if Path(output).suffix not in ENGINE_SUFFIXES:
        raise UserError(f"{output}: the engine file must end in {', '.join(ENGINE_SUFFIXES)}")
    if options.hardware_compat not in HARDWARE_COMPAT_LEVELS:
        raise UserError(f"--hardware-compat {options.hardware_compat}: choose one of {', '.join(HARDWARE_COMPAT_LEVELS)}")
    if options.workspace_gb is not None and not (math.isfinite(options.workspace_gb) and options.workspace_gb > 0):
        raise UserError(f"--workspace {options.workspace_gb}: must be a positive number of GB")
    metadata = read_metadata(onnx_path)
    precision = options.precision or metadata.precision
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision != metadata.precision and metadata.precision != "fp32":
        raise UserError(f"{onnx_path}: is a {metadata.precision} graph; --{precision} starts from the fp32 export "
                        f"(or pass the {precision} graph itself)")
    if precision == "int8" and metadata.precision == "fp32" and not options.calibration.data:
        raise UserError(f"{onnx_path}: --int8 from an fp32 graph needs calibration images: pass --calib-data SPEC "
                        "(a data spec or image folder), or an int8 graph made by 'assd calibrate'")
    methods = ("entropy", "percentile", "max", "auto") if options.gate is not None else ("entropy", "percentile", "max")
    if precision == "int8" and options.calibration.method not in methods:
        raise UserError(f"--calib-method {options.calibration.method}: choose {', '.join(methods[:-1])} or {methods[-1]}"
                        + ("" if options.gate is not None else " (auto chooses by Δ mAP: it needs the accuracy gate)"))
    if options.gate is not None and precision not in ("int8", "fp16"):
        raise UserError("--max-delta-map / --keep-high: choose --int8 or --fp16 (an fp32 engine has nothing to gate)")
    if options.gate is not None and metadata.precision != "fp32":
        raise UserError(f"{onnx_path}: is a {metadata.precision} graph; --max-delta-map / --keep-high / --calib-method "
                        "auto start from the fp32 export (the gate compares against it and chooses what stays high)")
    return metadata, precision, BatchRange.parse(options.batch, metadata.fixed_batch)


def make_precision_graph(onnx_path: str, output: str, metadata: OnnxMetadata, precision: str,
                         calibration: CalibrationOptions, echo: Callable[[str], None] = print) -> str:
    """The ONNX file to build (``assd.engine.precision_graph.compose_precision_graph``)."""
    return compose_precision_graph(onnx_path, output, metadata, precision, calibration, echo)


def build_engine(onnx_path: str, output: str, options: EngineOptions,
                 echo: Callable[[str], None] = print) -> EngineInfo:
    """Build ``output`` (+ ``output.json``) from ``onnx_path``; see the module docstring for the order."""
    metadata, precision, batch = check_options(onnx_path, output, options)
    gate = None
    if options.gate is not None:  # the gate verifies the composed graph; that very file is built
        from assd.engine.gated import gated_precision_graph

        graph, gate = gated_precision_graph(onnx_path, output, metadata, precision, options, echo)
    else:
        graph = compose_precision_graph(onnx_path, output, metadata, precision, options.calibration, echo,
                                        other_outputs={"--timing-cache": options.timing_cache})
    verified = "" if gate is None else f" ({_gate_text(gate)})"
    where = (f" (the {precision} graph is {graph}{verified}: build it on a GPU machine with 'assd build-engine {graph} "
             f"-o {output}')")
    try:
        require_tensorrt("building a TensorRT engine")
    except UserError as exc:
        raise UserError(f"{exc}{where}") from None
    trt = import_tensorrt("building a TensorRT engine")
    capability, gpu_name = torch.cuda.get_device_capability(), torch.cuda.get_device_name()
    check_build_target(options.hardware_compat, options.version_compatible, trt.__version__, capability, gpu_name)
    graph_sha256 = sha256_file(graph)
    if gate is not None and gate.sha256 != graph_sha256:  # changed since the gate wrote it: not what was verified
        raise UserError(f"{graph}: changed after the accuracy gate verified it (SHA-256 {graph_sha256[:12]}, verified "
                        f"{gate.sha256[:12]}): run the build again")
    plan = _build_plan(trt, graph, metadata, precision, batch, options, echo)
    atomic_write_bytes(output, plan)
    info = EngineInfo(
        tensorrt_version=trt.__version__, gpu_name=gpu_name,
        compute_capability=f"{capability[0]}.{capability[1]}", precision=precision,
        input_shape=[3, metadata.model_config.input_size, metadata.model_config.input_size],
        batch_min=batch.min, batch_opt=batch.opt, batch_max=batch.max, onnx_sha256=graph_sha256,
        onnx_file=Path(graph).name, model_config=json.loads(metadata.model_config.to_json()),
        postprocess=metadata.postprocess,
        outputs=metadata.outputs, version_compatible=options.version_compatible,
        hardware_compatibility=options.hardware_compat, tf32=options.tf32, assd_version=assd.__version__,
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        class_names=list(metadata.model_config.class_names), kept_high=read_kept_high(graph),
        fp16_range_kept=read_fp16_range(graph), engine_sha256=hashlib.sha256(plan).hexdigest(),
        accuracy_gate=gate.to_dict() if gate is not None else {})
    atomic_write_json(sidecar_path(output), info.to_dict())
    verified = "" if gate is None else f"; accuracy gate: {_gate_text(gate)}"
    echo(f"wrote {output} ({len(plan) / 1e6:.1f} MB, TensorRT {info.tensorrt_version}, {info.gpu_name} "
         f"sm_{capability[0]}{capability[1]}, {precision}, batch {batch.min}:{batch.opt}:{batch.max}, built from "
         f"{graph}{verified}) and {sidecar_path(output).name}")
    return info


def _gate_text(gate) -> str:
    """The verified graph and its Δ mAP, for the printed lines."""
    if gate.delta_final is None:
        return f"{Path(gate.graph).name} with a recipe, Δ mAP not measured"
    images = (gate.verification or {}).get("images")
    return f"{Path(gate.graph).name} verified, Δ mAP {gate.delta_final:+.2f} points on {images} images"


def _parse(trt, network, logger, graph: str) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(graph):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errors:
        raise UserError(f"{graph}: TensorRT's ONNX parser failed without a message")
    error, where = errors[0], ""
    if error.node() >= 0:  # -1: the error is not about one node (e.g. an unreadable file)
        node = (error.node_name() if hasattr(error, "node_name") else "") or f"#{error.node()}"
        operator = error.node_operator() if hasattr(error, "node_operator") else "?"
        where = f" at node {node} ({operator})"
    raise UserError(f"{graph}: TensorRT's ONNX parser failed{where}: {error.desc()}"
                    + (f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else ""))


def _build_plan(trt, graph: str, metadata: OnnxMetadata, precision: str, batch: BatchRange, options: EngineOptions,
                echo: Callable[[str], None]) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: every tensor keeps the type the ONNX graph gives it (always on in TensorRT 11,
    # where the flag is accepted and ignored; opt-in on TensorRT 10).
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    _parse(trt, network, logger, graph)
    config = builder.create_builder_config()
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    size = metadata.model_config.input_size
    profile = builder.create_optimization_profile()
    shapes = [(n, 3, size, size) for n in (batch.min, batch.opt, batch.max)]
    try:  # IOptimizationProfile.set_shape raises RuntimeError on inconsistent shapes (python bindings)
        profile.set_shape("images", *shapes)
    except RuntimeError as exc:
        raise UserError(f"{graph}: TensorRT refused the profile {shapes} ({exc}): check --batch") from None
    # add_optimization_profile: "the index of the optimization profile ... or -1 if the input is not valid"
    if config.add_optimization_profile(profile) < 0:
        raise UserError(f"{graph}: TensorRT refused the optimization profile {shapes} (see its message above): "
                        "check --batch and that the graph's input is 'images' [B, 3, S, S]")
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # "Enabled by default" (NvInfer.h, BuilderFlag::kTF32)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compat != "none":
        level = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[options.hardware_compat]
        if not hasattr(trt.HardwareCompatibilityLevel, level):
            raise UserError(f"--hardware-compat {options.hardware_compat}: not supported by TensorRT {trt.__version__}")
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    timing_cache = None
    if options.timing_cache:
        cached = Path(options.timing_cache).read_bytes() if Path(options.timing_cache).is_file() else b""
        try:
            timing_cache = config.create_timing_cache(cached)
        except (RuntimeError, TypeError, ValueError):
            timing_cache = None
        if timing_cache is None or not config.set_timing_cache(timing_cache, ignore_mismatch=False):
            raise UserError(f"--timing-cache {options.timing_cache}: TensorRT cannot use this file (another "
                            "TensorRT version or GPU?): delete it or pass another path")
        echo(f"timing cache {options.timing_cache}: " + ("read" if cached else "new"))
    echo(f"building the {precision} engine from {graph} (strongly typed, batch {batch.min}:{batch.opt}:{batch.max}, "
         f"TF32 {'on' if options.tf32 else 'off'}) ...")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"{graph}: TensorRT could not build an engine (see its messages above)")
    if timing_cache is not None:
        atomic_write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
        echo(f"wrote timing cache {options.timing_cache}")
    return bytes(plan)
