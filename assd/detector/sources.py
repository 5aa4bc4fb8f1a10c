"""Where frames come from: image files, folders and globs, video files, cameras, network streams.

``open_source(source)`` classifies what the user gave and opens it, or says in one line why it
cannot (``UserError``): a missing file, a file OpenCV's FFMPEG backend cannot decode, a camera index
that does not exist, a stream URL that does not answer within ``timeout`` seconds. ``Source.frames``
then yields ``Frame``s (RGB uint8) until the source ends; a frame whose size differs from the first
one stops it with a ``UserError`` (a video's frames share one size: a writer and a batch need it).
A video file that ends before the frame count in its header is *truncated*: its decodable frames are
yielded and ``lost`` says how many were missing.
"""

from __future__ import annotations

import abc
import contextlib
import glob
import itertools
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from assd.data import read_rgb_image
from assd.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GLOB_CHARS = re.compile(r"[*?\[]")
DECODE_WORKERS, DECODE_AHEAD = 4, 8  # image files decoded in parallel, this many ahead
# FFMPEG's own log lines (a missing moov atom, a refused connection) off: each failure is said in one line
# here. Read once, when OpenCV first uses FFMPEG; OPENCV_FFMPEG_LOGLEVEL=32 in the environment shows them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
# A header frame count may be an estimate (duration x fps) one frame off; more is a truncated file.
COUNT_SLACK = 1


@dataclass
class Frame:
    """One decoded frame: ``image`` RGB uint8 ``[H, W, 3]``; ``timestamp`` in seconds (see ``Result``)."""

    index: int
    timestamp: float | None
    image: np.ndarray
    source: str


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's own log lines (a missing camera, an encoder this build lacks) off: we say it in one line."""
    previous = cv2.getLogLevel()
    cv2.setLogLevel(0)  # cv::utils::logging::LOG_LEVEL_SILENT
    try:
        yield
    finally:
        cv2.setLogLevel(previous)


def collect_images(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files of ``sources`` (files; folders and globs, whose image files are taken sorted), without repeats."""
    paths, seen = [], set()
    for source in sources:
        source = Path(source)
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        elif source.is_file():
            found = [source]
        elif GLOB_CHARS.search(str(source)):
            found = [Path(p) for p in sorted(glob.glob(str(source), recursive=True))
                     if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise UserError(f"{source}: no image files match this pattern")
        else:
            raise UserError(f"{source}: no such image file or folder")
        for path in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    return paths


def source_kind(source) -> str:
    """``"camera"``, ``"stream"`` (a URL), ``"images"`` (file, folder, glob or a list of them) or ``"video"``."""
    if isinstance(source, (list, tuple)):
        return "images"
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return "camera"
    text = str(source)
    if URL_SCHEME.match(text):
        return "stream"
    path = Path(text)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES or (not path.exists() and GLOB_CHARS.search(text)):
        return "images"
    return "video"


def open_source(source, timeout: float = 10.0) -> Source:
    """The opened source (module docstring); ``timeout``: seconds a stream URL may take to answer."""
    kind = source_kind(source)
    if kind == "images":
        return ImageSource(collect_images(source if isinstance(source, (list, tuple)) else [source]))
    if kind == "camera":
        return VideoSource.camera(int(source))
    if kind == "stream":
        return VideoSource.stream(str(source), timeout)
    return VideoSource.file(str(source))


class Source(abc.ABC):
    """Frames of one source. ``live``: a camera or network stream (frames come at their own pace);
    ``fps`` and ``size`` ``(width, height)`` when known; ``expected_frames``: the count a video file's
    header gives (None: unknown); ``lost``: frames the header promised that could not be decoded."""

    name: str = ""
    live: bool = False
    fps: float | None = None
    size: tuple[int, int] | None = None
    expected_frames: int | None = None
    lost: int = 0

    @abc.abstractmethod
    def frames(self, stop: threading.Event, stride: int = 1) -> Iterator[Frame]:
        """Every ``stride``-th frame until the source ends or ``stop`` is set (each kind of source its own)."""

    def close(self) -> None:
        pass


class ImageSource(Source):
    """Image files in order (sizes may differ: each result is scaled to its own image)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.name = str(self.paths[0].parent) if self.paths else "images"
        self.expected_frames = len(self.paths)

    def frames(self, stop: threading.Event, stride: int = 1) -> Iterator[Frame]:
        """Decoded on ``DECODE_WORKERS`` threads, up to ``DECODE_AHEAD`` images ahead (OpenCV releases the GIL)."""
        indices = iter(range(0, len(self.paths), stride))
        with ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="assd-decode") as pool:
            pending = deque((index, pool.submit(read_rgb_image, self.paths[index]))
                            for index in itertools.islice(indices, DECODE_AHEAD))
            while pending and not stop.is_set():
                index, image = pending.popleft()
                for following in itertools.islice(indices, 1):
                    pending.append((following, pool.submit(read_rgb_image, self.paths[following])))
                yield Frame(index, None, image.result(), str(self.paths[index]))
            for _, future in pending:
                future.cancel()


