"""Parity of an exported artifact against the PyTorch model on a few real images.

Reports max / mean absolute differences of ``loc`` and ``conf`` and the detection agreement: the
fraction of the reference's detections that the artifact reproduces (same class, IoU >= 0.9).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from assd.models.assd import priors_for

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


@dataclass
class ParityReport:
    images: int
    loc_max_abs: float
    loc_mean_abs: float
    conf_max_abs: float
    conf_mean_abs: float
    detections_reference: int
    detections_matched: int
    max_score_diff: float
    conf_scale: float = 1.0  # max |conf| of the reference (logit magnitude)
    loc_scale: float = 1.0  # max |loc| of the reference
    raw_compared: bool = True  # False for --with-postprocess graphs (no loc/conf outputs)

    @property
    def agreement(self) -> float:
        return 1.0 if self.detections_reference == 0 else self.detections_matched / self.detections_reference

    @property
    def conf_relative(self) -> float:
        """max |d conf| relative to the reference's logit magnitude (floored at 1)."""
        return self.conf_max_abs / max(1.0, self.conf_scale)

    @property
    def loc_relative(self) -> float:
        """max |d loc| relative to the reference's largest box offset (floored at 1)."""
        return self.loc_max_abs / max(1.0, self.loc_scale)

    def passed(self, tolerance: float, min_agreement: float) -> bool:
        """Raw outputs within ``tolerance`` (relative; loc and conf) and detections reproduced."""
        return (self.loc_relative <= tolerance and self.conf_relative <= tolerance
                and self.agreement >= min_agreement)

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}

    def summary(self) -> str:
        raw = (f"loc max|d| {self.loc_max_abs:.2e} (mean {self.loc_mean_abs:.2e}, relative {self.loc_relative:.1e}), "
               f"conf max|d| "
               f"{self.conf_max_abs:.2e} (mean {self.conf_mean_abs:.2e}, relative {self.conf_relative:.1e}), "
               if self.raw_compared else "")
        return (f"parity on {self.images} images: {raw}detections {self.detections_matched}/"
                f"{self.detections_reference} matched ({100 * self.agreement:.1f}%), max score diff "
                f"{self.max_score_diff:.2e}")


def match_detections(reference, candidate, iou_threshold: float = 0.9) -> tuple[int, float]:
    """(#reference detections with a same-class candidate at IoU >= threshold, max score difference
    over those matches, each to its candidate of nearest score). ``reference`` / ``candidate``:
    ``Detections`` of one image."""
    ref_boxes, cand_boxes = torch.as_tensor(reference.boxes), torch.as_tensor(candidate.boxes)
    if len(ref_boxes) == 0 or len(cand_boxes) == 0:
        return 0, 0.0
    # box_iou is 0/0 = NaN for two zero-area boxes, and a NaN anywhere in a row would poison its max.
    iou = torch.nan_to_num(box_iou(ref_boxes.float(), cand_boxes.float()), nan=0.0)  # [R, K]
    # Boxes clipped flat against an image edge have zero area, so no IoU matches them: equal coordinates
    # (within float noise of the boxes' scale) count as a match too.
    scale = max(1.0, float(ref_boxes.abs().max()))
    same_box = (ref_boxes.float()[:, None, :] - cand_boxes.float()[None, :, :]).abs().amax(dim=-1) <= 1e-4 * scale
    iou = torch.where(same_box, torch.ones_like(iou), iou)
    same_class = torch.as_tensor(reference.labels)[:, None] == torch.as_tensor(candidate.labels)[None, :]
    iou = torch.where(same_class, iou, torch.zeros_like(iou))
    overlaps = iou >= iou_threshold
    matched = overlaps.any(dim=1)
    ref_scores, cand_scores = torch.as_tensor(reference.scores).float(), torch.as_tensor(candidate.scores).float()
    score_diff = (ref_scores[:, None] - cand_scores[None, :]).abs().masked_fill(~overlaps, float("inf"))
    nearest = score_diff.min(dim=1).values[matched]  # duplicates of one box: pair the scores that agree
    return int(matched.sum()), float(nearest.max()) if len(nearest) else 0.0


