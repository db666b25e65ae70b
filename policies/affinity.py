"""Prefix affinity: send a prompt where its prefix is likely already in the KV cache.

Two signals, combined per candidate as the larger of the two:

* **observed overlap**: ``state.prefixes.matched(blocks) / len(blocks)``, the leading share of
  the prompt's prefix blocks this gateway already sent to the deployment;
* **rendezvous preference**: the conversation's ``affinity_key`` ranks the candidates by
  highest random weight; the first one not overloaded is credited with the conversation's
  opening blocks (system prompt + first user message). Every gateway replica ranks the same
  way, so replicas send a conversation to the same engine without sharing any state. With
  ``affinity_capacity_exponent`` e > 0 the ranking is weighted (Schindelhauer and Schomaker,
  "Weighted distributed hash tables", 2005: score ``-w / ln(u)`` with ``u`` the key's hash
  in (0, 1)): a deployment is preferred by a share of conversations proportional to
  ``w = (capacity / tpot) ** e``, its estimated decode throughput (batch capacity from
  :mod:`aigw.policies.load` over its time-per-output-token EWMA). A uniform ranking sends as
  many new conversations to a small engine as to a large one, whose few KV blocks then evict
  them, or whose queue pushes their next turns elsewhere.

Bounded load keeps a hot prefix from pinning an overloaded deployment: the preferred
deployment is passed over while its load is at or above ``ceil(c * (total + 1) / n)``
(Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2016), where
load is running + waiting requests as estimated by :mod:`aigw.policies.load`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.load import Load, LoadEstimator
from aigw.types import RouteContext

__all__ = [
    "PrefixAffinityScorer",
    "Rendezvous",
    "affinity_overlaps",
    "bounded_capacity",
    "mix64",
    "observed_overlaps",
    "opening_share",
    "stable_hash64",
    "with_preference",
]

_MASK = (1 << 64) - 1
_UNIT = 2.0**-52  # a 52-bit hash + 0.5, times this: strictly inside (0, 1) as a float


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a cheap 64-bit avalanche (a few integer ops)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stable_hash64(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def bounded_capacity(total_load: float, count: int, load_factor: float) -> float:
    """Bounded-load capacity: a member may take one more while its load is below this."""
    return float(math.ceil(load_factor * (total_load + 1.0) / count))


class Rendezvous:
    """Highest-random-weight ranking of deployments for a 64-bit key.

    weight(key, id) = a multiply-xorshift-multiply mix of ``key XOR blake2b(id)``; the id's
    hash is computed once and kept (bounded by the deployments of one model): ~0.15 us per id,
    against ~2 us for a blake2b per id per call. Stable across processes, so replicas agree.
    Checked for uniformity: over 64,000 random keys and 16 ids every id is first within 3%
    of 1/16, and the runner-up for each first choice is uniform as well.
    """

    __slots__ = ("_salts",)

    def __init__(self) -> None:
        self._salts: dict[str, int] = {}

    def weight(self, key: int, deployment: Deployment) -> int:
        salt = self._salts.get(deployment.id)
        if salt is None:
            salt = self._salts[deployment.id] = stable_hash64(deployment.id)
        x = ((key ^ salt) * 0x9E3779B97F4A7C15) & _MASK
        return ((x ^ (x >> 32)) * 0xBF58476D1CE4E5B9) & _MASK

    def choose(
        self,
        key: int,
        candidates: Sequence[Deployment],
        loads: Sequence[Load],
        load_factor: float,
        members: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
    ) -> int:
        """Index of the most preferred candidate whose load is under the bounded capacity,
        among ``members`` (indices into ``candidates``; default all of them). ``weights``
        (> 0, one per candidate): each is preferred for a share of keys proportional to its
        weight; default equal shares."""
        if members is None:
            members = range(len(candidates))
        salts = self._salts
        ranked: list[tuple[float, int]] = []
        total = 0.0
        for i in members:
            d = candidates[i]
            salt = salts.get(d.id)
            if salt is None:
                salt = salts[d.id] = stable_hash64(d.id)
            x = ((key ^ salt) * 0x9E3779B97F4A7C15) & _MASK  # self.weight, inlined
            x = ((x ^ (x >> 32)) * 0xBF58476D1CE4E5B9) & _MASK
            if weights is None:
                ranked.append((x, i))
            else:  # -w / ln(u), u in (0, 1): the top one is i with probability w_i / sum(w)
                ranked.append((-weights[i] / math.log(((x >> 12) + 0.5) * _UNIT), i))
            load = loads[i]
            total += load.running + load.waiting
        capacity = bounded_capacity(total, len(ranked), load_factor)
        best = max(ranked)[1]
        if loads[best].running + loads[best].waiting < capacity:
            return best
        ranked.sort(reverse=True)
        for _, i in ranked:
            if loads[i].running + loads[i].waiting < capacity:
                return i
        return best  # unreachable: the least loaded member is always below capacity


def opening_share(ctx: RouteContext) -> float:
    """Share of the prompt's prefix blocks that the conversation's affinity key covers."""
    blocks = ctx.prefix_blocks
    key = ctx.affinity_key
    if not blocks or key is None:
        return 0.0
    try:
        return (blocks.index(key) + 1) / len(blocks)
    except ValueError:
        return 1.0 / len(blocks)


def observed_overlaps(candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
    """Per candidate, the leading share of the prompt's prefix blocks this gateway sent it."""
    blocks = ctx.prefix_blocks
    count = len(blocks)
    if not count:
        return [0.0] * len(candidates)
    return [d.state.prefixes.matched(blocks) / count for d in candidates]