class VideoSource(Source):
    """A ``cv2.VideoCapture``: a video file, a camera or a network stream (FFMPEG backend)."""

    def __init__(self, capture: cv2.VideoCapture, name: str, live: bool):
        self.capture, self.name, self.live = capture, name, live
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (width, height) if width > 0 and height > 0 else None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        self.expected_frames = count if count > 0 else None

    @classmethod
    def file(cls, path: str) -> VideoSource:
        if not Path(path).exists():
            raise UserError(f"{path}: no such video, image file or folder: check the path")
        if not Path(path).is_file() or not os.access(path, os.R_OK):
            raise UserError(f"{path}: cannot read this file: check its permissions")
        with quiet_opencv():
            capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not capture.isOpened() or not capture.grab():
            capture.release()
            raise UserError(f"{path}: not a video OpenCV's FFMPEG backend can decode (unknown format, or a damaged "
                            "or truncated file without its index): check the file or re-encode it")
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)  # back to the first frame after the probe
        return cls(capture, path, live=False)

    @classmethod
    def camera(cls, index: int) -> VideoSource:
        with quiet_opencv():
            capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            capture.release()
            raise UserError(f"camera {index}: no such camera (OpenCV cannot open it; /dev/video{index} on Linux): "
                            "check the index and that no other program holds the camera")
        return cls(capture, f"camera{index}", live=True)

    @classmethod
    def stream(cls, url: str, timeout: float) -> VideoSource:
        """Opened on a helper thread: FFMPEG's own open timeout does not cover every protocol's handshake."""
        milliseconds = int(timeout * 1000)
        opened: list[cv2.VideoCapture] = []

        def open_capture():
            with quiet_opencv():
                opened.append(cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds,
                                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]))

        opener = threading.Thread(target=open_capture, daemon=True, name="assd-open-stream")
        opener.start()
        opener.join(timeout + 1.0)
        if not opened or not opened[0].isOpened():
            if opened:
                opened[0].release()
            raise UserError(f"{url}: no video stream answered within {timeout:g} s (--timeout): check the URL and "
                            "that the camera or server is running")
        return cls(opened[0], url, live=True)

    def frames(self, stop: threading.Event, stride: int = 1) -> Iterator[Frame]:
        index, read, first_size = 0, 0, None
        while not stop.is_set():
            if index % stride and self.capture.grab():  # a skipped frame: decoded, not converted
                read, index = read + 1, index + 1
                continue
            ok, frame = self.capture.read() if index % stride == 0 else (False, None)
            if not ok or frame is None:  # the end (or a frame that cannot be decoded: the end too)
                if self.expected_frames and self.expected_frames - read > COUNT_SLACK:
                    self.lost = self.expected_frames - read
                return
            captured = time.time()
            read += 1
            height, width = frame.shape[:2]
            if first_size is None:
                first_size = (width, height)
            elif (width, height) != first_size:
                raise UserError(f"{self.name}: frame {index} is {width}x{height}, the frames before it "
                                f"{first_size[0]}x{first_size[1]}: a stream must keep one frame size: re-encode "
                                "the video or restart the stream")
            timestamp = captured if self.live else self._position(index)
            yield Frame(index, timestamp, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), self.name)
            index += 1

    def _position(self, index: int) -> float:
        if self.fps:
            return index / self.fps
        return self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    def close(self) -> None:
        self.capture.release()
