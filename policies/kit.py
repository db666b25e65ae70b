"""What scorers share within one policy, and the one normalisation they use.

Weights live in the policy, not here; a scorer only turns one signal into scores in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aigw.policies.affinity import Rendezvous
from aigw.policies.load import LoadEstimator
from aigw.policies.tuning import Tuning

__all__ = ["ScorerKit", "relative"]


@dataclass(frozen=True, slots=True)
class ScorerKit:
    """Built once per policy and handed to each scorer factory."""

    tuning: Tuning
    loads: LoadEstimator  # per-decision load estimates shared by the engine scorers
    rendezvous: Rendezvous  # per-id hashes for affinity

    @classmethod
    def build(cls, tuning: Tuning) -> ScorerKit:
        return cls(tuning, LoadEstimator(tuning), Rendezvous())


def relative(costs: Sequence[float], offset: float) -> list[float]:
    """Lower-is-better costs to scores in (0, 1]: ``(best + offset) / (cost + offset)``.

    The best candidate scores 1 and a candidate scores 1/2 when its cost (plus ``offset``) is
    twice the best's. Unlike min-max scaling this keeps proportions: 10 vs 11 requests in
    flight score 1 vs 0.92, not 1 vs 0, so a weighted sum does not let a one-request
    difference outweigh everything else. ``offset`` (> 0) is the cost's scale of "nothing",
    e.g. one request for counts.
    """
    if not costs:
        return []
    best = min(costs) + offset
    return [best / (c + offset) for c in costs]
