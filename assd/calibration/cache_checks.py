"""The ranges of a calibration cache, checked before an INT8 graph is built from them.

A cache that carries our marker, the ONNX file's hash and the same settings is trusted for where it came
from, not for what it holds: an edited or damaged file with ranges ``[0, 0]``, inverted or huge ranges
gave an INT8 graph that reproduced 0 of 200 detections with exit 0, and NaN ranges or a missing tensor
ended in a traceback inside ONNX Runtime ("scale issue", "Quantization parameters are not specified").
Every range of the methods used must be finite, ``lowest < highest``, within ``MAX_ABS_RANGE``, and
every tensor the INT8 graph quantizes (the data input of each quantized Conv) must have one, and its
range must not be empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import onnx

from assd.errors import UserError

# Activations of a detector's convolutions stay far below this (|x| < 1e4 measured on every preset and
# trained model); a range beyond it quantizes every real activation to 0.
MAX_ABS_RANGE = 1e6


def range_problem(name: str, low: float, high: float, quantized: bool = True) -> str | None:
    """Why ``[low, high]`` cannot be a calibrated range of tensor ``name``, or None. A tensor that is not
    ``quantized`` may have an empty range ``[x, x]`` (a map that stayed constant on the images)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"tensor {name} has the range [{low}, {high}], which is not finite"
    if low > high or (quantized and low == high):
        return f"tensor {name} has the range [{low}, {high}] (lowest must be below highest)"
    if max(abs(low), abs(high)) > MAX_ABS_RANGE:
        return f"tensor {name} has the range [{low:g}, {high:g}], beyond any activation (|x| <= {MAX_ABS_RANGE:g})"
    return None


def quantized_inputs(graph: onnx.GraphProto, excluded: Iterable[str], op_types: Iterable[str] = ("Conv",)) -> list[str]:
    """The activation tensors the INT8 graph quantizes: the data input of every quantized node."""
    initializers = {tensor.name for tensor in graph.initializer}
    excluded, op_types = set(excluded), set(op_types)
    return [node.input[0] for node in graph.node
            if node.op_type in op_types and node.name not in excluded and node.input[0] not in initializers]


def check_cached_ranges(cache_path, ranges: Mapping[str, Mapping[str, tuple[float, float]]],
                        required: Iterable[str]) -> None:
    """UserError (one line) when a method's cached ranges miss a ``required`` tensor or hold a bad range."""
    required = list(dict.fromkeys(required))
    for method, values in ranges.items():
        missing = [name for name in required if name not in values]
        if missing:
            raise UserError(f"--calib-cache {cache_path}: damaged: no {method} range for {len(missing)} quantized "
                            f"tensor(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): delete it "
                            "to measure the ranges again")
        quantized = set(required)
        for name, (low, high) in values.items():
            if problem := range_problem(name, low, high, name in quantized):
                raise UserError(f"--calib-cache {cache_path}: damaged: {method} {problem}: delete it to measure "
                                "the ranges again")
