"""Default boxes (priors) as in SSD and section 4 of the paper.

On map k with scales s_min, s_max, every position (i, j) gets, in this order:
  ratio 1 at s_min, ratio 1 at s' = sqrt(s_min * s_max), then for each extra ratio r: r and 1/r,
with w = s * sqrt(r), h = s / sqrt(r). By default centers are ((j + 0.5) / W, (i + 0.5) / H), so the
priors are exactly symmetric, and boxes are clipped to the image by converting to corners, clamping to
[0, 1] and converting back. Reference implementations differ (``Conventions``): torchvision and the
ASSD authors place centers with per-map ``steps`` in input pixels, ``(j + 0.5) / (S / step)``;
torchvision clamps only the widths and heights to [0, 1]; the authors' clamp result was discarded
(priors unclipped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from assd.models.box_coding import cxcywh_to_xyxy, xyxy_to_cxcywh


def _map_shapes(min_scale: float, max_scale: float, ratios: Sequence[int]) -> list[tuple[float, float]]:
    """(w, h) of the anchors at one position, normalized to the image side."""
    s_prime = math.sqrt(min_scale * max_scale)
    shapes = [(min_scale, min_scale), (s_prime, s_prime)]
    for ratio in ratios:
        root = math.sqrt(ratio)
        shapes += [(min_scale * root, min_scale / root), (min_scale / root, min_scale * root)]
    return shapes


def generate_priors(
    feature_sizes: Sequence[tuple[int, int]],
    min_scales: Sequence[float],
    max_scales: Sequence[float],
    aspect_ratios: Sequence[Sequence[int]],
    clip: bool | str = True,
    steps: Sequence[float] | None = None,
    input_size: int | None = None,
    offset: float = 0.5,
) -> torch.Tensor:
    """All priors of all maps, ``priors_cxcywh: [A, 4]`` float32, normalized to the input side.

    Ordered map by map, row-major over positions, anchors innermost: the same order in which the
    heads' outputs are flattened (``[B, H, W, n*4] -> [B, H*W*n, 4]``).

    Args:
        clip: ``"corners"`` or ``True`` (clamp corners to [0, 1]), ``"wh"`` (clamp w, h to [0, 1]) or
            ``"none"`` / ``False``.
        steps: per map, the stride in input pixels (needs ``input_size``): centers at
            ``(i + offset) / (input_size / step)``; ``None``: ``(i + offset) / map_size``.
        offset: position of the first center, in cells.
    """
    clip = {True: "corners", False: "none"}.get(clip, clip)
    if clip not in ("corners", "wh", "none"):
        raise ValueError(f"prior clip {clip!r}: use 'corners', 'wh' or 'none'")
    cells = [(h, w) for h, w in feature_sizes] if steps is None else [(input_size / s, input_size / s) for s in steps]
    per_map = []
    for (height, width), (cells_y, cells_x), s_min, s_max, ratios in zip(
            feature_sizes, cells, min_scales, max_scales, aspect_ratios):
        shapes = torch.tensor(_map_shapes(s_min, s_max, ratios), dtype=torch.float64)  # [n, 2]
        if clip == "wh":
            shapes = shapes.clamp(0.0, 1.0)
        cy = (torch.arange(height, dtype=torch.float64) + offset) / cells_y
        cx = (torch.arange(width, dtype=torch.float64) + offset) / cells_x
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centers = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2)  # [H*W, 1, 2]
        centers = centers.expand(-1, shapes.shape[0], 2)
        sizes = shapes.unsqueeze(0).expand(centers.shape[0], -1, 2)
        per_map.append(torch.cat([centers, sizes], dim=-1).reshape(-1, 4))
    priors_cxcywh = torch.cat(per_map, dim=0)
    if clip == "corners":
        priors_cxcywh = xyxy_to_cxcywh(cxcywh_to_xyxy(priors_cxcywh).clamp(0.0, 1.0))
    return priors_cxcywh.float()
