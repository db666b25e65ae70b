"""The two generic policy shapes: a bare picker, and weighted scorers followed by a picker.

A policy is data: which scorers with which weights, which picker. Both shapes are pure and
synchronous; the only thing they write is ``state.last_scores`` of each scored candidate
(``{scorer: score, ..., "total": t}``), so that an operator can see why a deployment won.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.base import Picker, Scorer
from aigw.policies.load import LoadEstimator
from aigw.types import RouteContext

__all__ = ["PickerPolicy", "ScoredPolicy", "record_scores", "row_maker", "weighted_totals"]


def weighted_totals(columns: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Per candidate, the weighted sum of its scores; ``weights`` sum to 1, so totals are
    in [0, 1] like the scores."""
    if len(columns) == 1:
        weight = weights[0]
        return list(columns[0]) if weight == 1.0 else [weight * v for v in columns[0]]
    if len(columns) == 2:  # auto's default (ttft, throughput): one pass, no zero list
        first, second = weights
        return [first * a + second * b for a, b in zip(columns[0], columns[1], strict=True)]
    totals = [0.0] * len(columns[0])
    for column, weight in zip(columns, weights, strict=True):
        totals = [t + weight * v for t, v in zip(totals, column, strict=True)]
    return totals


RowMaker = Callable[..., dict[str, float]]


def row_maker(keys: Sequence[str]) -> RowMaker:
    """A function of len(keys) floats returning ``{key: value}``, built once per policy.

    ``last_scores`` is written for every candidate of every decision; a dict display with
    fixed keys costs a quarter of ``dict(zip(keys, row))``, so common sizes get one.
    """
    match tuple(keys):
        case (k0, k1):
            return lambda a, b: {k0: a, k1: b}
        case (k0, k1, k2):
            return lambda a, b, c: {k0: a, k1: b, k2: c}
        case (k0, k1, k2, k3):
            return lambda a, b, c, d: {k0: a, k1: b, k2: c, k3: d}
        case (k0, k1, k2, k3, k4):
            return lambda a, b, c, d, e: {k0: a, k1: b, k2: c, k3: d, k4: e}
        case (k0, k1, k2, k3, k4, k5):
            return lambda a, b, c, d, e, f: {k0: a, k1: b, k2: c, k3: d, k4: e, k5: f}
    frozen = tuple(keys)
    return lambda *row: dict(zip(frozen, row, strict=True))


def record_scores(
    candidates: Sequence[Deployment], make_row: RowMaker, columns: Sequence[Sequence[float]]
) -> None:
    """Set each candidate's ``last_scores`` to a fresh dict of its values in ``columns``
    (fresh: a reader may keep the previous one)."""
    for d, scores in zip(candidates, map(make_row, *columns), strict=True):
        d.state.last_scores = scores


class PickerPolicy:
    """A policy that is only a picker (round-robin, weighted, random, hash)."""

    __slots__ = ("_picker", "name")

    def __init__(self, name: str, picker: Picker) -> None:
        self.name = name
        self._picker = picker

    def pick(self, candidates: Sequence[Deployment], request: RouteContext) -> Deployment:
        return self._picker(candidates, [0.0] * len(candidates), request)


class ScoredPolicy:
    """Weighted scorers, then a picker over the totals.

    ``scorers`` pairs each scorer with its weight (> 0); weights are normalised to sum 1.
    ``loads`` is the estimator the scorers share; it is bracketed around each decision so
    that the load of every candidate is estimated once per decision.
    """

    __slots__ = ("_loads", "_make_row", "_names", "_picker", "_scorers", "_weights", "name")

    def __init__(
        self,
        name: str,
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
        loads: LoadEstimator,
    ) -> None:
        if not scorers or any(w <= 0 for _, w in scorers):
            raise ValueError("a scored policy needs at least one scorer, each with weight > 0")
        total = sum(w for _, w in scorers)
        self.name = name
        self._scorers = tuple(s for s, _ in scorers)
        self._names = tuple(s.name for s, _ in scorers)
        self._weights = tuple(w / total for _, w in scorers)
        self._picker = picker
        self._loads = loads
        self._make_row = row_maker((*self._names, "total"))

    @property
    def weights(self) -> dict[str, float]:
        """Scorer name -> normalised weight (for /admin and tests)."""
        return dict(zip(self._names, self._weights, strict=True))

    def pick(self, candidates: Sequence[Deployment], request: RouteContext) -> Deployment:
        loads = self._loads
        loads.begin()
        try:
            columns = [scorer(candidates, request) for scorer in self._scorers]
        finally:
            loads.end()
        totals = weighted_totals(columns, self._weights)
        record_scores(candidates, self._make_row, (*columns, totals))
        return self._picker(candidates, totals, request)
