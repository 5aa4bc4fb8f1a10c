"""``assd attention``: the paper's Figure 3, the attention of one query position on every prediction map.

For map k, ``model.attention[k].attention_weights`` of ``model.feature_maps(images)[k]`` gives
``ā [N, N]`` (row i: how much query position i attends to every position j, eq. 1). The query is a
pixel of the original image, mapped to the grid cell of map k that contains it (the input is a plain
resize of the whole image, so the cell is ``floor(x / W * W_k), floor(y / H * H_k)``). Row i, reshaped
to ``[H_k, W_k]`` and divided by its maximum, is bilinearly upsampled to the image and overlaid as a
JET heat map.

Default query: the center of the highest-scoring detection (default post-processing thresholds), so
the maps show what the network looks at for its most confident object; the image center when there
is no detection at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assd.errors import UserError
from assd.evaluation.visualize import heat_overlay, image_grid, mark_point, write_image
from assd.paths import writing
from assd.runtime.postprocess import detect
from assd.runtime.preprocess import preprocess
from assd.utils import atomic_write_json


@dataclass
class AttentionMap:
    """Attention of the query on one prediction map.

    Attributes:
        index: map index k (0 = the largest map).
        cell: ``(row, col)`` of the query in the map's grid.
        weights: float32 ``[H_k, W_k]``, the query's softmax row (sums to 1).
    """

    index: int
    cell: tuple[int, int]
    weights: np.ndarray


def default_query(model, batch: torch.Tensor, width: int, height: int) -> tuple[tuple[float, float], str]:
    """``((x, y) pixels, how it was chosen)``: the best detection's center, else the image center."""
    loc, conf = model(batch)
    dets = detect(loc, conf, model.cfg, priors_cxcywh=model.priors_cxcywh)[0].to_pixels(width, height)
    if len(dets) == 0:
        return (width / 2, height / 2), "image center (no detection)"
    x1, y1, x2, y2 = dets.boxes[0].tolist()
    name = model.cfg.class_names[int(dets.labels[0]) - 1]
    # A box clipped flat against the right/bottom edge has its center on the edge: keep it a pixel inside.
    center = (min((x1 + x2) / 2, width - 0.5), min((y1 + y2) / 2, height - 0.5))
    return center, f"center of the best detection ({name} {dets.scores[0]:.2f})"


def attention_maps(model, image: np.ndarray, query_xy: tuple[float, float] | None = None,
                   maps: Sequence[int] | None = None) -> tuple[list[AttentionMap], tuple[float, float], str]:
    """Attention of a query pixel on the chosen maps (default all) of ``image`` (RGB uint8 ``[H, W, 3]``).

    Returns ``(maps, (x, y) query in pixels, how the query was chosen)``.
    """
    if model.attention is None:
        raise UserError(f"{model.cfg.name}: this model has no attention units (attention=False): "
                        "use an ASSD model (e.g. assd321, assd513, assd-mini)")
    num_maps = len(model.attention)
    maps = list(range(num_maps)) if maps is None else list(maps)
    for index in maps:
        if not 0 <= index < num_maps:
            raise UserError(f"--maps {index}: this model has maps 0..{num_maps - 1}")
    height, width = image.shape[:2]
    cfg = model.cfg
    device = model.priors_cxcywh.device
    with torch.inference_mode():
        batch = preprocess([image], cfg, device=device)
        if query_xy is None:
            query_xy, how = default_query(model, batch, width, height)
        else:
            how = "given"
        x, y = query_xy
        if not (0 <= x < width and 0 <= y < height):
            raise UserError(f"--query {x:g},{y:g}: outside the {width}x{height} image")
        features = model.feature_maps(batch)
        results = []
        for index in maps:
            rows, cols = features[index].shape[-2:]
            cell = (min(int(y / height * rows), rows - 1), min(int(x / width * cols), cols - 1))
            weights = model.attention[index].attention_weights(features[index])[0]  # [N, N]
            query_row = weights[cell[0] * cols + cell[1]].reshape(rows, cols)
            results.append(AttentionMap(index, cell, query_row.float().cpu().numpy()))
    return results, (float(x), float(y)), how


def attention_file_names(model, maps: Sequence[int] | None = None) -> list[str]:
    """The files ``write_attention`` writes for ``maps`` (default: every map of ``model``)."""
    indices = range(len(model.attention or [])) if maps is None else maps
    return [*(f"attention_map{index}.png" for index in indices), "attention_grid.png", "attention.json"]


def write_attention(out_dir: str | os.PathLike, image: np.ndarray, results: Sequence[AttentionMap],
                    query_xy: tuple[float, float], how: str, image_name: str = "image") -> list[Path]:
    """``out_dir/attention_map<k>.png`` per map, ``attention_grid.png`` (image + all maps) and
    ``attention.json`` (query, cells); returns the PNG paths, grid last."""
    out_dir = Path(out_dir)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    marked = mark_point(image, *query_xy)
    overlays, titles, written = [], [], []
    for result in results:
        heat = result.weights / max(float(result.weights.max()), 1e-12)
        overlay = mark_point(heat_overlay(image, heat), *query_xy)
        rows, cols = result.weights.shape
        path = out_dir / f"attention_map{result.index}.png"
        write_image(path, overlay)
        written.append(path)
        overlays.append(overlay)
        titles.append(f"map {result.index} ({rows}x{cols})")
    grid_path = out_dir / "attention_grid.png"
    write_image(grid_path, image_grid([marked, *overlays], [f"query {query_xy[0]:.0f},{query_xy[1]:.0f}", *titles]))
    written.append(grid_path)
    atomic_write_json(out_dir / "attention.json", {
        "image": image_name, "query_xy": list(query_xy), "query_source": how,
        "maps": [{"map": r.index, "size": list(r.weights.shape), "cell_row_col": list(r.cell),
                  "max_weight": float(r.weights.max())} for r in results]})
    return written
