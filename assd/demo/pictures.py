"""The demo's pictures: detections drawn on a few validation images (one file each, plus a grid) and the
attention maps of the best detection on the first of them (the paper's Figure 3)."""

from __future__ import annotations

import re
from pathlib import Path

PREDICTIONS_GRID = "predictions.png"


def _safe(image_id) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(image_id))


def draw_pictures(checkpoint: str, val_spec: str, out: Path, images_dir: str, num_images: int,
                  num_attention: int, score_threshold: float, device: str, progress: bool = False) -> dict:
    """Write ``out/images_dir/pred_<id>.jpg`` for the first ``num_images`` images of ``val_spec``,
    ``predictions.png`` (all of them in a grid) and ``attention_<id>/`` (maps + ``attention_grid.png``)
    for the first ``num_attention``. Returns the written paths relative to ``out``:
    ``{"predictions": [...], "predictions_grid": ..., "attention": [grid per image], "detections": [n per image]}``."""
    from assd.data import parse_data_spec
    from assd.evaluation import FirstImages, predict_dataset
    from assd.evaluation.attention_maps import attention_maps, write_attention
    from assd.evaluation.visualize import draw_detections, image_grid, write_image
    from assd.models.checkpoint import load_checkpoint
    from assd.runtime.postprocess import PostprocessConfig
    from assd.runtime.runners import resolve_device

    torch_device = resolve_device(device)
    model = load_checkpoint(checkpoint).to(torch_device)
    cfg = model.cfg
    dataset = FirstImages(parse_data_spec(val_spec), num_images)
    detections = predict_dataset(model, dataset, cfg, PostprocessConfig(score_threshold=score_threshold),
                                 batch_size=num_images, device=torch_device, progress=progress)
    folder = out / images_dir
    drawn, written, titles = [], [], []
    for index, dets in enumerate(detections):
        image_id = _safe(dataset.image_ids[index])
        picture = draw_detections(dataset.load_image(index), dets.boxes, dets.scores, dets.labels, cfg.class_names)
        write_image(folder / f"pred_{image_id}.jpg", picture)
        written.append(f"{images_dir}/pred_{image_id}.jpg")
        drawn.append(picture)
        titles.append(f"image {image_id}: {len(dets)} detections >= {score_threshold:g}")
    write_image(folder / PREDICTIONS_GRID, image_grid(drawn, titles, columns=min(len(drawn), 4)))
    attention = []
    for index in range(min(num_attention, len(dataset))):
        image_id = _safe(dataset.image_ids[index])
        image = dataset.load_image(index)
        results, query_xy, how = attention_maps(model, image)
        paths = write_attention(folder / f"attention_{image_id}", image, results, query_xy, how,
                                image_name=f"{val_spec} image {image_id}")
        attention.append(str(paths[-1].relative_to(out)))
    return {"predictions": written, "predictions_grid": f"{images_dir}/{PREDICTIONS_GRID}", "attention": attention,
            "detections": [len(dets) for dets in detections]}
