"""One video or stream through a ``Detector`` into files: JSON Lines per frame, an annotated video.

``record`` drives a ``FrameStream`` and writes each result as it comes, with a progress bar showing the
live FPS. Whatever ends the stream - its last frame, ``max_frames``, Ctrl-C, a source error (a frame
of another size, a server failing) - the files written so far are finished (``outputs.py``: complete
lines, a playable video, renamed onto their names); then Ctrl-C and errors go on to the caller, and a
truncated video becomes a ``UserError`` naming how many frames were lost.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from assd.detector.outputs import JsonLinesOutput, VideoOutput
from assd.detector.streaming import FrameStream
from assd.errors import UserError

DEFAULT_LIVE_FPS = 25.0  # an annotated camera/stream video's rate when the source does not say


@dataclass
class Recording:
    """What ``record`` did: frames written, dropped (live sources), lost (truncated video), seconds."""

    source: str
    frames: int = 0
    dropped: int = 0
    lost: int = 0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        extra = f", {self.dropped} dropped to keep up" if self.dropped else ""
        stopped = " (stopped by Ctrl-C)" if self.interrupted else ""
        files = " and ".join(str(path) for path in self.files)
        return f"{self.source}: {self.frames} frames at {self.fps:.1f} FPS{extra}{stopped} -> {files}"


def _video_fps(stream: FrameStream) -> float:
    fps = stream.source.fps or DEFAULT_LIVE_FPS
    return fps / stream.stride


def _progress(stream: FrameStream, enabled: bool):
    from tqdm import tqdm

    total = stream.source.expected_frames
    if total is not None:
        total = -(-total // stream.stride)
        if stream.max_frames is not None:
            total = min(total, stream.max_frames)
    elif stream.max_frames is not None and not stream.source.live:
        total = stream.max_frames
    return tqdm(total=total, desc=Path(stream.source.name).name or stream.source.name, unit="frame",
                disable=not enabled, leave=False, dynamic_ncols=True)


def record(stream: FrameStream, jsonl_path: Path, video_path: Path | None = None,
           progress: bool = True) -> Recording:
    """Write ``stream``'s results to ``jsonl_path`` (and an annotated video to ``video_path``); see the
    module docstring for how it ends. The stream must keep its images when a video is written."""
    recording = Recording(stream.source.name)
    lines, video = JsonLinesOutput(jsonl_path), None
    bar = _progress(stream, progress)
    start = time.perf_counter()
    failure: BaseException | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a truncated video is said below, in one line
            for result in stream:
                lines.write(result)
                if video_path is not None:
                    if video is None:
                        video = VideoOutput(video_path, _video_fps(stream), result.image_size)
                    video.write(result)
                recording.frames += 1
                bar.update(1)
                if stream.dropped:
                    bar.set_postfix(dropped=stream.dropped, refresh=False)
    except KeyboardInterrupt as exc:
        recording.interrupted, failure = True, exc
    except UserError as exc:
        failure = exc
    finally:
        stream.close()
        bar.close()
        recording.seconds = time.perf_counter() - start
        recording.dropped, recording.lost = stream.dropped, stream.lost
        recording.files.append(lines.finish())
        if video is not None:
            recording.files.append(video.finish())
    if isinstance(failure, UserError):
        raise UserError(f"{failure} (the {recording.frames} frames before it are in "
                        f"{' and '.join(map(str, recording.files))})") from None
    if recording.lost:
        raise UserError(f"{recording.source}: truncated video: {recording.lost} of {stream.source.expected_frames} "
                        f"frames could not be decoded; the {recording.frames} decodable frames are in "
                        f"{' and '.join(map(str, recording.files))}: re-encode or replace the file")
    return recording
