"""Entropy (KL-divergence) calibration of symmetric INT8 ranges, as TensorRT's entropy calibrator does it.

Given the histogram of |x| of one tensor over the calibration images, the range ``amax`` is the bin
edge that minimizes KL(P || Q), where P is the histogram clipped at that edge (outliers added to the
last bin) and Q the same histogram quantized to 128 levels (int8's magnitude levels) and expanded back
(the algorithm of TensorRT's entropy calibrator / NVIDIA pytorch-quantization's ``_compute_amax_entropy``).

Hand-written (in numpy) rather than taken from ONNX Runtime's ``EntropyCalibrater`` because that one
models a 7-bit quantizer (128 levels spread over [-amax, amax], not 128 per side as int8 has),
truncates the expanded distribution to integers, and loops in pure Python over every bin of every
candidate (about a second per tensor with 2048 bins). The histograms themselves are ONNX Runtime's
(``PercentileCalibrater`` with ``symmetric=True`` collects |x| histograms, merged across batches).
"""

from __future__ import annotations

import numpy as np

INT8_LEVELS = 128  # magnitude levels of symmetric int8 (0..127) plus the sign


def entropy_amax(hist: np.ndarray, edges: np.ndarray, levels: int = INT8_LEVELS, stride: int = 1) -> float:
    """The |x| threshold minimizing KL divergence for a histogram of |x| (``hist`` [n], ``edges`` [n + 1]).

    Candidates are the bin edges ``edges[i]`` for i = levels .. n (every ``stride``-th one)."""
    counts = np.array(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    n = counts.size
    if n <= levels or counts.sum() == 0:
        return float(edges[-1])
    # The first bin holds every exact zero (all ReLU-clipped values); like TensorRT, weigh it as its
    # neighbour so that the spike does not dominate the divergence.
    counts[0] = counts[1]
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = counts[i:].sum()
    best_kl, best_i = np.inf, n
    for i in range(levels, n + 1, stride):
        reference = counts[:i].copy()
        reference[-1] += tail[i]  # clipped values saturate to the last level
        level_of_bin = (np.arange(i) * levels) // i  # bin j -> quantized level, `levels` equal groups
        nonzero = counts[:i] > 0
        level_sum = np.bincount(level_of_bin, weights=counts[:i], minlength=levels)
        level_nonzero = np.bincount(level_of_bin, weights=nonzero, minlength=levels)
        candidate = np.where(nonzero, level_sum[level_of_bin] / np.maximum(level_nonzero[level_of_bin], 1), 0.0)
        kl = _kl_divergence(reference, candidate)
        if kl <= best_kl:  # ties: the widest range
            best_kl, best_i = kl, i
    return float(edges[best_i])


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two unnormalized histograms; inf where q misses mass that p has."""
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return np.inf
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    p_norm, q_norm = p[mask] / p_total, q[mask] / q_total
    return float(np.sum(p_norm * np.log(p_norm / q_norm)))


def entropy_ranges(histograms: dict) -> dict[str, tuple[float, float]]:
    """{tensor: (lowest, highest)} from ORT's |x| histograms {tensor: (hist, edges, min, max, ...)}."""
    ranges = {}
    for name, (hist, edges, lowest, highest, *_rest) in histograms.items():
        amax = entropy_amax(hist, edges)
        ranges[name] = (max(float(lowest), -amax), min(float(highest), amax))
    return ranges
