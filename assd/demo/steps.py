"""The demo's steps. Each is a ``Step``: a ``key`` (settings + fingerprints of the input files, what
decides whether a stored result can be reused) and a ``run`` that does the work through the package's
public API and returns ``StepOutput`` (JSON result, files written relative to ``OUT``, one-line summary).

Files in ``OUT``::

    train/last.pt                  the trained checkpoint (+ train/metrics.jsonl)
    model.onnx                     fp32 ONNX export (parity-checked against PyTorch)
    model.fp16.onnx                fp16 graph (attention scores/softmax in fp32)
    model.int8.onnx                INT8 Q/DQ graph (+ model.int8.calib.json, the cached ranges)
    model.{fp32,fp16,int8}.engine  TensorRT engines (+ .json sidecars), only with TensorRT and a GPU
    bench.json, bench.md           the benchmark
    images/                        detections drawn, attention maps
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from assd.demo.settings import MODEL, Budget, DataPlan, DemoOptions
from assd.demo.state import fingerprint
from assd.errors import CheckFailed, UserError

TRAIN_DIR = "train"
CHECKPOINT = f"{TRAIN_DIR}/last.pt"
ONNX_FP32, ONNX_FP16, ONNX_INT8 = "model.onnx", "model.fp16.onnx", "model.int8.onnx"
CALIB_CACHE = "model.int8.calib.json"
TIMING_CACHE = "tensorrt.timing-cache"
BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
IMAGES_DIR = "images"
DRAW_SCORE_THRESHOLD = 0.3  # as 'assd predict': boxes worth drawing


@dataclass
class DemoContext:
    """What the steps share: options, budget, data plan, the resolved device and earlier results."""

    out: Path
    options: DemoOptions
    budget: Budget
    plan: DataPlan
    device: str  # resolved: "cpu", "cuda" or "cuda:N"
    detail: Callable[[str], None]  # step details (stderr), and kept in the step's result
    results: dict[str, dict] = field(default_factory=dict)

    def file(self, relative: str) -> str:
        return str(self.out / relative)

    def inputs(self, *relative: str) -> dict:
        return {name: fingerprint(self.out / name) for name in relative}

    def artifacts(self) -> list[str]:
        """The deployable artifacts made so far (relative paths): ONNX graphs, then engines."""
        return [ONNX_FP32, ONNX_FP16, ONNX_INT8, *self.results.get("engines", {}).get("engines", [])]


@dataclass
class StepOutput:
    result: dict
    outputs: list[str]
    line: str


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    key: Callable[[DemoContext], dict]
    run: Callable[[DemoContext], StepOutput]


# ---------------------------------------------------------------- train, evaluate
def _train_key(ctx: DemoContext) -> dict:
    budget = ctx.budget
    return {"model": MODEL, "data": ctx.plan.train, "recipe": "quick", "epochs": budget.epochs,
            "milestones": [budget.milestone], "max_steps": None if ctx.plan.synthetic else budget.max_steps, "seed": 0}


def _interrupted_run(ctx: DemoContext, key: dict) -> bool:
    """Whether ``train/last.pt`` is an unfinished run with the same settings (an interrupted demo): then
    training resumes from it instead of starting over."""
    from assd.models.checkpoint import read_checkpoint

    last = ctx.out / CHECKPOINT
    if ctx.options.force or not last.is_file():
        return False
    try:
        state = read_checkpoint(last)
    except UserError:
        return False
    options, recipe = state.get("options") or {}, state.get("recipe") or {}
    return (not state.get("finished") and state.get("model_config", {}).get("name") == key["model"]
            and options.get("data") == key["data"] and options.get("seed") == key["seed"]
            and recipe.get("epochs") == key["epochs"] and list(recipe.get("milestones", [])) == key["milestones"]
            and (key["max_steps"] is None or state.get("global_step", 0) < key["max_steps"]))


def _train(ctx: DemoContext) -> StepOutput:
    from assd.train import TrainOptions, train

    key = _train_key(ctx)
    resume = _interrupted_run(ctx, key)
    result = train(TrainOptions(
        model=MODEL, data=ctx.plan.train, out=ctx.out / TRAIN_DIR, recipe=key["recipe"], epochs=key["epochs"],
        milestones=tuple(key["milestones"]), max_steps=key["max_steps"], seed=key["seed"],
        workers=ctx.budget.workers, device=ctx.device, resume=resume, force=not resume,
        progress=ctx.options.progress, tensorboard=False))
    losses = result.epoch_losses or result.step_losses
    record = {"checkpoint": CHECKPOINT, "epochs": result.epochs_completed, "steps": result.global_step,
              "recipe": result.recipe.name, "loss_first": losses[0], "loss_last": losses[-1],
              "finished": result.finished}
    line = (f"{CHECKPOINT}: {result.global_step} steps ({result.epochs_completed} epochs of {ctx.plan.train}), "
            f"loss {losses[0]:.2f} -> {losses[-1]:.2f}" + (" (resumed)" if resume else ""))
    return StepOutput(record, [CHECKPOINT], line)


def _evaluate_key(ctx: DemoContext) -> dict:
    return {"val": ctx.plan.val, "limit": ctx.plan.val_limit, "inputs": ctx.inputs(CHECKPOINT)}


def _evaluate(ctx: DemoContext) -> StepOutput:
    from assd.evaluation.engine_parity import eval_engine

    parity = eval_engine(ctx.file(CHECKPOINT), ctx.plan.val, limit=ctx.plan.val_limit, device=ctx.device,
                         progress=ctx.options.progress)
    evaluation = parity.artifact
    record = {"metric": evaluation.metric, "mAP": evaluation.mAP, "num_images": evaluation.num_images,
              "per_class": evaluation.per_class}
    per_class = ", ".join(f"{name} {100 * ap:.1f}" for name, ap in evaluation.per_class.items())
    line = (f"{evaluation.metric} mAP {100 * evaluation.mAP:.1f}% on {evaluation.num_images} images "
            f"({ctx.plan.val_note}); per class: {per_class}")
    return StepOutput(record, [], line)


# ---------------------------------------------------------------- ONNX graphs
def _export_key(ctx: DemoContext) -> dict:
    return {"inputs": ctx.inputs(CHECKPOINT)}


def _export(ctx: DemoContext) -> StepOutput:
    from assd.export.workflow import export_and_check

    try:
        report = export_and_check(ctx.file(CHECKPOINT), ctx.file(ONNX_FP32), echo=ctx.detail)
    except CheckFailed as exc:  # the file is written; the demo goes on and reports the failed check
        return StepOutput({"onnx": ONNX_FP32, "parity": None, "passed": False, "error": str(exc)}, [ONNX_FP32],
                          f"{ONNX_FP32}: PARITY FAILED ({exc})")
    record = {"onnx": ONNX_FP32, "parity": report.to_dict(), "passed": True}
    line = (f"{ONNX_FP32} ({_megabytes(ctx, ONNX_FP32)}): parity with PyTorch OK on {report.images} images "
            f"(conf max|d| relative {report.conf_relative:.1e}, {100 * report.agreement:.0f}% of detections "
            "reproduced)")
    return StepOutput(record, [ONNX_FP32], line)


def _megabytes(ctx: DemoContext, relative: str) -> str:
    return f"{(ctx.out / relative).stat().st_size / 1e6:.1f} MB"


def _fp16_key(ctx: DemoContext) -> dict:
    return {"inputs": ctx.inputs(ONNX_FP32)}


def _fp16(ctx: DemoContext) -> StepOutput:
    from assd.export.fp16 import write_fp16_onnx

    write_fp16_onnx(ctx.file(ONNX_FP32), ctx.file(ONNX_FP16))
    return StepOutput({"onnx": ONNX_FP16}, [ONNX_FP16],
                      f"{ONNX_FP16} ({_megabytes(ctx, ONNX_FP16)}): float16 weights and activations, attention "
                      "scores and softmax in float32")


def _int8_key(ctx: DemoContext) -> dict:
    return {"calib_data": ctx.plan.train, "calib_images": ctx.budget.calib_images, "method": "entropy",
            "parity_images": ctx.budget.parity_images, "inputs": ctx.inputs(ONNX_FP32)}


def _int8(ctx: DemoContext) -> StepOutput:
    from assd.calibration.workflow import calibrate_and_report

    key = _int8_key(ctx)
    quantized, report = calibrate_and_report(
        ctx.file(ONNX_FP32), ctx.file(ONNX_INT8), key["calib_data"], num_images=key["calib_images"],
        method=key["method"], cache_path=ctx.file(CALIB_CACHE), parity_images=key["parity_images"],
        echo=ctx.detail)
    record = {"onnx": ONNX_INT8, "calib_cache": CALIB_CACHE, "quantized_convs": quantized.quantized_nodes,
              "calib_images": quantized.images_used, "parity_vs_fp32": report.to_dict() if report else None}
    line = (f"{ONNX_INT8} ({_megabytes(ctx, ONNX_INT8)}): {quantized.quantized_nodes} Conv in int8, "
            f"{key['method']} ranges from {quantized.images_used} training images")
    if report is not None:
        line += f"; {100 * report.agreement:.0f}% of the fp32 graph's detections reproduced"
    return StepOutput(record, [ONNX_INT8, CALIB_CACHE], line)


# ---------------------------------------------------------------- TensorRT engines
def tensorrt_missing(device: str) -> str | None:
    """Why no engine can be built here (None: TensorRT and a GPU are there)."""
    import torch

    if importlib.util.find_spec("tensorrt") is None:
        return "no TensorRT/GPU (TensorRT is not installed)"
    if not torch.cuda.is_available():
        return "no TensorRT/GPU (no CUDA GPU)"
    if not device.startswith("cuda"):
        return f"--device {device} (engines need a GPU)"
    return None


def _engines_key(ctx: DemoContext) -> dict:
    missing = tensorrt_missing(ctx.device)
    if missing:
        return {"skipped": missing}
    return {"inputs": ctx.inputs(ONNX_FP32, ONNX_FP16, ONNX_INT8)}


def _engines(ctx: DemoContext) -> StepOutput:
    missing = tensorrt_missing(ctx.device)
    if missing:
        return StepOutput({"engines": [], "skipped": missing}, [], f"skipped: {missing}")
    from assd.engine.build import EngineOptions, build_engine

    engines, outputs = [], []
    for graph in (ONNX_FP32, ONNX_FP16, ONNX_INT8):
        precision = "fp32" if graph == ONNX_FP32 else graph.split(".")[1]
        engine = f"model.{precision}.engine"
        build_engine(ctx.file(graph), ctx.file(engine), EngineOptions(timing_cache=ctx.file(TIMING_CACHE)),
                     echo=ctx.detail)
        engines.append(engine)
        outputs += [engine, f"{engine}.json"]
    return StepOutput({"engines": engines, "skipped": None}, outputs, f"built {', '.join(engines)}")


# ---------------------------------------------------------------- eval-engine, bench
def _extra_backends(ctx: DemoContext) -> list[str]:
    """Backends the demo also runs its ONNX graphs on: OpenVINO (CPU) when its extra is installed and the
    demo runs on the CPU."""
    from assd.runtime.runners import resolve_device

    on_cpu = resolve_device(ctx.device).type == "cpu"
    return ["openvino"] if on_cpu and importlib.util.find_spec("openvino") is not None else []


def _artifact_backends(ctx: DemoContext) -> list[tuple[str, str]]:
    """(artifact, backend) pairs to evaluate: every artifact on its default backend, then each ONNX graph on
    the extra backends."""
    pairs = [(artifact, "auto") for artifact in ctx.artifacts()]
    return pairs + [(artifact, backend) for backend in _extra_backends(ctx) for artifact in ctx.artifacts()
                    if artifact.endswith(".onnx")]


def _eval_key(ctx: DemoContext) -> dict:
    return {"val": ctx.plan.val, "limit": ctx.plan.val_limit, "backends": _extra_backends(ctx),
            "inputs": ctx.inputs(CHECKPOINT, *ctx.artifacts())}


def _eval(ctx: DemoContext) -> StepOutput:
    from assd.evaluation.engine_parity import eval_engine

    rows = []
    for artifact, backend in _artifact_backends(ctx):
        parity = eval_engine(ctx.file(artifact), ctx.plan.val, reference=ctx.file(CHECKPOINT),
                             limit=ctx.plan.val_limit, device=ctx.device, progress=ctx.options.progress,
                             runner_options={"backend": backend})
        rows.append({"artifact": artifact, "backend": parity.backend, "precision": parity.precision,
                     "metric": parity.artifact.metric, "mAP": parity.artifact.mAP,
                     "mAP_reference": parity.reference.mAP, "delta_mAP_points": parity.delta_points,
                     "tolerance_points": parity.tolerance_points, "detection_agreement": parity.agreement,
                     "passed": parity.passed})
        ctx.detail(f"{artifact} [{parity.backend} {parity.precision}]: mAP {100 * parity.artifact.mAP:.2f}, Δ "
                   f"{parity.delta_points:+.2f} points (tolerance ±{parity.tolerance_points:.2f}), "
                   f"{100 * parity.agreement:.1f}% of the reference's detections reproduced")
    names = [row["precision"] + (" (openvino)" if row["backend"] == "openvino" else "") for row in rows]
    line = "Δ mAP vs PyTorch: " + ", ".join(f"{name} {row['delta_mAP_points']:+.2f}" for name, row in zip(names, rows))
    return StepOutput({"artifacts": rows}, [], line + " points")


def _bench_key(ctx: DemoContext) -> dict:
    budget = ctx.budget
    return {"batches": list(budget.bench_batches), "iters": budget.bench_iters, "warmup": budget.bench_warmup,
            "device": ctx.device, "backends": _extra_backends(ctx), "inputs": ctx.inputs(CHECKPOINT, *ctx.artifacts())}


def _bench(ctx: DemoContext) -> StepOutput:
    from assd.bench.run import run_bench

    budget = ctx.budget
    artifacts = [CHECKPOINT, *ctx.artifacts()]
    report = run_bench([ctx.file(a) for a in artifacts], list(budget.bench_batches), iters=budget.bench_iters,
                       warmup=budget.bench_warmup, device=ctx.device, json_out=ctx.file(BENCH_JSON),
                       markdown_out=ctx.file(BENCH_MD), echo=ctx.detail, backends=["auto", *_extra_backends(ctx)])
    by_path = {ctx.file(a): a for a in artifacts}
    rows = [{"artifact": by_path.get(row["artifact"], row["artifact"]), "backend": row["backend"],
             "precision": row["precision"], "device": row["device"], "batch": row["batch"], "fps": row["fps"],
             "latency_ms_p50": row["latency_ms_p50"], "speedup": row["speedup"]} for row in report["rows"]]
    first = min(budget.bench_batches)
    line = f"FPS at batch {first}: " + ", ".join(
        f"{row['backend']} {row['precision']} {row['fps']:.1f}" for row in rows if row["batch"] == first)
    return StepOutput({"rows": rows}, [BENCH_JSON, BENCH_MD], line)


# ---------------------------------------------------------------- pictures
def _draw_key(ctx: DemoContext) -> dict:
    return {"val": ctx.plan.val, "images": ctx.budget.draw_images, "attention": ctx.budget.attention_images,
            "score_threshold": DRAW_SCORE_THRESHOLD, "inputs": ctx.inputs(CHECKPOINT)}


def _draw(ctx: DemoContext) -> StepOutput:
    from assd.demo.pictures import draw_pictures

    files = draw_pictures(ctx.file(CHECKPOINT), ctx.plan.val, ctx.out, IMAGES_DIR, ctx.budget.draw_images,
                          ctx.budget.attention_images, DRAW_SCORE_THRESHOLD, ctx.device, ctx.options.progress)
    line = (f"{len(files['predictions'])} images with detections, attention maps of {len(files['attention'])} "
            f"-> {files['predictions_grid']}, {', '.join(files['attention'])}")
    return StepOutput(files, [files["predictions_grid"], *files["predictions"], *files["attention"]], line)


STEPS = (
    Step("train", f"train {MODEL}", _train_key, _train),
    Step("evaluate", "evaluate the checkpoint", _evaluate_key, _evaluate),
    Step("export", "export ONNX (parity)", _export_key, _export),
    Step("fp16", "FP16 graph", _fp16_key, _fp16),
    Step("int8", "INT8 graph (calibrated)", _int8_key, _int8),
    Step("engines", "TensorRT engines", _engines_key, _engines),
    Step("eval", "eval-engine each artifact", _eval_key, _eval),
    Step("bench", "bench each artifact", _bench_key, _bench),
    Step("draw", "predictions and attention maps", _draw_key, _draw),
)
