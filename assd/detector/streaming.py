"""``FrameStream``: frames decoded and pre-processed on background threads while the network runs.

Three stages, each on its own thread, joined by small buffers (the model's speed sets the pace):

    reader thread      Source.frames -> frames buffer      (decode; OpenCV releases the GIL)
    preparer thread    frames buffer -> batches buffer     (batch of up to batch_size, pre-processing)
    caller's thread    batches buffer -> model -> Results  (inference, decode + NMS, pixel boxes)

Files are read completely, in order (the reader waits when the buffers are full). A live source
(camera, network stream) is read as fast as it delivers; with ``drop_frames`` the buffers keep only
the newest frames and count the ones they drop, so results stay current when inference is slower
than the source. Every result carries its frame's index and capture time.
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator

from assd.detector.sources import Frame, Source
from assd.runtime.result import Result

JOIN_TIMEOUT_S = 5.0


class _Buffer:
    """A bounded FIFO between two threads. ``drop``: a full buffer drops its oldest item (its frames
    counted in ``dropped``) instead of making the producer wait."""

    def __init__(self, capacity: int, drop: bool, stop: threading.Event):
        self.items, self.capacity, self.drop, self.stop = deque(), capacity, drop, stop
        self.condition = threading.Condition()
        self.ended, self.error, self.dropped = False, None, 0

    def put(self, item, frames: int = 1) -> None:
        with self.condition:
            while not self.drop and len(self.items) >= self.capacity and not self.stop.is_set():
                self.condition.wait(0.1)
            if self.drop and len(self.items) >= self.capacity:
                _, old_frames = self.items.popleft()
                self.dropped += old_frames
            self.items.append((item, frames))
            self.condition.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self.condition:
            self.ended, self.error = True, error
            self.condition.notify_all()

    def take(self, most: int, wait_for_all: bool) -> list:
        """Up to ``most`` items (at least one unless the buffer ended: then what is left, maybe none).
        ``wait_for_all``: wait until ``most`` are there (or the end) instead of taking what is there."""
        with self.condition:
            while not self.stop.is_set():
                ready = len(self.items) >= (most if wait_for_all else 1)
                if ready or self.ended:
                    break
                self.condition.wait(0.1)
            if not self.items and self.error is not None:
                raise self.error
            taken = [self.items.popleft()[0] for _ in range(min(most, len(self.items)))]
            self.condition.notify_all()
            return taken


class FrameStream:
    """Iterate to get one ``Result`` per frame (see the module docstring); use as a context manager or
    ``close()`` to stop early. After the iteration: ``frames_read``, ``results``, ``dropped`` (live
    sources with ``drop_frames``), ``lost`` (frames of a truncated video that could not be decoded)."""

    def __init__(self, source: Source, prepare: Callable, run: Callable, class_names, batch_size: int = 1,
                 drop_frames: bool | None = None, stride: int = 1, max_frames: int | None = None,
                 keep_images: bool = True):
        self.source, self.prepare, self.run, self.class_names = source, prepare, run, tuple(class_names)
        self.batch_size, self.stride, self.max_frames, self.keep_images = batch_size, stride, max_frames, keep_images
        self.drop_frames = source.live if drop_frames is None else drop_frames
        self.stop = threading.Event()
        self.frames = _Buffer(2 * batch_size + 2 if not self.drop_frames else batch_size, self.drop_frames, self.stop)
        self.batches = _Buffer(1, self.drop_frames, self.stop)
        self.frames_read, self.results = 0, 0
        self._threads: list[threading.Thread] = []
        self._iterator = None

    @property
    def dropped(self) -> int:
        return self.frames.dropped + self.batches.dropped

    @property
    def lost(self) -> int:
        return self.source.lost

    def _read(self) -> None:
        limit = None if self.drop_frames else self.max_frames
        try:
            for frame in self.source.frames(self.stop, self.stride):
                self.frames_read += 1
                self.frames.put(frame)
                if limit is not None and self.frames_read >= limit:
                    break
            self.frames.finish()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            self.frames.finish(exc)
        finally:
            self.source.close()

    def _prepare(self) -> None:
        try:
            while not self.stop.is_set():
                frames: list[Frame] = self.frames.take(self.batch_size, wait_for_all=not self.drop_frames)
                if not frames:
                    break
                self.batches.put((frames, self.prepare([frame.image for frame in frames])), frames=len(frames))
            self.batches.finish()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            self.batches.finish(exc)

    def _start(self) -> None:
        for target, name in ((self._read, "assd-read-frames"), (self._prepare, "assd-prepare-frames")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _results(self) -> Iterator[Result]:
        self._start()
        try:
            while self.max_frames is None or self.results < self.max_frames:
                taken = self.batches.take(1, wait_for_all=False)
                if not taken:
                    break
                frames, prepared = taken[0]
                sizes = [(frame.image.shape[1], frame.image.shape[0]) for frame in frames]
                for frame, detections, size in zip(frames, self.run(prepared, sizes), sizes, strict=True):
                    if self.max_frames is not None and self.results >= self.max_frames:
                        break
                    self.results += 1
                    yield Result.from_detections(detections, self.class_names, size, frame_index=frame.index,
                                                 timestamp=frame.timestamp, source=frame.source,
                                                 image=frame.image if self.keep_images else None)
            if self.lost:
                warnings.warn(f"{self.source.name}: truncated: {self.lost} of {self.source.expected_frames} frames "
                              "could not be decoded", stacklevel=2)
        finally:
            self.close()

    def __iter__(self) -> Iterator[Result]:
        if self._iterator is None:
            self._iterator = self._results()
        return self._iterator

    def __next__(self) -> Result:
        return next(iter(self))

    def close(self) -> None:
        """Stop the threads and release the source (also when the iteration ends or is abandoned)."""
        self.stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT_S)
        if not self._threads:  # never started: the reader thread did not take the source over
            self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        if self._iterator is not None:
            self._iterator.close()
        self.close()
