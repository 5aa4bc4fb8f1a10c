"""The demo's summary: one row per artifact (mAP, Δ mAP, FPS, latency), the checks, and every file
written; rendered as Markdown (printed, and ``OUT/report.md``) and as JSON (``OUT/report.json``)."""

from __future__ import annotations

import datetime

import assd
from assd.demo.settings import MODEL
from assd.demo.steps import BENCH_JSON, BENCH_MD, CALIB_CACHE, CHECKPOINT, DemoContext

REPORT_MD, REPORT_JSON = "report.md", "report.json"
REPORT_FORMAT = "assd-demo-report"


def format_seconds(seconds: float) -> str:
    """``12.3 s`` below a minute, else ``2m05s`` (whole seconds, rounded before splitting: never ``2m60s``)."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def artifact_rows(ctx: DemoContext) -> list[dict]:
    """Per artifact (the checkpoint first): backend, precision, mAP, Δ mAP, FPS per batch size, latency."""
    evaluation = ctx.results["evaluate"]
    rows = [{"artifact": CHECKPOINT, "backend": "torch", "precision": "fp32", "mAP": evaluation["mAP"],
             "delta_mAP_points": None, "tolerance_points": None, "detection_agreement": None, "passed": True}]
    rows += [dict(row) for row in ctx.results["eval"]["artifacts"]]
    bench = ctx.results["bench"]["rows"]
    for row in rows:
        timings = sorted((b for b in bench if b["artifact"] == row["artifact"]
                          and b["backend"] == row.get("backend", b["backend"])), key=lambda b: b["batch"])
        row["fps"] = {b["batch"]: b["fps"] for b in timings}
        row["speedup"] = timings[0]["speedup"] if timings else None
        row["latency_ms_p50"] = timings[0]["latency_ms_p50"] if timings else None
        if timings:
            row["backend"], row["device"] = timings[0]["backend"], timings[0]["device"]
    return rows


def failed_checks(ctx: DemoContext, rows: list[dict]) -> tuple[list[str], list[str]]:
    """(fp32 checks that failed: a broken export; reduced-precision Δ mAP outside its tolerance: reported)."""
    fatal, noted = [], []
    if not ctx.results["export"]["passed"]:
        fatal.append(f"ONNX export parity: {ctx.results['export'].get('error')}")
    for row in rows:
        if row["passed"]:
            continue
        message = (f"{row['artifact']} Δ mAP {row['delta_mAP_points']:+.2f} points is outside ±"
                   f"{row['tolerance_points']:.2f}")
        (fatal if row["precision"] == "fp32" else noted).append(message)
    return fatal, noted


def _table(rows: list[dict], metric: str, batches: list[int]) -> list[str]:
    fps_headers = " | ".join(f"FPS (batch {b})" for b in batches)
    header = (f"| Artifact | Backend | Precision | mAP ({metric}, %) | Δ mAP (points) | Detections reproduced | "
              f"{fps_headers} | Speed vs PyTorch | Latency p50 (ms) |")
    lines = [header,
             "|---|---|---|---:|---:|---:|" + "---:|" * len(batches) + "---:|---:|"]
    for row in rows:
        if row["delta_mAP_points"] is None:
            delta, agreement = "reference", "-"
        else:
            mark = "" if row["passed"] else " **outside**"
            delta = f"{row['delta_mAP_points']:+.2f} (±{row['tolerance_points']:.2f}){mark}"
            agreement = f"{100 * row['detection_agreement']:.1f}%"
        fps = " | ".join(f"{row['fps'][b]:.1f}" if b in row["fps"] else "-" for b in batches)
        speed = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        latency = f"{row['latency_ms_p50']:.1f}" if row["latency_ms_p50"] is not None else "-"
        lines.append(f"| {row['artifact']} | {row['backend']} | {row['precision']} | {100 * row['mAP']:.1f} | "
                     f"{delta} | {agreement} | {fps} | {speed} | {latency} |")
    return lines


def collect_files(ctx: DemoContext) -> dict[str, list[str]]:
    """Every file the demo wrote, relative to ``OUT``, by kind."""
    draw = ctx.results["draw"]
    return {"report": [REPORT_MD, REPORT_JSON], "checkpoint": [CHECKPOINT],
            "onnx": [*ctx.artifacts()[:3], CALIB_CACHE], "engines": ctx.results["engines"]["engines"],
            "benchmark": [BENCH_MD, BENCH_JSON],
            "images": [draw["predictions_grid"], *draw["attention"], *draw["predictions"]]}


def _reused_note(reused: list[str], total: int) -> str:
    if not reused:
        return ""
    return " (all steps reused)" if len(reused) == total else f" (reused: {', '.join(reused)})"


def summary_lines(ctx: DemoContext, rows: list[dict], steps: dict, total_seconds: float) -> list[str]:
    """The summary in Markdown: headline, artifact table, checks, files."""
    metric = ctx.results["evaluate"]["metric"]
    batches = sorted({b for row in rows for b in row["fps"]})
    device = next((row["device"] for row in rows if row.get("device")), ctx.device)
    reused = [name for name, step in steps.items() if step["reused"]]
    lines = [f"# assd demo: {MODEL}, {ctx.budget.name} budget",
             "",
             f"Trained on `{ctx.plan.train}` ({ctx.results['train']['steps']} steps); evaluated on `{ctx.plan.val}` "
             f"({ctx.plan.val_note}); {device}; {format_seconds(total_seconds)}"
             + _reused_note(reused, len(steps)) + ".",
             "",
             *_table(rows, metric, batches),
             ""]
    export = ctx.results["export"]
    if export["passed"]:
        parity = export["parity"]
        lines.append(f"ONNX export parity (fp32 vs PyTorch, {parity['images']} images): OK, conf max|d| relative "
                     f"{parity['conf_max_abs'] / max(1.0, parity['conf_scale']):.1e}, {100 * parity['agreement']:.1f}% "
                     "of detections reproduced.")
    else:
        lines.append(f"ONNX export parity: FAILED ({export.get('error')}).")
    engines = ctx.results["engines"]
    lines.append(f"TensorRT engines: {'skipped: ' + engines['skipped'] if engines['skipped'] else ', '.join(engines['engines'])}.")
    fatal, noted = failed_checks(ctx, rows)
    for message in fatal:
        lines.append(f"FAILED: {message}.")
    for message in noted:
        lines.append(f"Note: {message} (reduced precision on a briefly trained model; reported, not an error).")
    lines += ["", f"Files in `{ctx.out}`:", ""]
    for kind, names in collect_files(ctx).items():
        lines.append(f"- {kind}: " + (", ".join(names) if names else "none"))
    return lines


def build_report(ctx: DemoContext, steps: dict, total_seconds: float) -> tuple[dict, str, str]:
    """``(report.json content, report.md text, the summary printed)``; ``steps``: ``{name: {"title",
    "reused", "seconds", "line"}}``."""
    rows = artifact_rows(ctx)
    fatal, noted = failed_checks(ctx, rows)
    lines = summary_lines(ctx, rows, steps, total_seconds)
    summary = "\n".join(lines) + "\n"
    step_lines = ["", "## Steps", "", "| Step | Result | Time |", "|---|---|---:|"]
    for step in steps.values():
        time_text = f"reused ({format_seconds(step['seconds'])} earlier)" if step["reused"] else format_seconds(
            step["seconds"])
        step_lines.append(f"| {step['title']} | {step['line']} | {time_text} |")
    markdown = summary + "\n".join(step_lines) + "\n"
    report = {
        "format": REPORT_FORMAT, "version": 1, "assd_version": assd.__version__,
        "created_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": MODEL, "options": {"out": str(ctx.options.out), "data": ctx.options.data,
                                    "val_data": ctx.options.val_data, "quick": ctx.options.quick,
                                    "force": ctx.options.force, "device": ctx.options.device},
        "device": ctx.device, "budget": ctx.budget.to_dict(), "data": ctx.plan.to_dict(),
        "metric": ctx.results["evaluate"]["metric"],
        "artifacts": [{**row, "fps": {str(b): v for b, v in row["fps"].items()}} for row in rows],
        "export_parity": ctx.results["export"], "engines": ctx.results["engines"],
        "checks": {"passed": not fatal, "failed": fatal, "outside_tolerance_reduced_precision": noted},
        "steps": {name: {**step, "result": ctx.results[name]} for name, step in steps.items()},
        "files": collect_files(ctx), "total_seconds": round(total_seconds, 2),
    }
    return report, markdown, summary
