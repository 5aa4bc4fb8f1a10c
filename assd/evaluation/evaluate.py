"""Run a detector over a dataset and score its detections (VOC07, VOC12 or COCO metric).

``predict_dataset`` works with any ``infer`` callable (a torch model or a runner of another backend),
so training-time validation, ``assd eval``, and the backend-parity checks share one code path:
``dataset.load_image`` -> ``assd.runtime.pipeline.detect_images`` (pre-processing, ``infer``,
post-processing: the code ``assd.Detector`` runs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from assd.errors import UserError
from assd.evaluation.coco import coco_evaluate
from assd.evaluation.results_json import dataset_label_table, label_ids_cover
from assd.evaluation.voc import voc_average_precisions
from assd.models.assd import priors_for
from assd.models.config import ModelConfig
from assd.runtime.pipeline import detect_images
from assd.runtime.postprocess import Detections, PostprocessConfig

METRICS = ("voc07", "voc12", "coco")


@dataclass
class EvalResult:
    """Scores of one evaluation; AP values are fractions in [0, 1].

    Attributes:
        metric: ``"voc07"`` (11-point), ``"voc12"`` (all-point) or ``"coco"``.
        mAP: mean AP over the classes with ground truth (coco: AP@[.5:.95]).
        per_class: ``{class name: AP}`` for the classes with ground truth (coco: AP@[.5:.95]).
        extra: coco only: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl``.
        num_images: images evaluated.
        postprocess: the ``PostprocessConfig.to_dict()`` the detections were made with, when known.
        summary: coco only: pycocotools' summary lines.
    """

    metric: str
    mAP: float
    per_class: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    postprocess: dict | None = None
    summary: str = ""

    def to_dict(self) -> dict:
        data = {"metric": self.metric, "mAP": self.mAP, "per_class": dict(self.per_class)}
        data.update(self.extra)
        data["num_images"] = self.num_images
        if self.postprocess is not None:
            data["postprocess"] = dict(self.postprocess)
        return data


def default_metric(dataset) -> str:
    """``coco`` for COCO datasets, ``voc07`` otherwise."""
    return "coco" if getattr(dataset, "coco_category_ids", None) else "voc07"


def check_class_names(model_class_names: Sequence[str] | ModelConfig, dataset, model_source: str = "the model") -> None:
    """UserError naming both label sets when the model's classes are not the dataset's (same order).
    Given the model's ``ModelConfig``, a model whose label ids cover a COCO dataset's categories passes
    too (``predict_dataset`` translates its labels; ``results_json.dataset_label_table``)."""
    if isinstance(model_class_names, ModelConfig):
        if label_ids_cover(model_class_names, dataset):
            return
        model_class_names = model_class_names.class_names
    if tuple(model_class_names) != tuple(dataset.class_names):
        def show(names):
            names = list(names)
            return f"{len(names)} classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        raise UserError(f"{model_source}: model classes {show(model_class_names)} differ from the classes of "
                        f"{getattr(dataset, 'source', 'the dataset')}: {show(dataset.class_names)}: evaluate the "
                        "model on data with its own label set")


class FirstImages:
    """The first ``count`` images of ``dataset``, with the same interface (for quick evaluations)."""

    def __init__(self, dataset, count: int):
        if count < 1:
            raise UserError(f"image limit {count}: must be >= 1")
        self.dataset, self.count = dataset, min(count, len(dataset))

    def __len__(self) -> int:
        return self.count

    @property
    def image_ids(self) -> list:
        return list(self.dataset.image_ids[: self.count])

    def _check(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"image index {index} outside 0..{self.count - 1}")
        return index

    def load_image(self, index: int) -> np.ndarray:
        return self.dataset.load_image(self._check(index))

    def annotation(self, index: int):
        return self.dataset.annotation(self._check(index))

    def __getattr__(self, name):  # class_names, name, source, coco_category_ids, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _image_batches(dataset, batch_size: int, workers: int = 4) -> Iterator[list[np.ndarray]]:
    """The dataset's images in batches, decoded on a thread pool up to one batch ahead (OpenCV releases
    the GIL), so decoding overlaps inference without holding the whole set in memory."""
    with ThreadPoolExecutor(workers) as pool:
        pending, next_index = deque(), 0
        for start in range(0, len(dataset), batch_size):
            end = min(start + batch_size, len(dataset))
            while next_index < min(len(dataset), end + batch_size):
                pending.append(pool.submit(dataset.load_image, next_index))
                next_index += 1
            yield [pending.popleft().result() for _ in range(end - start)]


def predict_dataset(
    infer: Callable,
    dataset,
    cfg: ModelConfig,
    postprocess_cfg: PostprocessConfig | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[Detections]:
    """Detections in pixels for every image of ``dataset`` (same order as its indices).

    Args:
        infer: ``images [B, 3, S, S] float32 torch tensor on device -> (loc [B, A, 4], conf [B, A, C])``,
            torch tensors or numpy arrays (``Runner.infer``), or ``-> PaddedDetections`` for an artifact
            exported ``--with-postprocess`` (``Runner.infer_outputs`` gives either).
        dataset: has ``__len__`` and ``load_image(i)`` (RGB uint8 ``[H, W, 3]``).
        cfg: the network's ``ModelConfig`` (pre-processing, priors, box conventions).
        device: where pre- and post-processing run (the runner's device).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be >= 1")
    device = torch.device(device)
    priors = priors_for(cfg).to(device)
    detections: list[Detections] = []
    total = -(-len(dataset) // batch_size)
    for images in tqdm(_image_batches(dataset, batch_size), total=total, desc="predict", unit="batch",
                       disable=not progress, leave=False):
        detections.extend(detect_images(infer, images, cfg, postprocess_cfg, priors, device))
    table = dataset_label_table(cfg, dataset) if hasattr(dataset, "class_names") else None
    return detections if table is None else [dets.relabel(table) for dets in detections]


def evaluate_detections(detections: Sequence[Detections], dataset, metric: str | None = None,
                        postprocess_cfg: PostprocessConfig | dict | None = None) -> EvalResult:
    """Score per-image detections in pixels (aligned with ``dataset``'s indices) against its annotations.

    ``metric``: ``voc07``, ``voc12`` or ``coco`` (default: ``default_metric(dataset)``).
    ``postprocess_cfg`` is only recorded in the result.
    """
    metric = metric or default_metric(dataset)
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}': use one of {', '.join(METRICS)}")
    if len(detections) != len(dataset):
        raise ValueError(f"{len(detections)} detection lists for {len(dataset)} images")
    names = dataset.class_names
    extra, summary = {}, ""
    if metric == "coco":
        per_label, extra, summary = coco_evaluate(detections, dataset)
    else:
        annotations = [dataset.annotation(i) for i in range(len(dataset))]
        per_label = voc_average_precisions(detections, annotations, len(names) + 1, use_07_metric=metric == "voc07")
    if not per_label:
        raise UserError(f"{getattr(dataset, 'source', 'dataset')}: no (non-difficult) ground truth objects in the "
                        f"{len(dataset)} images evaluated: nothing to score against")
    per_class = {names[label - 1]: ap for label, ap in sorted(per_label.items())}
    mean_ap = extra["AP"] if metric == "coco" else float(np.mean(list(per_class.values())))
    if isinstance(postprocess_cfg, PostprocessConfig):
        postprocess_cfg = postprocess_cfg.to_dict()
    return EvalResult(metric, mean_ap, per_class, extra, len(dataset), postprocess_cfg, summary)


def evaluate_model(model, dataset, metric: str | None = "voc07", batch_size: int = 8,
                   device: torch.device | str = "cpu", postprocess_cfg: PostprocessConfig | None = None,
                   progress: bool = False) -> EvalResult:
    """Evaluate an ``ASSD`` module on ``dataset`` (its class names must be the model's).

    The model runs in eval mode on ``device``; its previous train/eval mode is restored afterwards.
    """
    check_class_names(model.cfg, dataset, model.cfg.name)
    postprocess_cfg = postprocess_cfg or PostprocessConfig()
    cfg, was_training = model.cfg, model.training
    model.to(device).eval()
    try:
        detections = predict_dataset(model, dataset, cfg, postprocess_cfg, batch_size, device, progress)
    finally:
        model.train(was_training)
    return evaluate_detections(detections, dataset, metric, postprocess_cfg)
