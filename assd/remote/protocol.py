"""The request/response contract of assd's Triton models (``assd serve`` and ``assd export --triton``).

Inputs (per image; Triton adds the batch dimension, so a request may carry several images):

    image_bytes  BYTES  [1]           an encoded image (JPEG, PNG, BMP, WebP, TIFF), decoded by OpenCV
                                      exactly as ``assd eval``/``predict`` read files
    image        UINT8  [-1, -1, 3]   RGB pixels (``assd serve`` only); a request carries one of the two

Outputs, padded to ``rows`` (the server's detections per image, ``PostprocessConfig.max_detections``),
the layout of ``assd export --with-postprocess`` but in original-image pixels:

    boxes       FP32   [rows, 4]   xyxy pixels, clipped to the image
    scores      FP32   [rows]      descending, 0 where padded
    classes     INT64  [rows]      1..C-1 (``class_names[c - 1]``), 0 where padded
    count       INT64  [1]         valid rows
    model_info  BYTES  [1]         JSON (model config, thresholds, artifact); sent only when requested

Request parameters (optional, ``assd serve`` only): ``score_threshold``, ``nms_iou``, ``top_k``,
``max_detections`` (at most ``rows``) override the artifact's stored thresholds for that request.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import torch

from assd.errors import UserError
from assd.models.config import ModelConfig
from assd.remote.image_header import header_size
from assd.runtime.postprocess import Detections, PostprocessConfig, detect

INPUT_ENCODED = "image_bytes"
INPUT_PIXELS = "image"
OUTPUTS = ("boxes", "scores", "classes", "count")
OUTPUT_INFO = "model_info"
PARAMETERS = {"score_threshold": float, "nms_iou": float, "top_k": int, "max_detections": int}  # name -> type
MAX_ENCODED_BYTES = 32 * 2**20  # an encoded photo this large is not a photo: refused before decoding
MAX_PIXELS = 64 * 2**20  # images above 64 megapixels are refused, from their header before decoding
MAX_SERVED_BATCH = 1024  # --max-batch of serve / export --triton: beyond it a batch is not a latency trade-off
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # what Triton (and pytriton) accept as a model name
INFO_FORMAT = "assd-served-model"
API_KEY_HEADER = "x-api-key"  # 'assd serve --api-key': Triton's restricted-API header (gRPC: with Triton's prefix)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


def api_key_headers(api_key: str | None, protocol: str) -> dict[str, str]:
    """The request headers that carry ``api_key`` over ``protocol`` ("http" or "grpc"); {} without a key."""
    if not api_key:
        return {}
    return {(API_KEY_HEADER if protocol == "http" else GRPC_HEADER_PREFIX + API_KEY_HEADER): api_key}


def check_serving_options(model_name: str, max_batch: int) -> None:
    """UserError for a model name Triton refuses or a ``--max-batch`` outside 1..MAX_SERVED_BATCH."""
    if not MODEL_NAME.fullmatch(model_name):
        raise UserError(f"model name {model_name!r}: use letters, digits, '.', '_' and '-' only (Triton's rule)")
    if not 1 <= max_batch <= MAX_SERVED_BATCH:
        raise UserError(f"--max-batch {max_batch}: must be in 1..{MAX_SERVED_BATCH}")


class BadRequest(ValueError):
    """A request the server answers with an error (the server itself is fine)."""


def decode_image(data: bytes | np.bytes_, index: int = 0) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` from encoded image bytes; BadRequest when they are not an image."""
    import cv2

    data = bytes(data)
    if len(data) > MAX_ENCODED_BYTES:
        raise BadRequest(f"image {index}: {len(data) / 2**20:.1f} MiB of encoded data is more than the "
                         f"{MAX_ENCODED_BYTES // 2**20} MiB accepted: send a smaller image")
    if not data:
        raise BadRequest(f"image {index}: 0 bytes: send JPEG/PNG/BMP/WebP/TIFF bytes")
    declared = header_size(data)
    if declared is not None:
        check_size(*declared, index, "declares")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise BadRequest(f"image {index}: {len(data)} bytes that OpenCV cannot decode as an image: send "
                         "JPEG/PNG/BMP/WebP/TIFF bytes (or uint8 pixels in the 'image' input)")
    return image[:, :, ::-1]  # BGR -> RGB, as assd.data.read_rgb_image


def check_size(width: int, height: int, index: int = 0, verb: str = "has") -> None:
    """BadRequest for an image of no pixels or more than MAX_PIXELS."""
    if min(width, height) < 1 or width * height > MAX_PIXELS:
        raise BadRequest(f"image {index}: {verb} {width}x{height} pixels: images must have 1 to "
                         f"{MAX_PIXELS // 2**20} megapixels")


