"""``assd predict``: detections for images, folders, globs, video files, cameras and network streams."""

from __future__ import annotations

import re
from pathlib import Path

import click

from assd.commands.evaluation import _check_batch_size, _postprocess_click_options
from assd.commands.outputs import force_option
from assd.commands.runtime_options import runner_options, runtime_click_options
from assd.errors import UserError


def _stream_name(source: str, kind: str) -> str:
    """The output stem of a video/stream source: the file's stem, ``camera0``, or the URL made a file name."""
    if kind == "video":
        return Path(source).stem
    if kind == "camera":
        return f"camera{int(source)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source.split("://", 1)[-1]).strip("_.") or "stream"


def _unique(stem: str, used: set[str]) -> str:
    name, count = stem, 1
    while name in used:
        count += 1
        name = f"{stem}_{count}"
    used.add(name)
    return name


def _check_options(batch_size: int, stride: int, max_frames: int | None, timeout: float) -> None:
    _check_batch_size(batch_size)
    if stride < 1:
        raise UserError(f"--stride {stride}: must be at least 1")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames {max_frames}: must be at least 1")
    if not timeout > 0:
        raise UserError(f"--timeout {timeout}: must be more than 0 seconds")


@click.command("predict")
@force_option
@click.option("--model", "model_path", required=True,
              help="Checkpoint (.pt) or preset, .onnx, .engine, or a served model http://HOST:PORT/MODEL.")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the outputs: detections.json + drawn images (images), NAME.jsonl (+ NAME.mp4 with "
                   "--save-video) per video or stream.")
@click.option("--save-video", is_flag=True, help="Videos and streams: write NAME.mp4 with the boxes drawn (same fps "
                                                 "and size; H.264 or MPEG-4 as this OpenCV build supports).")
@click.option("--stride", type=int, default=1, show_default=True, help="Take every N-th frame (or image).")
@click.option("--max-frames", type=int, default=None, help="Stop each video/stream after N results.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds a stream URL may take to answer.")
@click.option("--drop-frames/--no-drop-frames", default=None,
              help="Keep only the newest frames when inference falls behind [default: on for cameras and "
                   "network streams, off for files].")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar with the live FPS.")
@click.option("--api-key", default=None, envvar="ASSD_API_KEY", show_envvar=True,
              help="--model URL: the key of 'assd serve --api-key' (sent as the header x-api-key).")
@_postprocess_click_options(score_threshold=0.3)
@runtime_click_options()
def predict_command(model_path, sources, out_dir, save_video, stride, max_frames, timeout, drop_frames, batch_size,
                    device, progress, api_key, score_threshold, nms_iou, top_k, max_detections, backend, threads,
                    performance_hint):
    """Detect objects in SOURCES: image files, folders and globs (detections.json + drawn images), video
    files, camera indices and RTSP/HTTP stream URLs (NAME.jsonl, one line per frame; --save-video)."""
    _check_options(batch_size, stride, max_frames, timeout)  # options first: before the heavy imports
    runtime = runner_options(backend, threads, performance_hint)
    from assd.detector import Detector
    from assd.detector.sources import source_kind
    from assd.evaluation.predict import DETECTIONS_FILE, collect_images, output_names, write_predictions
    from assd.paths import check_outputs
    from assd.remote.client import is_server_url
    from assd.runtime.runners import artifact_files

    image_sources = [source for source in sources if source_kind(source) == "images"]
    streams = [(source, source_kind(source)) for source in sources if source_kind(source) != "images"]
    paths = collect_images(image_sources) if image_sources else []
    names = [*output_names(paths, out_dir), DETECTIONS_FILE] if paths else []
    used = {Path(name).stem for name in names}
    stems = [_unique(_stream_name(source, kind), used) for source, kind in streams]
    for stem in stems:
        names += [f"{stem}.jsonl"] + ([f"{stem}.mp4"] if save_video else [])
    model_inputs = [] if is_server_url(model_path) else artifact_files(model_path)
    local_sources = [source for source, kind in streams if kind == "video"]
    check_outputs([*model_inputs, *image_sources, *local_sources, *paths], folders={"--out": (out_dir, names)})
    detector = Detector(model_path, device=device, batch_size=batch_size, score_threshold=score_threshold,
                        nms_iou=nms_iou, top_k=top_k, max_detections=max_detections, api_key=api_key,
                        backend=None if runtime["backend"] == "auto" else runtime["backend"], threads=threads,
                        performance_hint=performance_hint)
    try:
        if paths:
            _predict_images(detector, paths, out_dir, stride, write_predictions)
        for (source, _), stem in zip(streams, stems, strict=True):
            _predict_stream(detector, source, Path(out_dir), stem, save_video, stride, max_frames, timeout,
                            drop_frames, progress)
    finally:
        detector.close()


def _predict_images(detector, paths, out_dir, stride, write_predictions) -> None:
    paths = paths[::stride]
    results = list(detector.stream(paths, keep_images=False))
    detections = [result.detections for result in results]
    json_path = write_predictions(out_dir, paths, detections, detector.class_names, detector.postprocess)
    total = sum(len(dets) for dets in detections)
    click.echo(f"{total} detections in {len(paths)} images -> {json_path} and {len(paths)} drawn images in {out_dir}")


def _predict_stream(detector, source, out_dir: Path, stem: str, save_video: bool, stride: int, max_frames, timeout,
                    drop_frames, progress: bool) -> None:
    from assd.detector.recording import record

    stream = detector.stream(source, stride=stride, max_frames=max_frames, drop_frames=drop_frames, timeout=timeout,
                             keep_images=save_video)
    recording = record(stream, out_dir / f"{stem}.jsonl", out_dir / f"{stem}.mp4" if save_video else None,
                       progress=progress)
    click.echo(recording.summary())
    if recording.interrupted:
        raise KeyboardInterrupt
