"""Prefix affinity: send a prompt where its prefix is likely already in the KV cache.

Two signals, combined per candidate as the larger of the two:

* **observed overlap**: ``state.prefixes.matched(blocks) / len(blocks)``, the leading share of
  the prompt's prefix blocks this gateway already sent to the deployment;
* **rendezvous preference**: the conversation's ``affinity_key`` ranks the candidates by
  highest random weight; the first one not overloaded is credited with the conversation's
  opening blocks (system prompt + first user message). Every gateway replica ranks the same
  way, so replicas send a conversation to the same engine without sharing any state.

Bounded load keeps a hot prefix from pinning an overloaded deployment: the preferred
deployment is passed over while its load is at or above ``ceil(c * (total + 1) / n)``
(Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2016), where
load is running + waiting requests as estimated by :mod:`aigw.policies.load`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from aigw.policies.base import RouteContext
from aigw.policies.load import Load, LoadEstimator
from aigw.routing.deployment import Deployment

__all__ = [
    "PrefixAffinityScorer",
    "Rendezvous",
    "affinity_overlaps",
    "bounded_capacity",
    "opening_share",
    "stable_hash64",
]

_MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
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
    """Highest-random-weight ranking of deployment ids for a 64-bit key.

    Weight of id for key = mix64(key XOR blake2b(id)); the per-id hash is computed once and
    kept (bounded by the deployments of one model). This costs ~0.3 us per id where
    :func:`aigw.routing.prefix.rendezvous_rank` (a blake2b per id per call) costs ~2 us, so
    the two rank differently: use one of them consistently for one purpose.
    """

    __slots__ = ("_salts",)

    def __init__(self) -> None:
        self._salts: dict[str, int] = {}

    def weights(self, key: int, candidates: Sequence[Deployment]) -> list[int]:
        salts = self._salts
        out = []
        for d in candidates:
            salt = salts.get(d.id)
            if salt is None:
                salt = salts[d.id] = stable_hash64(d.id)
            out.append(_mix64(key ^ salt))
        return out

    def choose(
        self,
        key: int,
        candidates: Sequence[Deployment],
        loads: Sequence[Load],
        load_factor: float,
        members: Sequence[int] | None = None,
    ) -> int:
        """Index of the most preferred candidate whose load is under the bounded capacity,
        among ``members`` (indices into ``candidates``; default all of them)."""
        if members is None:
            members = range(len(candidates))
        weights = dict(
            zip(members, self.weights(key, [candidates[i] for i in members]), strict=True)
        )
        total = 0.0
        for i in members:
            total += loads[i].running + loads[i].waiting
        capacity = bounded_capacity(total, len(members), load_factor)
        best = max(weights, key=weights.__getitem__)
        if loads[best].running + loads[best].waiting < capacity:
            return best
        for i in sorted(weights, key=weights.__getitem__, reverse=True):
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


def affinity_overlaps(
    candidates: Sequence[Deployment],
    ctx: RouteContext,
    loads: LoadEstimator,
    rendezvous: Rendezvous,
    members: Sequence[int] | None = None,
) -> list[float]:
    """Per candidate, the expected share of the prompt's prefix blocks it has cached.

    ``members``: the candidates (indices) the rendezvous preference may fall on; default all.
    """
    blocks = ctx.prefix_blocks
    count = len(blocks)
    if not count:
        return [0.0] * len(candidates)
    overlaps = [d.state.prefixes.matched(blocks) / count for d in candidates]
    key = ctx.affinity_key
    if key is not None and len(candidates) > 1 and (members is None or members):
        target = rendezvous.choose(
            key, candidates, loads.loads(candidates), loads.tuning.load_factor, members
        )
        opening = opening_share(ctx)
        if overlaps[target] < opening:
            overlaps[target] = opening
    return overlaps


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
