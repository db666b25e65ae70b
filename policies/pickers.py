"""Pickers: choose one candidate, given the policy's weighted score totals.

Each picker is built per policy (so per model) with the policy's ``random.Random`` and keeps
whatever little state it needs (a counter, smooth-WRR weights, hash rings). A picker returns
one of ``candidates`` (never empty) and never mutates deployment state.
:data:`PICKERS` is the name -> factory table.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.base import Picker
from aigw.policies.hashring import ConsistentHashPicker
from aigw.policies.tuning import Tuning
from aigw.types import RouteContext

__all__ = [
    "PICKERS",
    "SCORE_PICKERS",
    "ArgmaxPicker",
    "ConsistentHashPicker",
    "PowerOfTwoPicker",
    "RandomPicker",
    "RoundRobinPicker",
    "SmoothWeightedPicker",
]

_TIE = 1e-9  # totals closer than this are a tie


class RoundRobinPicker:
    """Each candidate in turn; ignores scores. A random starting offset keeps several
    gateway replicas from moving in lockstep."""

    __slots__ = ("_next",)

    def __init__(self, rng: random.Random) -> None:
        self._next = rng.randrange(1 << 16)

    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class SmoothWeightedPicker:
    """nginx's smooth weighted round-robin on ``config.weight``; ignores scores.

    Every pick adds each candidate's weight to its running value, takes the largest, and
    subtracts the total weight from the winner. Over any window of ``sum(weights)`` picks of
    a fixed candidate set each one is chosen exactly in proportion to its weight, and picks
    are interleaved (5:1:1 gives a a b a c a a, not a a a a a b c). Candidates missing from
    one decision (tried, at capacity) keep their running value.
    """

    __slots__ = ("_current",)

    def __init__(self, rng: random.Random) -> None:
        self._current: dict[str, float] = {}

    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment:
        current = self._current
        total = 0.0
        best = candidates[0]
        best_value = float("-inf")
        for d in candidates:
            weight = d.config.weight
            value = current.get(d.id, 0.0) + weight
            current[d.id] = value
            total += weight
            if value > best_value:
                best, best_value = d, value
        current[best.id] = best_value - total
        return best


class RandomPicker:
    """A uniformly random candidate; ignores scores."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment:
        return candidates[self._rng.randrange(len(candidates))]


class ArgmaxPicker:
    """The highest total; ties (within 1e-9) broken uniformly at random, so equal
    candidates share the load instead of the first one taking it all."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment:
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if s >= best - _TIE]
        if len(tied) == 1:
            return candidates[tied[0]]
        return candidates[tied[self._rng.randrange(len(tied))]]


class PowerOfTwoPicker:
    """Power of two choices: two distinct random candidates, the higher total wins (a tie
    is a coin flip). Cheap and robust to shared stale signals (no herding), at the price
    of sometimes drawing two busy ones: with 2 busy of 4, one pick in 6."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        rng = self._rng
        first = rng.randrange(count)
        second = rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = scores[first], scores[second]
        if abs(a - b) <= _TIE:
            return candidates[first if rng.random() < 0.5 else second]
        return candidates[first if a > b else second]


# picker name -> factory(rng, tuning).
PICKERS: dict[str, Callable[[random.Random, Tuning], Picker]] = {
    "round-robin": lambda rng, tuning: RoundRobinPicker(rng),
    "weighted": lambda rng, tuning: SmoothWeightedPicker(rng),
    "random": lambda rng, tuning: RandomPicker(rng),
    "argmax": lambda rng, tuning: ArgmaxPicker(rng),
    "p2c": lambda rng, tuning: PowerOfTwoPicker(rng),
    "hash": lambda rng, tuning: ConsistentHashPicker(rng, tuning),
}

# The pickers that use scores: a scored preset's ``picker:`` param may name one of these.
SCORE_PICKERS = ("argmax", "p2c")
