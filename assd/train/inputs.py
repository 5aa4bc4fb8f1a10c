"""The datasets a run trains and validates on: from a data spec or a caller's dataset object, with SSD's
augmentation (``--augment ssd``) or only the resize (``--augment none``)."""

from __future__ import annotations

import copy
import hashlib

from assd.data import DetectionDataset, EvalTransform, parse_data_spec
from assd.errors import UserError
from assd.models.config import ModelConfig


def open_dataset(spec, cfg: ModelConfig, train: bool):
    """A dataset from a spec, or the caller's dataset object after checking its input size."""
    if isinstance(spec, str):
        return parse_data_spec(spec, train=train, config=cfg)
    size = getattr(spec, "input_size", cfg.input_size)
    if size != cfg.input_size:
        raise UserError(f"dataset {getattr(spec, 'source', spec)!s}: serves {size} px samples but "
                        f"{cfg.name} takes {cfg.input_size} px: build it with input_size={cfg.input_size}")
    return spec


def with_augment(dataset, augment: str):
    """``dataset`` as is (``ssd``), or a shallow copy serving exactly the eval resize of every image and its
    training boxes (``none``: no photometric, zoom, crop or flip; difficult/crowd objects still left out)."""
    if augment == "ssd":
        return dataset
    if not isinstance(dataset, DetectionDataset):
        raise UserError(f"--augment {augment}: dataset {getattr(dataset, 'source', type(dataset).__name__)} is "
                        "not an assd DetectionDataset: pass a data spec, or give your dataset its own transform")
    plain = copy.copy(dataset)  # the caller's object keeps its transform
    plain.transform = EvalTransform(dataset.input_size, dataset.mean, dataset.std)
    return plain


def data_fingerprint(dataset) -> dict:
    """What identifies the training data across a resume: its size and a hash of its image ids (None when
    the dataset has no ``image_ids``), independent of how its path was spelled."""
    ids = getattr(dataset, "image_ids", None)
    digest = None if ids is None else hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]
    return {"images": len(dataset), "ids_sha256": digest}


def same_data(stored: dict | None, current: dict) -> bool:
    """Whether two fingerprints can be the same data (an unknown side only compares the sizes)."""
    if not stored:
        return True
    if stored.get("images") != current["images"]:
        return False
    return None in (stored.get("ids_sha256"), current["ids_sha256"]) or stored["ids_sha256"] == current["ids_sha256"]
