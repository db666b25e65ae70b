"""The two generic policy shapes: a bare picker, and weighted scorers followed by a picker.

A policy is data: which scorers with which weights, which picker. Both shapes are pure and
synchronous; the only thing they write is ``state.last_scores`` of each scored candidate
(``{scorer: score, ..., "total": t}``), so that an operator can see why a deployment won.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigw.policies.base import Picker, RouteContext, Scorer
from aigw.policies.load import LoadEstimator
from aigw.routing.deployment import Deployment

__all__ = ["PickerPolicy", "ScoredPolicy", "record_scores", "weighted_totals"]


def weighted_totals(columns: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Per candidate, the weighted sum of its scores; ``weights`` sum to 1, so totals are
    in [0, 1] like the scores."""
    if len(columns) == 1:
        weight = weights[0]
        return [weight * v for v in columns[0]]
    totals = [0.0] * len(columns[0])
    for column, weight in zip(columns, weights, strict=True):
        totals = [t + weight * v for t, v in zip(totals, column, strict=True)]
    return totals


def record_scores(
    candidates: Sequence[Deployment],
    names: Sequence[str],
    columns: Sequence[Sequence[float]],
    totals: Sequence[float],
) -> None:
    """Write each candidate's ``last_scores`` (a fresh dict: readers may keep the old one)."""
    for d, row, total in zip(candidates, zip(*columns, strict=True), totals, strict=True):
        scores = dict(zip(names, row, strict=True))
        scores["total"] = total
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

    __slots__ = ("_loads", "_names", "_picker", "_scorers", "_weights", "name")

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
        record_scores(candidates, self._names, columns, totals)
        return self._picker(candidates, totals, request)
