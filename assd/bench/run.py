"""``assd bench``: open every artifact, time them interleaved, print and save the table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from assd.bench.report import (
    add_ratios,
    load_reports,
    make_report,
    make_row,
    merged_table,
    to_csv,
    to_markdown,
)
from assd.bench.timing import benchmark, peak_host_memory_mb
from assd.errors import UserError
from assd.models.limits import check_runners_memory
from assd.paths import check_outputs
from assd.runtime.runners import ENGINE_SUFFIXES, artifact_files, backends_for, open_runner
from assd.utils import atomic_write_json, atomic_write_text


def parse_batches(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch {text}: give positive batch sizes separated by commas, e.g. 1,8,32")
    return sizes


def report_files(reports: list[str], artifacts: list[str]) -> list[str]:
    """The files to merge for ``--report A B C``: click gives ``--report`` its first value only and the
    others arrive as ARTIFACTS; they are merged when they are JSON files, else one line refuses the mix."""
    others = [path for path in artifacts if not path.lower().endswith(".json")]
    if others:
        raise UserError(f"--report merges saved 'assd bench --json' runs; {', '.join(others)} "
                        f"{'is not one' if len(others) == 1 else 'are not'}: measure artifacts in a separate "
                        "'assd bench' run, or pass only .json reports")
    for path in artifacts:
        if not Path(path).is_file():
            raise UserError(f"--report {path}: no such file")
    return [*reports, *artifacts]


def artifact_backends(artifact: str, backends: list[str] | None) -> list[str]:
    """The backends ``artifact`` is timed on: those of ``backends`` that run it ("auto": its default), in
    their order; none of them: its default."""
    runnable = backends_for(artifact)
    chosen = [runnable[0] if name == "auto" else name for name in backends or [] if name in ("auto", *runnable)]
    if not chosen and "tensorrt" in (backends or []) and "onnxruntime" in runnable:
        from assd.runtime.int8_target import refuse_cpu_target

        refuse_cpu_target(artifact, "--backend tensorrt")  # a cpu-target graph never becomes an engine
    return list(dict.fromkeys(chosen)) or [runnable[0]]


def run_bench(artifacts: list[str], batch_sizes: list[int], iters: int = 20, warmup: int = 3,
              device: str | None = "cpu", precision: str = "fp32", compile: bool = False,
              json_out: str | None = None, csv_out: str | None = None, markdown_out: str | None = None,
              cuda_graph: bool = False, echo: Callable[[str], None] = print, backends: list[str] | None = None,
              threads: int | None = None, performance_hint: str | None = None) -> dict:
    """Benchmark ``artifacts`` at every batch size; returns the report (also written where asked).
    ``backends``: each artifact runs on every one of them that can run it (none: its default backend).
    ``cuda_graph``: TensorRT engines replay one captured CUDA graph per batch size (trtexec
    ``--useCudaGraph``); refused when no artifact is an engine."""
    if iters < 1 or warmup < 0:
        raise UserError(f"--iters {iters} / --warmup {warmup}: need iters >= 1 and warmup >= 0")
    if cuda_graph and not any(Path(a).suffix.lower() in ENGINE_SUFFIXES for a in artifacts):
        raise UserError(f"--cuda-graph replays TensorRT engines ({', '.join(ENGINE_SUFFIXES)}); none of "
                        f"{', '.join(artifacts)} is one: drop --cuda-graph or add an engine")
    inputs = [path for artifact in artifacts for path in artifact_files(artifact)]
    check_outputs(inputs, files={"--json": json_out, "--csv": csv_out, "--markdown": markdown_out})
    # fp16_preview off: time what ONNX Runtime runs, not the rounding preview (assd.runtime.fp16_preview)
    runners = [open_runner(artifact, device=device, precision=precision, compile=compile, backend=backend,
                           threads=threads, performance_hint=performance_hint, cuda_graph=cuda_graph,
                           fp16_preview=False)
               for artifact in artifacts for backend in artifact_backends(artifact, backends)]
    for runner in runners:
        for batch_size in batch_sizes:
            runner.check_batch(batch_size)
    check_runners_memory(runners, max(batch_sizes), "bench")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    echo(f"benchmarking {len(runners)} artifact(s) x batch {batch_sizes}: {warmup} warm-up + {iters} timed "
         "iterations each, interleaved")
    results = benchmark(runners, batch_sizes, iters=iters, warmup=warmup)
    rows = [make_row(runners[i], b, results[(i, b)]) for i in range(len(runners)) for b in batch_sizes]
    rows.sort(key=lambda r: r["batch"])
    add_ratios(rows)
    report = make_report(rows, command=" ".join(["assd", *sys.argv[1:]]))
    report["peak_host_mb"] = peak_host_memory_mb()
    report["peak_device_mb"] = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    echo(to_markdown(rows))
    memory = f"peak host memory {report['peak_host_mb']:.0f} MB"
    if report["peak_device_mb"] is not None:
        memory += f", peak device memory {report['peak_device_mb']:.0f} MB"
    echo(memory + " (whole process)")
    _write_outputs(report, rows, json_out, csv_out, markdown_out, echo)
    return report


def merge_reports(paths: list[str], markdown_out: str | None = None, csv_out: str | None = None,
                  echo: Callable[[str], None] = print) -> list[dict]:
    check_outputs(paths, files={"--markdown": markdown_out, "--csv": csv_out})
    rows = merged_table(load_reports(paths))
    echo(to_markdown(rows, with_ratio=False))
    _write_outputs(None, rows, None, csv_out, markdown_out, echo, with_ratio=False)
    return rows


def _write_outputs(report, rows, json_out, csv_out, markdown_out, echo, with_ratio: bool = True) -> None:
    if json_out and report is not None:
        atomic_write_json(json_out, report)
        echo(f"wrote {json_out}")
    if csv_out:
        atomic_write_text(csv_out, to_csv(rows))
        echo(f"wrote {csv_out}")
    if markdown_out:
        atomic_write_text(markdown_out, to_markdown(rows, with_ratio=with_ratio))
        echo(f"wrote {markdown_out}")
