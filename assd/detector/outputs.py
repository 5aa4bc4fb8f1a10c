"""Outputs of a video or stream: the annotated video and the detections as JSON Lines.

Both are written to a temp file beside the final path (``assd.paths.temp_file_beside``) and renamed
onto it by ``finish`` - after the last frame, after Ctrl-C, or after a source error - so a finished
file is always complete (a playable video, whole lines) and a killed process leaves only a temp file
that the next command removes. ``discard`` removes the temp file instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from assd.detector.sources import quiet_opencv
from assd.errors import UserError
from assd.paths import temp_dir, temp_file_beside, writing
from assd.runtime.result import Result

# Codecs by preference per container: H.264 where the OpenCV build has an encoder for it, else MPEG-4 Part 2.
CODECS = {".mp4": ("avc1", "mp4v"), ".mov": ("avc1", "mp4v"), ".avi": ("MJPG", "XVID"), ".mkv": ("avc1", "mp4v")}


class _TempOutput:
    """A temp file beside ``path``, renamed onto it by ``finish``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.temp = temp_file_beside(self.path)
        os.close(fd)

    def _rename(self) -> None:
        with writing(self.path):
            os.chmod(self.temp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
            os.replace(self.temp, self.path)

    def discard(self) -> None:
        Path(self.temp).unlink(missing_ok=True)


class JsonLinesOutput(_TempOutput):
    """One line per result (``Result.to_dict``), flushed as it is written."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        with writing(self.path):
            self.file = open(self.temp, "w")  # noqa: SIM115 - closed by finish/discard
        self.lines = 0

    def write(self, result: Result) -> None:
        with writing(self.path):
            self.file.write(json.dumps(result.to_dict()) + "\n")
            self.file.flush()
        self.lines += 1

    def finish(self) -> Path:
        with writing(self.path):
            self.file.close()
        self._rename()
        return self.path

    def discard(self) -> None:
        self.file.close()
        super().discard()


class VideoOutput(_TempOutput):
    """Annotated frames (``Result.plot``) at the source's fps and size, through ``cv2.VideoWriter``.

    FFMPEG picks the container from the file name's extension, which the temp name (``.tmp``) hides: the
    writer opens a symlink named ``video<ext>`` in a private temp folder that points to the temp file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        super().__init__(path)
        extension = self.path.suffix.lower()
        if extension not in CODECS:
            self.discard()
            raise UserError(f"{self.path}: unknown video extension: use {', '.join(CODECS)}")
        self.size, self.frames = (int(size[0]), int(size[1])), 0
        with temp_dir("video-out") as folder:
            link = folder / f"video{extension}"
            os.symlink(os.path.abspath(self.temp), link)
            for codec in CODECS[extension]:
                with quiet_opencv():
                    writer = cv2.VideoWriter(str(link), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), float(fps),
                                             self.size)
                if writer.isOpened():
                    self.writer, self.codec = writer, codec
                    break
                writer.release()
            else:
                self.discard()
                raise UserError(f"{self.path}: this OpenCV build cannot write {extension} video (tried "
                                f"{', '.join(CODECS[extension])}): use --save-video with .avi")

    def write(self, result: Result) -> None:
        """Write the frame with its detections drawn (the result must have kept its image)."""
        frame = result.plot()
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise UserError(f"{result.source}: frame {result.frame_index} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"the video is {self.size[0]}x{self.size[1]}")
        self.writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def finish(self) -> Path:
        self.writer.release()  # writes the container's index: the file is playable from here on
        self._rename()
        return self.path

    def discard(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.release()
        super().discard()
