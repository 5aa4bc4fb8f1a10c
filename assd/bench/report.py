"""Benchmark rows (the paper's Table 2 columns plus latency and stage times) and their renderings."""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path

import numpy as np
import torch

import assd
from assd.bench.timing import StageTimes
from assd.errors import UserError
from assd.models.assd import ASSD
from assd.runtime.runners import Runner, device_name

REPORT_FORMAT = "assd-bench"


def _num_params(runner: Runner) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in ASSD(runner.cfg).parameters())


def make_row(runner: Runner, batch_size: int, times: StageTimes) -> dict:
    total, inference = times.total, np.asarray(times.inference)
    cfg = runner.cfg
    return {
        "method": cfg.name, "backbone": cfg.backbone, "input_size": cfg.input_size,
        "artifact": runner.artifact, "backend": runner.backend + ("+cuda-graph" if getattr(runner, "cuda_graph", False)
                                                                 else ""), "precision": runner.precision,
        "device": device_name(runner.device), "num_anchors": int(runner_anchor_count(runner)),
        "num_params": _num_params(runner), "batch": batch_size, "iters": len(total),
        "fps": batch_size / float(np.median(total)), "fps_model": batch_size / float(np.median(inference)),
        "latency_ms_p50": 1e3 * float(np.percentile(total, 50)),
        "latency_ms_p90": 1e3 * float(np.percentile(total, 90)),
        "latency_ms_p99": 1e3 * float(np.percentile(total, 99)),
        "preprocess_ms": 1e3 * float(np.median(times.preprocess)),
        "inference_ms": 1e3 * float(np.median(inference)),
        "postprocess_ms": 1e3 * float(np.median(times.postprocess)),
    }


def runner_anchor_count(runner: Runner) -> int:
    from assd.models.assd import feature_sizes

    return sum(h * w * n for (h, w), n in zip(feature_sizes(runner.cfg), runner.cfg.anchors_per_location))


def add_ratios(rows: list[dict]) -> None:
    """``speedup``: FPS relative to the first artifact at the same batch size."""
    baseline = {}
    for row in rows:
        baseline.setdefault(row["batch"], row["fps"])
        row["speedup"] = row["fps"] / baseline[row["batch"]]


def make_report(rows: list[dict], command: str) -> dict:
    return {"format": REPORT_FORMAT, "assd_version": assd.__version__, "command": command,
            "host": f"{platform.node()} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "rows": rows}


def load_reports(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable benchmark JSON ({type(exc).__name__}): pass files written "
                            "by 'assd bench --json'") from None
        if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
            raise UserError(f"{path}: not an 'assd bench --json' report")
        rows += report["rows"]
    return rows


COLUMNS = [("method", "Method", "{}"), ("backbone", "Backbone", "{}"), ("input_size", "Input", "{}"),
           ("backend", "Backend", "{}"), ("precision", "Precision", "{}"), ("device", "Device", "{}"),
           ("batch", "Batch", "{}"), ("fps", "FPS", "{:.1f}"), ("fps_model", "FPS (model)", "{:.1f}"),
           ("latency_ms_p50", "p50 ms", "{:.1f}"), ("latency_ms_p90", "p90 ms", "{:.1f}"),
           ("latency_ms_p99", "p99 ms", "{:.1f}"), ("preprocess_ms", "pre ms", "{:.1f}"),
           ("inference_ms", "infer ms", "{:.1f}"), ("postprocess_ms", "NMS ms", "{:.1f}"),
           ("num_anchors", "#Anchors", "{:,}"), ("num_params", "#Params", "{:,}")]


def _cells(row: dict, with_ratio: bool) -> list[str]:
    cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
    if with_ratio:
        cells.append(f"{row.get('speedup', 1.0):.2f}x")
    return cells


def to_markdown(rows: list[dict], with_ratio: bool = True) -> str:
    header = [title for _, title, _ in COLUMNS] + (["vs first"] if with_ratio else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(row, with_ratio)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def merged_table(rows: list[dict]) -> list[dict]:
    """One row per model x precision x device x backend x batch (the best FPS if repeated), the way the
    paper's Table 2 lists GPUs."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["method"], row["precision"], row["device"], row["backend"], row["batch"])
        if key not in best or row["fps"] > best[key]["fps"]:
            best[key] = row
    return sorted(best.values(), key=lambda r: (r["method"], r["device"], r["batch"], -r["fps"]))
