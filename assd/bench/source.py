"""``assd bench --source VIDEO``: end-to-end FPS on a video next to the model-only FPS of the same
artifact and batch, measured in one run, interleaved.

End to end is what an application gets from ``Detector.stream(VIDEO)``: decoding (FFMPEG), pre-processing,
the network, decode + NMS, pixel boxes - frames delivered per second of wall time, from opening the
video to the last result. Model only is the network alone on the same frames, pre-processed beforehand
(``Runner.infer``: the "FPS (model)" of ``assd bench``). Their ratio says how much the pipeline around
the network costs; ``Detector.stream`` overlaps decoding and pre-processing with the network on
background threads, so on a machine with cores to spare the ratio approaches 1. Each configuration is
measured ``rounds`` times, interleaved round by round with the others (machine noise hits all alike);
the medians are reported with the machine's load average.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from assd.detector import Detector
from assd.detector.sources import VideoSource
from assd.errors import UserError
from assd.paths import check_outputs
from assd.runtime.preprocess import preprocess
from assd.runtime.runners import artifact_files, device_name
from assd.utils import atomic_write_json, atomic_write_text


def _video_frames(video: str, count: int) -> list[np.ndarray]:
    """The first ``count`` frames (RGB) of ``video``, for the model-only timing."""
    source = VideoSource.file(video)
    import threading

    frames = [frame.image for _, frame in zip(range(count), source.frames(threading.Event()))]
    source.close()
    return frames


def _model_only_fps(detector: Detector, frames: list[np.ndarray], batch_size: int) -> float:
    """Frames per second of ``runner.infer`` alone over ``frames`` in batches (pre-processed beforehand)."""
    runner = detector.model.runner
    batches = [preprocess(frames[i:i + batch_size], runner.cfg, device=runner.device)
               for i in range(0, len(frames) - batch_size + 1, batch_size)]
    with torch.inference_mode():
        runner.infer_outputs(batches[0])  # warm-up
        runner.synchronize()
        start = time.perf_counter()
        for batch in batches:
            runner.infer_outputs(batch)
        runner.synchronize()
    return len(batches) * batch_size / (time.perf_counter() - start)


def _end_to_end_fps(detector: Detector, video: str, batch_size: int, frames: int) -> float:
    detector.batch_size = batch_size
    start = time.perf_counter()
    with detector.stream(video, max_frames=frames, keep_images=False) as stream:
        count = sum(1 for _ in stream)
    return count / (time.perf_counter() - start)


def run_source_bench(artifacts: list[str], batch_sizes: list[int], video: str, frames: int = 32, rounds: int = 3,
                     device: str | None = "cpu", json_out: str | None = None, markdown_out: str | None = None,
                     echo: Callable[[str], None] = print) -> list[dict]:
    """One row per (artifact, batch): model-only FPS, end-to-end FPS on ``video`` and their ratio."""
    if frames < max(batch_sizes) or rounds < 1:
        raise UserError(f"--frames {frames} / --rounds {rounds}: need frames >= the largest batch and rounds >= 1")
    check_outputs([video, *(path for artifact in artifacts for path in artifact_files(artifact))],
                  files={"--json": json_out, "--markdown": markdown_out})
    pool = _video_frames(video, frames)
    if len(pool) < max(batch_sizes):
        raise UserError(f"{video}: {len(pool)} frames decoded, fewer than the batch {max(batch_sizes)}")
    frames = len(pool)
    detectors = [Detector(artifact, device=device, batch_size=max(batch_sizes)) for artifact in artifacts]
    for detector in detectors:
        if detector.info["backend"] == "server":
            raise UserError(f"{detector.artifact}: --source times local artifacts (a server: bench --server)")
    echo(f"{video}: {frames} frames of {pool[0].shape[1]}x{pool[0].shape[0]}, {len(artifacts)} artifact(s) x batch "
         f"{batch_sizes}, {rounds} interleaved rounds (plus one warm-up)")
    timings = {(i, b): {"model": [], "e2e": []} for i in range(len(detectors)) for b in batch_sizes}
    for round_index in range(rounds + 1):
        for i, detector in enumerate(detectors):
            for batch_size in batch_sizes:
                model = _model_only_fps(detector, pool, batch_size)
                e2e = _end_to_end_fps(detector, video, batch_size, frames)
                if round_index > 0:  # round 0 warms every configuration up
                    timings[(i, batch_size)]["model"].append(model)
                    timings[(i, batch_size)]["e2e"].append(e2e)
    rows = []
    for (i, batch_size), measured in timings.items():
        info = detectors[i].info
        model, e2e = float(np.median(measured["model"])), float(np.median(measured["e2e"]))
        rows.append({"artifact": detectors[i].artifact, "model": info["model"], "backend": info["backend"],
                     "precision": info["precision"], "device": info["device"], "batch": batch_size, "frames": frames,
                     "fps_model": model, "fps_end_to_end": e2e, "ratio": e2e / model,
                     "fps_model_runs": measured["model"], "fps_end_to_end_runs": measured["e2e"]})
    table = source_table(rows)
    load = os.getloadavg()
    echo(table)
    echo(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, {device_name(torch.device('cpu'))}")
    if json_out:
        atomic_write_json(json_out, {"command": " ".join(["assd", *sys.argv[1:]]), "video": video, "rows": rows,
                                     "load_average": list(load), "cpus": os.cpu_count()})
        echo(f"wrote {json_out}")
    if markdown_out:
        atomic_write_text(markdown_out, table + "\n")
        echo(f"wrote {markdown_out}")
    return rows


def source_table(rows: list[dict]) -> str:
    lines = [("| Artifact | Model | Backend | Precision | Batch | Frames | FPS (model only) | FPS (end to end) | "
             "End to end / model |"), "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {os.path.basename(row['artifact'])} | {row['model']} | {row['backend']} | {row['precision']} "
                     f"| {row['batch']} | {row['frames']} | {row['fps_model']:.2f} | {row['fps_end_to_end']:.2f} | "
                     f"{100 * row['ratio']:.0f}% |")
    return "\n".join(lines)