def check_pixels(image: np.ndarray, index: int = 0) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise BadRequest(f"image {index}: expected uint8 [H, W, 3] RGB pixels, got {image.dtype} {list(image.shape)}")
    check_size(image.shape[1], image.shape[0], index)
    return image


def request_images(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The RGB images of one request (``{input name: array with batch dimension}``)."""
    if (INPUT_ENCODED in inputs) == (INPUT_PIXELS in inputs):
        raise BadRequest(f"send exactly one of the inputs '{INPUT_ENCODED}' (encoded image) or '{INPUT_PIXELS}' "
                         "(uint8 pixels)")
    if INPUT_ENCODED in inputs:
        items = inputs[INPUT_ENCODED].reshape(-1)
        return [check_pixels(decode_image(item, i), i) for i, item in enumerate(items)]
    return [check_pixels(image, i) for i, image in enumerate(inputs[INPUT_PIXELS])]


def request_postprocess(parameters: dict | None, default: PostprocessConfig, rows: int,
                        num_classes: int) -> PostprocessConfig:
    """``default`` with the request's threshold parameters applied (other parameters are Triton's own);
    refused when its detections per image could exceed the ``rows`` of the padded outputs."""
    overrides = {key: value for key, value in (parameters or {}).items() if key in PARAMETERS}
    if not overrides:
        return default
    try:
        cfg = dataclasses.replace(default, **{key: PARAMETERS[key](value)
                                              for key, value in overrides.items()})
    except (TypeError, ValueError, UserError) as exc:  # not a number, or out of range (UserError)
        raise BadRequest(f"request parameters {overrides}: {exc}") from None
    if cfg.max_per_image(num_classes) > rows:
        raise BadRequest(f"max_detections {cfg.max_detections}, top_k {cfg.top_k}: this server returns at most "
                         f"{rows} detections per image")
    return cfg


def detect_in_pixels(loc: torch.Tensor, conf: torch.Tensor, image_sizes: list[tuple[int, int]], cfg: ModelConfig,
                     postprocess_cfgs: list[PostprocessConfig], priors: torch.Tensor | None = None) -> list[Detections]:
    """Detections in pixels per image: decode + NMS (``assd.runtime.postprocess.detect``) for the images
    sharing each post-processing setting, then scaled to each image's ``(height, width)``."""
    results: list[Detections | None] = [None] * len(image_sizes)
    for pp_cfg in dict.fromkeys(postprocess_cfgs):
        index = [i for i, other in enumerate(postprocess_cfgs) if other == pp_cfg]
        picked = torch.as_tensor(index, device=loc.device)
        for i, dets in zip(index, detect(loc[picked], conf[picked], cfg, pp_cfg, priors)):
            height, width = image_sizes[i]
            results[i] = dets.to_pixels(width, height)
    return results


def pack_detections(detections: list[Detections], rows: int) -> dict[str, np.ndarray]:
    """The padded output arrays (batch dimension first) of ``detections``."""
    batch = len(detections)
    out = {"boxes": np.zeros((batch, rows, 4), np.float32), "scores": np.zeros((batch, rows), np.float32),
           "classes": np.zeros((batch, rows), np.int64), "count": np.zeros((batch, 1), np.int64)}
    for i, dets in enumerate(detections):
        n = min(len(dets), rows)
        out["boxes"][i, :n], out["scores"][i, :n], out["classes"][i, :n] = dets.boxes[:n], dets.scores[:n], dets.labels[:n]
        out["count"][i, 0] = n
    return out


def unpack_detections(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """``pack_detections``' inverse: one ``Detections`` (pixels) per image of a response."""
    counts = outputs["count"].reshape(-1)  # copies: tritonclient's arrays are read-only views of the response
    return [Detections(outputs["boxes"][i, :n].copy(), outputs["scores"][i, :n].copy(), outputs["classes"][i, :n].copy())
            for i, n in enumerate(counts.tolist())]


def model_info(cfg: ModelConfig, postprocess_cfg: PostprocessConfig, rows: int, **described) -> str:
    """The JSON the ``model_info`` output carries: enough for a client to evaluate through the server."""
    import assd

    return json.dumps({"format": INFO_FORMAT, "assd_version": assd.__version__, "model_config": cfg.to_dict(),
                       "postprocess": postprocess_cfg.to_dict(), "rows": rows, **described})
