"""``assd bench --server URL``: load a served model at several concurrencies and report what it sustains.

At each concurrency ``c``, ``c`` asyncio clients (tritonclient's aio API, HTTP or gRPC) each send one
image per request back to back, until ``--requests`` have completed or ``--seconds`` have passed
(whichever is given; the other is bounded by ``MAX_REQUESTS`` / ``MAX_SECONDS``). Reported per level:
client-side throughput and p50/p90/p99 latency, and from Triton's own statistics (differences taken
around the level) the average time a request waited in the queue, the compute time of the model's
executions and the average batch the dynamic batcher formed.

The payload is what ``assd bench`` times (``synthetic_images``: 500x375 RGB pixels) unless ``images``
names files, which are then sent encoded (their JPEG/PNG bytes, decoded on the server).
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import assd
from assd.errors import CheckFailed, UserError
from assd.paths import check_outputs
from assd.remote.client import DetectionClient, error_message, parse_server_url
from assd.utils import atomic_write_json, atomic_write_text

REPORT_FORMAT = "assd-bench-server"
MAX_REQUESTS = 100_000  # per concurrency level
MAX_SECONDS = 600.0  # per concurrency level
MAX_CONCURRENCY = 256
DEFAULT_REQUESTS = 200


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1 or max(levels) > MAX_CONCURRENCY:
        raise UserError(f"--concurrency {text}: give levels in 1..{MAX_CONCURRENCY} separated by commas, e.g. 1,2,4,8")
    return levels


def bounds(requests: int | None, seconds: float | None) -> tuple[int, float]:
    """(requests, seconds) per level: the one given, the other at its ceiling; 200 requests by default."""
    if requests is not None and seconds is not None:
        raise UserError("give --requests N or --seconds S, not both")
    if requests is not None and not 1 <= requests <= MAX_REQUESTS:
        raise UserError(f"--requests {requests}: must be in 1..{MAX_REQUESTS}")
    if seconds is not None and not 0 < seconds <= MAX_SECONDS:
        raise UserError(f"--seconds {seconds}: must be in (0, {MAX_SECONDS:.0f}]")
    if seconds is not None:
        return MAX_REQUESTS, float(seconds)
    return requests or DEFAULT_REQUESTS, MAX_SECONDS


def load_payloads(images: list[str] | None) -> tuple[list, str]:
    """The request payloads (encoded bytes of ``images``, else ``assd bench``'s synthetic pixels)."""
    if not images:
        from assd.bench.timing import synthetic_images

        return synthetic_images(8), "synthetic 500x375 RGB pixels (as assd bench)"
    from assd.evaluation.predict import collect_images

    paths = collect_images(images)
    return [Path(path).read_bytes() for path in paths], f"{len(paths)} encoded image files"


def _stat(stats: dict, *keys) -> tuple[int, int]:
    """(count, ns) of ``inference_stats[key]`` summed over ``keys`` (gRPC's JSON has them as strings)."""
    parts = [stats.get("inference_stats", {}).get(key, {}) for key in keys]
    return int(parts[0].get("count", 0)), sum(int(part.get("ns", 0)) for part in parts)


def server_side(before: dict, after: dict) -> dict:
    """Per-request queue and compute milliseconds and the average batch, from two statistics snapshots."""
    def delta(*keys):
        (count_a, ns_a), (count_b, ns_b) = _stat(after, *keys), _stat(before, *keys)
        return count_a - count_b, ns_a - ns_b

    queued, queue_ns = delta("queue")
    computed, compute_ns = delta("compute_input", "compute_infer", "compute_output")
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    return {"server_queue_ms": queue_ns / queued / 1e6 if queued else None,
            "server_compute_ms": compute_ns / computed / 1e6 if computed else None,
            "avg_batch": inferences / executions if executions else None, "executions": executions}


async def _level(client: DetectionClient, payloads: list, concurrency: int, max_requests: int,
                 max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + max_seconds
    issued = 0

    async def worker(offset: int):
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            payload = payloads[(offset + issued) % len(payloads)]
            sent = time.perf_counter()
            try:
                await client.infer(payload)
                latencies.append(time.perf_counter() - sent)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                errors.append(error_message(exc))

    before = await client.statistics()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    after = await client.statistics()
    latency_ms = 1e3 * np.asarray(latencies)
    percentiles = {f"latency_ms_p{q}": float(np.percentile(latency_ms, q)) if latencies else None  # JSON: null
                   for q in (50, 90, 99)}
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None, "seconds": wall, "throughput": len(latencies) / wall,
            **percentiles, **server_side(before, after)}


async def _run(address, payloads, levels, max_requests, max_seconds, echo, client_options: dict) -> list[dict]:
    async with DetectionClient(address, connections=max(levels), **client_options) as client:
        await client.check_ready()
        warmup = 2 * max(levels)
        await _level(client, payloads, max(levels), warmup, max_seconds)  # untimed: connections, first batches
        rows = []
        for concurrency in levels:
            row = await _level(client, payloads, concurrency, max_requests, max_seconds)
            echo(f"  concurrency {concurrency}: {row['requests']} requests in {row['seconds']:.1f} s")
            rows.append(row)
        return rows


COLUMNS = [("concurrency", "Concurrency", "{}"), ("requests", "Requests", "{}"), ("errors", "Errors", "{}"),
           ("throughput", "img/s", "{:.1f}"), ("latency_ms_p50", "p50 ms", "{:.1f}"),
           ("latency_ms_p90", "p90 ms", "{:.1f}"), ("latency_ms_p99", "p99 ms", "{:.1f}"),
           ("server_queue_ms", "queue ms", "{:.1f}"), ("server_compute_ms", "compute ms", "{:.1f}"),
           ("avg_batch", "avg batch", "{:.2f}")]


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_server_bench(url: str, levels: list[int], requests: int | None = None, seconds: float | None = None,
                     images: list[str] | None = None, json_out: str | None = None, markdown_out: str | None = None,
                     echo: Callable[[str], None] = print, api_key: str | None = None,
                     timeout: float = 60.0) -> dict:
    """Load the model at ``url`` at every concurrency of ``levels``; returns the report (written where asked).
    ``api_key`` (default ``$ASSD_API_KEY``) and ``timeout`` (seconds per request) go to the client."""
    address = parse_server_url(url, "--server")
    max_requests, max_seconds = bounds(requests, seconds)
    check_outputs(list(images or []), files={"--json": json_out, "--markdown": markdown_out})
    payloads, payload_name = load_payloads(images)
    bound = f"{max_requests} requests" if seconds is None else f"{max_seconds:g} s"
    echo(f"loading {address} with {payload_name}: concurrency {levels}, {bound} per level")
    rows = asyncio.run(_run(address, payloads, levels, max_requests, max_seconds, echo,
                            {"api_key": api_key, "timeout": timeout}))
    report = {"format": REPORT_FORMAT, "assd_version": assd.__version__, "command": " ".join(["assd", *sys.argv[1:]]),
              "server": str(address), "payload": payload_name, "client_host": platform.node(), "rows": rows}
    echo(to_markdown(rows))
    if json_out:
        atomic_write_json(json_out, report)
        echo(f"wrote {json_out}")
    if markdown_out:
        atomic_write_text(markdown_out, to_markdown(rows))
        echo(f"wrote {markdown_out}")
    failed = sum(row["errors"] for row in rows)
    if failed:
        first = next(row["first_error"] for row in rows if row["first_error"])
        raise CheckFailed(f"{address}: {failed} requests failed (first: {first})")
    return report
