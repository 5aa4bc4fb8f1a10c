"""mAP through a server: ``assd eval --model URL`` and ``assd eval-engine URL``.

Every image goes client -> server -> client: the dataset's RGB pixels (the ones ``assd eval`` feeds its
runner) are sent one image per request, ``in_flight`` requests at a time so the server's dynamic
batcher forms batches; the detections come back in pixels and are scored by ``assd.evaluation``. The
class names and thresholds come from the served model (its ``model_info``), so a model is never scored
against another label set.
"""

from __future__ import annotations

import asyncio

from assd.errors import CheckFailed, UserError
from assd.evaluation.engine_parity import TOLERANCE_POINTS, EngineParity, _agreement, _predict
from assd.evaluation.evaluate import EvalResult, FirstImages, check_class_names, evaluate_detections
from assd.remote.client import DetectionClient, ServedModel, error_message, parse_server_url
from assd.runtime.postprocess import Detections, PostprocessConfig


async def _predict_all(client: DetectionClient, dataset, postprocess_cfg: PostprocessConfig | None,
                       in_flight: int, progress: bool) -> tuple[list[Detections], ServedModel, PostprocessConfig]:
    from tqdm import tqdm

    await client.check_ready()
    served = await client.served_model(await asyncio.to_thread(dataset.load_image, 0))
    check_class_names(served.cfg.class_names, dataset, str(client.address))
    postprocess_cfg = postprocess_cfg or served.postprocess
    if postprocess_cfg.max_per_image(served.cfg.num_classes) > served.rows:
        raise UserError(f"--max-detections {postprocess_cfg.max_detections} (--top-k {postprocess_cfg.top_k}): "
                        f"{client.address} returns at most {served.rows} detections per image")
    results: list[Detections | None] = [None] * len(dataset)
    indices = iter(range(len(dataset)))
    bar = tqdm(total=len(dataset), desc="predict (server)", unit="img", disable=not progress, leave=False)

    async def worker():
        for index in indices:  # the iterator is shared: each index is taken by one worker
            image = await asyncio.to_thread(dataset.load_image, index)
            try:
                results[index] = await client.detect(image, postprocess_cfg)
            except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException and transport errors
                raise CheckFailed(f"{client.address}: image {index} of {getattr(dataset, 'source', 'the dataset')} "
                                  f"failed: {error_message(exc)}") from None
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    finally:
        bar.close()
    return results, served, postprocess_cfg


def predict_via_server(url: str, dataset, postprocess_cfg: PostprocessConfig | None = None, in_flight: int = 8,
                       progress: bool = False, api_key: str | None = None,
                       timeout: float = 60.0) -> tuple[list[Detections], ServedModel, PostprocessConfig]:
    """Detections (pixels) of every image of ``dataset`` through the server at ``url``, the served model's
    description, and the thresholds used (``postprocess_cfg``, or the server's own when None). ``api_key``
    (default ``$ASSD_API_KEY``) and ``timeout`` (seconds per request) go to the client."""
    if in_flight < 1:
        raise UserError(f"--batch-size {in_flight}: must be >= 1 (requests kept in flight)")
    address = parse_server_url(url, "--model")

    async def run():
        connections = max(100, in_flight)
        async with DetectionClient(address, connections=connections, api_key=api_key, timeout=timeout) as client:
            return await _predict_all(client, dataset, postprocess_cfg, in_flight, progress)

    return asyncio.run(run())


def evaluate_via_server(url: str, dataset, metric: str | None, postprocess_cfg: PostprocessConfig | None,
                        in_flight: int = 8, progress: bool = True, api_key: str | None = None,
                        timeout: float = 60.0) -> EvalResult:
    """``assd eval --model URL``: the mAP of the served model on ``dataset``."""
    detections, _, used = predict_via_server(url, dataset, postprocess_cfg, in_flight, progress, api_key, timeout)
    return evaluate_detections(detections, dataset, metric, used)


def eval_engine_via_server(url: str, data_spec: str, reference: str | None = None, metric: str | None = None,
                           tolerance: float | None = None, batch_size: int = 8, device: str | None = "auto",
                           limit: int | None = None, progress: bool = True, api_key: str | None = None,
                           timeout: float = 60.0) -> EngineParity:
    """``assd eval-engine URL``: as ``eval_engine``, with the served model in place of a local artifact."""
    from assd.data import parse_data_spec
    from assd.runtime.runners import open_runner

    dataset = parse_data_spec(data_spec)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: must be at least 1")
        dataset = FirstImages(dataset, limit)
    served_dets, served, postprocess_cfg = predict_via_server(url, dataset, None, batch_size, progress, api_key,
                                                              timeout)
    precision = served.described.get("precision", "fp32")
    tolerance = TOLERANCE_POINTS.get(precision, 1.0) if tolerance is None else tolerance
    parity = EngineParity(evaluate_detections(served_dets, dataset, metric, postprocess_cfg), None, precision, tolerance)
    if reference is None:
        return parity
    reference_runner = open_runner(reference, device=device)
    if reference_runner.cfg != served.cfg:
        raise UserError(f"{url}: the served model ({served.cfg.name}, {served.cfg.num_classes} classes) is not the "
                        f"reference's ({reference_runner.cfg.name}): compare a server with the checkpoint it serves")
    reference_dets = _predict(reference_runner, dataset, postprocess_cfg, batch_size, progress)
    parity.reference = evaluate_detections(reference_dets, dataset, metric, postprocess_cfg)
    parity.matched, parity.reference_detections, parity.max_score_diff = _agreement(reference_dets, served_dets)
    parity.per_class_delta = {name: 100 * (ap - parity.reference.per_class.get(name, 0.0))
                              for name, ap in parity.artifact.per_class.items()}
    return parity
