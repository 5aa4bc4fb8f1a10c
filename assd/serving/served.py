"""What one model instance of ``assd serve`` does with a batch: requests in, one answer per request.

Each request is checked and decoded on its own (``protocol.request_images``, ``request_postprocess``):
a malformed one (bytes that are not an image, a header declaring too many pixels, a wrong dtype or
shape, a bad threshold) gets its own ``BadRequest``, and only the good requests of the batch go
through one pre-processing, one network call and one decode + NMS per distinct threshold setting
(the code ``assd eval`` runs). ``triton_python/serve_model.py`` turns the answers into Triton
responses, so a bad request never fails the requests the dynamic batcher put beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from assd.models.assd import priors_for
from assd.remote.protocol import (
    OUTPUT_INFO,
    BadRequest,
    detect_in_pixels,
    pack_detections,
    request_images,
    request_postprocess,
)
from assd.runtime.postprocess import PostprocessConfig
from assd.runtime.runners import Runner


@dataclass
class ServedRequest:
    """One Triton request as the callable sees it: ``{input name: array with batch dimension}``."""

    data: dict[str, np.ndarray]
    parameters: dict = field(default_factory=dict)
    requested_output_names: tuple[str, ...] = ()


class DetectorCallable:
    """A batch of requests -> per request, its padded detections (``pack_detections``) or a BadRequest."""

    def __init__(self, runner: Runner, postprocess_cfg: PostprocessConfig, rows: int, info_json: str):
        self.runner, self.cfg, self.postprocess_cfg, self.rows = runner, runner.cfg, postprocess_cfg, rows
        self.priors = priors_for(runner.cfg).to(runner.device)
        self.info = np.array([info_json.encode()], dtype=np.object_)
        # A fixed-batch ONNX file takes exactly its batch: the batch is padded up to it (the padding's
        # outputs are dropped). The TensorRT runner pads to its profile's minimum itself.
        self.pad_to = runner.max_batch if runner.backend.startswith("onnxruntime") else None

    def __call__(self, requests: list[ServedRequest]) -> list[dict[str, np.ndarray] | BadRequest]:
        answers: list[dict | BadRequest] = []
        images, counts, settings = [], [], []
        for request in requests:
            try:
                request_imgs = request_images(request.data)
                setting = request_postprocess(request.parameters, self.postprocess_cfg, self.rows,
                                              self.cfg.num_classes)
            except BadRequest as exc:
                answers.append(exc)
                counts.append(0)
                continue
            answers.append({})
            images += request_imgs
            counts.append(len(request_imgs))
            settings += [setting] * len(request_imgs)
        detections = self.detect(images, settings) if images else []
        start = 0
        for number, (request, count) in enumerate(zip(requests, counts)):
            if isinstance(answers[number], BadRequest):
                continue
            mine, start = detections[start:start + count], start + count
            answers[number] = pack_detections(mine, self.rows)
            if OUTPUT_INFO in (request.requested_output_names or ()):
                answers[number][OUTPUT_INFO] = np.repeat(self.info[None], len(mine), axis=0)
        return answers

    def detect(self, images: list[np.ndarray], settings: list[PostprocessConfig]):
        with torch.inference_mode():
            batch = self.runner_batch(images)
            loc, conf = self.runner.infer(batch)
            loc, conf = loc[: len(images)].to(self.runner.device), conf[: len(images)].to(self.runner.device)
            sizes = [image.shape[:2] for image in images]
            return detect_in_pixels(loc, conf, sizes, self.cfg, settings, self.priors)

    def runner_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        from assd.runtime.preprocess import preprocess

        batch = preprocess(images, self.cfg, self.runner.device)
        if self.pad_to and len(images) < self.pad_to:
            padding = batch.new_zeros((self.pad_to - len(images), *batch.shape[1:]))
            batch = torch.cat([batch, padding])
        return batch