def default_parity_images(limit: int = 4) -> list[np.ndarray]:
    """A few real photos from ``../shared/data`` when present (beside the checkout or the cwd), else
    synthetic images from the built-in dataset."""
    import cv2

    for base in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"):
        folder = base / "voc-mini" / "VOCdevkit" / "VOC2012" / "JPEGImages"
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
            images = [cv2.imread(str(p)) for p in files]
            return [cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for img in images if img is not None]
    from assd.data import parse_data_spec

    dataset = parse_data_spec(f"synthetic:{limit}")
    return [dataset.load_image(i) for i in range(limit)]


def compare_runners(reference, candidate, images: list[np.ndarray], postprocess_cfg=None,
                    batch_size: int = 2) -> ParityReport:
    """Run both runners on ``images`` (RGB uint8) with the same pre/post-processing and compare."""
    from assd.runtime.postprocess import PostprocessConfig, detect
    from assd.runtime.preprocess import preprocess

    cfg = reference.cfg
    postprocess_cfg = postprocess_cfg or PostprocessConfig()
    priors = priors_for(cfg)
    stats = {"loc": [], "conf": []}
    conf_scale = loc_scale = 0.0
    totals, score_diff = [0, 0], 0.0
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size], cfg)
        outputs = [tuple(t.float().cpu() for t in runner.infer(batch)) for runner in (reference, candidate)]
        (ref_loc, ref_conf), (cand_loc, cand_conf) = outputs
        stats["loc"].append((ref_loc - cand_loc).abs().flatten())
        stats["conf"].append((ref_conf - cand_conf).abs().flatten())
        conf_scale = max(conf_scale, float(ref_conf.abs().max()))
        loc_scale = max(loc_scale, float(ref_loc.abs().max()))
        ref_dets = detect(ref_loc, ref_conf, cfg, postprocess_cfg, priors)
        cand_dets = detect(cand_loc, cand_conf, cfg, postprocess_cfg, priors)
        for ref, cand in zip(ref_dets, cand_dets):
            matched, diff = match_detections(ref.with_label_ids(cfg), cand)
            totals[0] += len(ref.scores)
            totals[1] += matched
            score_diff = max(score_diff, diff)
    loc_diff, conf_diff = torch.cat(stats["loc"]), torch.cat(stats["conf"])
    return ParityReport(images=len(images), loc_max_abs=float(loc_diff.max()), loc_mean_abs=float(loc_diff.mean()),
                        conf_max_abs=float(conf_diff.max()), conf_mean_abs=float(conf_diff.mean()),
                        detections_reference=totals[0], detections_matched=totals[1], max_score_diff=score_diff,
                        conf_scale=conf_scale, loc_scale=loc_scale)



def compare_postprocessed(reference, onnx_path: str, images: list[np.ndarray], postprocess_cfg,
                          batch_size: int = 2) -> ParityReport:
    """Detection agreement of an ONNX file exported ``--with-postprocess`` against the reference runner
    with the torch post-processing (raw-output differences are not defined there: reported as 0)."""
    import onnxruntime as ort

    from assd.runtime.postprocess import Detections, detect
    from assd.runtime.preprocess import preprocess

    cfg = reference.cfg
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    priors = priors_for(cfg)
    totals, score_diff = [0, 0], 0.0
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size], cfg)
        loc, conf = (t.float().cpu() for t in reference.infer(batch))
        ref_dets = detect(loc, conf, cfg, postprocess_cfg, priors)
        boxes, scores, classes, count = session.run(None, {"images": batch.numpy()})
        for index, ref in enumerate(ref_dets):
            valid = int(count[index])
            cand = Detections(boxes=boxes[index, :valid], scores=scores[index, :valid], labels=classes[index, :valid])
            matched, diff = match_detections(ref.with_label_ids(cfg), cand)
            totals[0] += len(ref.scores)
            totals[1] += matched
            score_diff = max(score_diff, diff)
    return ParityReport(images=len(images), loc_max_abs=0.0, loc_mean_abs=0.0, conf_max_abs=0.0, conf_mean_abs=0.0,
                        detections_reference=totals[0], detections_matched=totals[1], max_score_diff=score_diff,
                        raw_compared=False)
