"""Per-layer sensitivity and the search for the fewest, cheapest layers to keep in higher precision.

Sensitivity (every layer, two variants each, all on one switchable graph):

* *kept high alone*: every other layer lowered, this one high. ``recovery`` = how many Δ mAP points
  that wins back from the all-low graph (``|Δ_all_low| - |Δ_kept_high_alone|``).
* *lowered alone*: every other layer high, this one lowered. ``harm`` = ``|Δ_lowered_alone|``.

Ranking (the table's order): recovery, then harm, then how much output error keeping it high removes
(mAP on a small image set moves in steps; the loc/conf error breaks its ties).

Search for the kept-high set K with ``|Δ mAP(K)| <= tolerance``:

1. greedy order by sensitivity per MAC: layers that recover mAP, by recovery / MAC share; then the
   others by output-error recovery / MAC share (cheap layers that help first);
2. growing prefixes of that order (1, 2, 4, ... layers) until one meets the tolerance, then a
   bisection on the prefix length for the shortest one that does;
3. a bisection that drops what is not needed: try removing the least valuable half of K, keep the
   removal when the tolerance still holds, else split that half again (delta debugging), so layers
   the greedy order took along but the tolerance does not need are dropped with few evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from assd.precision.evaluator import VariantEvaluator, VariantResult
from assd.precision.layers import Layer


@dataclass
class LayerSensitivity:
    layer: Layer
    position: int  # index of the layer's switch
    kept_high: VariantResult | None  # every other layer low, this one high
    lowered: VariantResult | None  # every other layer high, this one low
    recovery: float = 0.0  # Δ mAP points won back by keeping it high alone
    harm: float = 0.0  # |Δ mAP| points of lowering it alone
    error_recovery: float = 0.0  # loc + conf output error removed by keeping it high alone

    def to_dict(self) -> dict:
        def variant(result: VariantResult | None) -> dict | None:
            if result is None:
                return None
            return {"delta_map_points": result.delta_points, "loc_error": result.loc_error,
                    "conf_error": result.conf_error, "interval": result.interval and result.interval.to_dict()}
        return {"layer": self.layer.name, "node": self.layer.node, "op_type": self.layer.op_type,
                "network_index": self.layer.index, "macs": self.layer.macs, "macs_share": self.layer.share,
                "kept_high_alone": variant(self.kept_high), "lowered_alone": variant(self.lowered),
                "recovery_points": self.recovery, "harm_points": self.harm, "error_recovery": self.error_recovery}


def analyze(evaluator: VariantEvaluator, layers: list[Layer], both_directions: bool = True,
            progress: Callable[[int, int], None] | None = None) -> tuple[VariantResult, list[LayerSensitivity]]:
    """(the all-low variant, the sensitivity of every layer) — ``layers[i]`` is switch ``i``."""
    everything = frozenset(range(len(layers)))
    all_low = evaluator.evaluate(everything)
    found = []
    for position, layer in enumerate(layers):
        kept = evaluator.evaluate(everything - {position})
        lowered = evaluator.evaluate({position}) if both_directions else None
        found.append(LayerSensitivity(
            layer, position, kept, lowered, recovery=abs(all_low.delta_points) - abs(kept.delta_points),
            harm=abs(lowered.delta_points) if lowered else 0.0,
            error_recovery=all_low.output_error - kept.output_error))
        if progress:
            progress(position + 1, len(layers))
    return all_low, found


def ranked(sensitivities: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """Most sensitive first (see the module docstring)."""
    return sorted(sensitivities, key=lambda s: (-round(s.recovery, 6), -round(s.harm, 6), -s.error_recovery))


def greedy_order(sensitivities: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """Layers by sensitivity per MAC: mAP-recovering ones first (recovery / share), then the rest by
    output-error recovery / share."""
    def score(s: LayerSensitivity):
        share = max(s.layer.share, 1e-9)
        return (0, -s.recovery / share) if s.recovery > 1e-9 else (1, -s.error_recovery / share)
    return sorted(sensitivities, key=score)


@dataclass
class SearchResult:
    kept: list[LayerSensitivity]  # in greedy order
    final: VariantResult
    met: bool
    trials: list[dict] = field(default_factory=list)  # every set tried: {"kept": [names], "delta": points}
    needed: dict[str, float] = field(default_factory=dict)  # layer -> Δ mAP of the final set without it

    @property
    def kept_share(self) -> float:
        return sum(s.layer.share for s in self.kept)


class _Trials:
    """Evaluates kept-high sets (cached by the evaluator) and records every one tried."""

    def __init__(self, evaluator: VariantEvaluator, items: list[LayerSensitivity], tolerance: float):
        self.evaluator, self.tolerance, self.records = evaluator, tolerance, []
        self.everything = frozenset(s.position for s in items)

    def variant(self, kept: list[LayerSensitivity], record: bool = True) -> VariantResult:
        result = self.evaluator.evaluate(self.everything - {s.position for s in kept})
        if record:
            self.records.append({"kept": [s.layer.name for s in kept], "delta_map_points": result.delta_points,
                                 "low": result.low})  # (the variant's key, for its interval in the report)
        return result

    def meets(self, kept: list[LayerSensitivity]) -> bool:
        return abs(self.variant(kept).delta_points) <= self.tolerance + 1e-9

    def result(self, kept: list[LayerSensitivity]) -> SearchResult:
        final = self.variant(kept, record=False)
        needed = {s.layer.name: self.variant([k for k in kept if k is not s], record=False).delta_points for s in kept}
        return SearchResult(kept, final, abs(final.delta_points) <= self.tolerance + 1e-9, self.records, needed)


def search(evaluator: VariantEvaluator, sensitivities: list[LayerSensitivity], tolerance: float,
           echo: Callable[[str], None] = lambda _: None) -> SearchResult:
    """The smallest, cheapest kept-high set found with |Δ mAP| <= ``tolerance`` (see the module docstring)."""
    trials = _Trials(evaluator, sensitivities, tolerance)
    if trials.meets([]):
        return trials.result([])
    order = greedy_order(sensitivities)
    failing, size = 0, 1
    while not trials.meets(order[:size]):
        failing = size
        if size == len(order):
            return trials.result(order)
        size = min(2 * size, len(order))
    echo(f"greedy: the first {size} layers by sensitivity per MAC meet the tolerance; bisecting")
    while size - failing > 1:
        middle = (failing + size) // 2
        if trials.meets(order[:middle]):
            size = middle
        else:
            failing = middle
    least_valuable_first = sorted(order[:size], key=lambda s: (s.recovery, s.error_recovery))
    return trials.result(_drop_unneeded(order[:size], least_valuable_first, trials.meets))


def search_by_bisection(evaluator: VariantEvaluator, layers: list[Layer], tolerance: float) -> SearchResult:
    """The accuracy gate's search, without per-layer sensitivities: start from every layer high and drop
    halves (the most MACs first) while the tolerance holds, as in step 3 above. It needs about
    2 k log2(n) evaluations for k needed layers out of n, instead of the n of a sensitivity pass."""
    items = [LayerSensitivity(layer, position, None, None) for position, layer in enumerate(layers)]
    trials = _Trials(evaluator, items, tolerance)
    if trials.meets([]):
        return trials.result([])
    if not trials.meets(items):
        return trials.result(items)
    most_macs_first = sorted(items, key=lambda s: -s.layer.share)
    return trials.result(_drop_unneeded(items, most_macs_first, trials.meets))


def _drop_unneeded(kept: list[LayerSensitivity], candidates: list[LayerSensitivity],
                   meets: Callable[[list[LayerSensitivity]], bool]) -> list[LayerSensitivity]:
    """Remove the ``candidates`` the tolerance does not need, halves first (delta debugging)."""
    current = list(kept)

    def visit(chunk: list[LayerSensitivity]) -> None:
        nonlocal current
        chunk = [s for s in chunk if s in current]
        if not chunk:
            return
        trial = [s for s in current if s not in chunk]
        if meets(trial):
            current = trial
            return
        if len(chunk) > 1:
            half = len(chunk) // 2
            visit(chunk[:half])
            visit(chunk[half:])

    visit(candidates)
    return current
