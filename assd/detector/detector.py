"""``Detector``: any assd artifact inside an application, on images, videos, cameras and streams.

    from assd import Detector

    det = Detector("model.onnx")                      # .pt / preset, .onnx, .engine, or http(s)/grpc URL
    result = det("photo.jpg")                         # path, BGR ndarray (rgb=True for RGB), PIL, bytes
    print(result.boxes, result.scores, result.names)  # xyxy pixels of the original image
    for result in det.stream("video.mp4"):            # folder, glob, video file, camera index, RTSP/HTTP URL
        cv2.imshow("assd", result.plot())

Images go through ``assd.runtime.pipeline`` (pre-processing, the runner, decode + NMS, pixel boxes):
the code ``assd predict``, ``assd eval`` and the demo run. A served model runs that code on the server.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from assd.errors import UserError
from assd.runtime.padded import PaddedDetections
from assd.runtime.pipeline import detect_images, detections_in_pixels
from assd.runtime.postprocess import Detections, PostprocessConfig
from assd.runtime.preprocess import preprocess
from assd.runtime.result import Result

DEFAULT_SCORE_THRESHOLD = 0.3  # what `assd predict` keeps by default (applications want few, sure boxes)


class LocalModel:
    """A runner of this process (``assd.runtime.runners.open_runner``) with ``prepare`` / ``run`` halves."""

    def __init__(self, artifact: str, device: str, backend: str | None, threads: int | None, batch_size: int,
                 performance_hint: str | None = None):
        from assd.models.assd import priors_for
        from assd.models.limits import check_runners_memory
        from assd.runtime.runners import open_runner

        self.runner = open_runner(artifact, device=device, backend=backend, threads=threads,
                                  performance_hint=performance_hint)
        self.runner.check_batch(batch_size)
        check_runners_memory([self.runner], batch_size, "Detector")
        self.cfg, self.device, self.postprocess = self.runner.cfg, self.runner.device, self.runner.postprocess
        self.priors = priors_for(self.cfg).to(self.device)
        # An ONNX file exported with a fixed batch takes exactly that many images: a shorter batch (the end
        # of a stream, a single image) is padded with copies of its last image and the extra outputs dropped.
        self.fixed_batch = self.runner.max_batch if self.runner.backend.startswith("onnxruntime") else None

    def infer(self, batch: torch.Tensor):
        count = batch.shape[0]
        if self.fixed_batch is None or count >= self.fixed_batch:
            return self.runner.infer_outputs(batch)
        padded = torch.cat([batch, batch[-1:].expand(self.fixed_batch - count, *batch.shape[1:])])
        outputs = self.runner.infer_outputs(padded)
        if isinstance(outputs, PaddedDetections):
            return dataclasses.replace(outputs, boxes=outputs.boxes[:count], scores=outputs.scores[:count],
                                       classes=outputs.classes[:count], count=outputs.count[:count])
        return tuple(output[:count] for output in outputs)

    def prepare(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return preprocess(images, self.cfg, device=self.device)

    def run(self, batch: torch.Tensor, sizes, postprocess_cfg: PostprocessConfig) -> list[Detections]:
        with torch.inference_mode():
            outputs = self.infer(batch)
            return detections_in_pixels(outputs, sizes, self.cfg, postprocess_cfg, self.priors, self.device)

    def detect(self, images: Sequence[np.ndarray], postprocess_cfg: PostprocessConfig) -> list[Detections]:
        return detect_images(self.infer, images, self.cfg, postprocess_cfg, self.priors, self.device)

    def describe(self) -> dict:
        return self.runner.describe()

    def close(self) -> None:
        pass


def _as_rgb(image, rgb: bool) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of one input: a path, an ndarray (BGR unless ``rgb``), a PIL image, bytes."""
    import cv2

    from assd.data import read_rgb_image

    if isinstance(image, (str, os.PathLike)):
        return read_rgb_image(Path(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        decoded = cv2.imdecode(np.frombuffer(bytes(image), np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise UserError(f"{len(image)} bytes: not an encoded image OpenCV can decode (JPEG, PNG, BMP, WebP, TIFF)")
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image (RGB by definition)
        return np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UserError(f"image array of dtype {image.dtype}: expected uint8 pixels (0..255)")
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
            raise UserError(f"image array of shape {image.shape}: expected [H, W, 3] (or [H, W] grey, [H, W, 4])")
        image = image[..., :3]
        return np.ascontiguousarray(image if rgb else image[..., ::-1])
    raise UserError(f"cannot detect in a {type(image).__name__}: give a path, a uint8 ndarray, a PIL image or "
                    "encoded image bytes")


class Detector:
    """Detections from any assd artifact (see the module docstring).

    Args:
        artifact: a ``.pt`` checkpoint or preset name, an ``.onnx`` file (fp32/fp16/int8, with or without
            ``--with-postprocess``), a TensorRT ``.engine``, or a served model ``http://HOST:PORT/MODEL`` /
            ``grpc://HOST:PORT/MODEL`` (``assd serve``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
        backend: a runner other than the artifact's default (passed to ``open_runner``).
        score_threshold, nms_iou, top_k, max_detections: post-processing (default: score > 0.3, the
            artifact's stored NMS IoU, top-k and per-image cap); each call may override them.
        batch_size: images per network call (``det(list)``, ``stream``).
        backend: the runtime for a local artifact (None or "auto": by its extension; "openvino" for an .onnx
            file on the CPU, extra ``openvino``); threads, performance_hint: CPU threads of ONNX Runtime /
            OpenVINO and OpenVINO's hint ("latency" or "throughput"), default: theirs.
        api_key, timeout: for a served model: its API key (default ``$ASSD_API_KEY``) and the seconds each
            request may take.
    """

    def __init__(self, artifact: str | os.PathLike, *, device: str = "auto", backend: str | None = None,
                 score_threshold: float | None = DEFAULT_SCORE_THRESHOLD, nms_iou: float | None = None,
                 top_k: int | None = None, max_detections: int | None = None, batch_size: int = 1,
                 threads: int | None = None, performance_hint: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0):
        from assd.remote.client import is_server_url

        if batch_size < 1:
            raise UserError(f"batch_size {batch_size}: must be at least 1")
        self.artifact, self.batch_size = str(artifact), batch_size
        if is_server_url(self.artifact):
            from assd.detector.remote_model import RemoteModel

            self.model = RemoteModel(self.artifact, timeout=timeout, api_key=api_key)
        else:
            self.model = LocalModel(self.artifact, device, backend, threads, batch_size, performance_hint)
        self.cfg = self.model.cfg
        self.postprocess = self._thresholds(score_threshold=score_threshold, nms_iou=nms_iou, top_k=top_k,
                                            max_detections=max_detections)

    def _thresholds(self, base: PostprocessConfig | None = None, **overrides) -> PostprocessConfig:
        """``base`` (default: the artifact's stored thresholds) with the overrides that are not None."""
        if base is None:
            stored = {key: value for key, value in (self.model.postprocess or {}).items()
                      if key in ("nms_iou", "top_k", "max_detections")}
            base = PostprocessConfig.for_model(self.cfg, **stored)
        values = base.to_dict()
        values.update({key: value for key, value in overrides.items() if value is not None})
        return PostprocessConfig(**values)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.cfg.class_names)

    @property
    def info(self) -> dict:
        """The model, backend, device, precision, batch size and thresholds."""
        described = self.model.describe()
        return {**described, "input_size": self.cfg.input_size, "classes": len(self.cfg.class_names),
                "batch_size": self.batch_size, "thresholds": self.postprocess.to_dict()}

    def __repr__(self) -> str:
        info = self.info
        return (f"Detector({info['artifact']!r}: {info['model']}, {info['backend']} {info['precision']} on "
                f"{info['device']}, score > {self.postprocess.score_threshold})")

    def __call__(self, images, *, rgb: bool = False, score_threshold: float | None = None,
                 nms_iou: float | None = None, top_k: int | None = None,
                 max_detections: int | None = None) -> Result | list[Result]:
        """``Result`` of one image, or a list of them for a list (see ``_as_rgb`` for the input kinds)."""
        single = not isinstance(images, (list, tuple))
        inputs = [images] if single else list(images)
        settings = self._thresholds(self.postprocess, score_threshold=score_threshold, nms_iou=nms_iou,
                                    top_k=top_k, max_detections=max_detections)
        results = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            pixels = [_as_rgb(image, rgb) for image in chunk]
            for offset, (image, source, dets) in enumerate(zip(pixels, chunk, self.model.detect(pixels, settings))):
                name = str(source) if isinstance(source, (str, os.PathLike)) else ""
                results.append(Result.from_detections(dets, self.class_names, (image.shape[1], image.shape[0]),
                                                      frame_index=start + offset, source=name, image=image))
        return results[0] if single else results

    def stream(self, source, *, stride: int = 1, max_frames: int | None = None, drop_frames: bool | None = None,
               timeout: float = 10.0, keep_images: bool = True, score_threshold: float | None = None,
               nms_iou: float | None = None, top_k: int | None = None, max_detections: int | None = None):
        """A ``FrameStream``: one ``Result`` per frame of ``source`` (an image folder, glob, file or list of
        files, a video file, a camera index, an RTSP/HTTP/MJPEG URL), decoded and pre-processed on
        background threads, ``batch_size`` frames per network call.

        ``stride``: every N-th frame; ``max_frames``: stop after that many results; ``drop_frames``
        (default: on for cameras and network streams) keeps only the newest frames when inference falls
        behind (``stream.dropped`` counts them); ``timeout``: seconds a stream URL may take to answer;
        ``keep_images``: results keep their frame (for ``plot()``).
        """
        from assd.detector.sources import open_source
        from assd.detector.streaming import FrameStream

        if stride < 1 or (max_frames is not None and max_frames < 1):
            raise UserError(f"stride {stride}, max_frames {max_frames}: both must be at least 1")
        settings = self._thresholds(self.postprocess, score_threshold=score_threshold, nms_iou=nms_iou,
                                    top_k=top_k, max_detections=max_detections)
        opened = open_source(source, timeout=timeout)
        return FrameStream(opened, self.model.prepare, lambda batch, sizes: self.model.run(batch, sizes, settings),
                           self.class_names, batch_size=self.batch_size, drop_frames=drop_frames, stride=stride,
                           max_frames=max_frames, keep_images=keep_images)

    def close(self) -> None:
        self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        self.close()