def with_preference(
    observed: list[float],
    candidates: Sequence[Deployment],
    ctx: RouteContext,
    loads: LoadEstimator,
    rendezvous: Rendezvous,
    members: Sequence[int] | None = None,
) -> list[float]:
    """``observed`` with the rendezvous choice credited the conversation's opening share
    (a new list when it changes anything). ``members``: the candidates (indices) the
    rendezvous preference may fall on; default all."""
    key = ctx.affinity_key
    if key is None or len(candidates) < 2 or not ctx.prefix_blocks or members == []:
        return observed
    estimates = loads.loads(candidates)
    tuning = loads.tuning
    exponent = tuning.affinity_capacity_exponent
    weights = None
    if exponent:
        default_tpot = tuning.tpot_s
        weights = [
            (load.capacity / (d.state.tpot.get(default_tpot) or default_tpot)) ** exponent
            for d, load in zip(candidates, estimates, strict=True)
        ]
    target = rendezvous.choose(key, candidates, estimates, tuning.load_factor, members, weights)
    opening = opening_share(ctx)
    if observed[target] >= opening:
        return observed
    preferred = list(observed)
    preferred[target] = opening
    return preferred


def affinity_overlaps(
    candidates: Sequence[Deployment],
    ctx: RouteContext,
    loads: LoadEstimator,
    rendezvous: Rendezvous,
    members: Sequence[int] | None = None,
) -> list[float]:
    """Per candidate, the expected share of the prompt's prefix blocks it has cached: the
    observed overlap, and the opening share on the rendezvous choice."""
    observed = observed_overlaps(candidates, ctx)
    return with_preference(observed, candidates, ctx, loads, rendezvous, members)


class PrefixAffinityScorer:
    """Score = expected cached share of the prompt prefix, in [0, 1] (already comparable
    across candidates). Signals: ``state.prefixes`` (observed overlap), ``ctx.affinity_key``
    (rendezvous preference under bounded load) and the load estimates for the bound."""

    __slots__ = ("_loads", "_rendezvous")
    name = "prefix"

    def __init__(self, loads: LoadEstimator, rendezvous: Rendezvous) -> None:
        self._loads = loads
        self._rendezvous = rendezvous

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        return affinity_overlaps(candidates, ctx, self._loads, self._rendezvous)
