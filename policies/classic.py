"""Classic load-balancing policies that need no engine metrics."""

from __future__ import annotations

import random
from collections.abc import Sequence

from aigw.policies.base import RouteContext
from aigw.routing.deployment import Deployment

__all__ = ["RandomPolicy", "RoundRobinPolicy"]


class RoundRobinPolicy:
    """Each candidate in turn. Signal: none (a per-model counter)."""

    def __init__(self, rng: random.Random) -> None:
        # Start at a random offset so that several gateway replicas do not move in lockstep.
        self._next = rng.randrange(1 << 16)

    def pick(self, candidates: Sequence[Deployment], request: RouteContext) -> Deployment:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class RandomPolicy:
    """Uniformly random candidate. Signal: none."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[Deployment], request: RouteContext) -> Deployment:
        return candidates[self._rng.randrange(len(candidates))]
