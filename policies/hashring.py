"""Consistent hashing with bounded loads, on the request's ``hash_key``.

Each deployment owns ``virtual_nodes x weight`` points on a 64-bit ring, placed by a stable
hash of its id, so every gateway replica builds the same ring. A request hashes its key onto
the ring and walks clockwise to the first deployment whose in-flight count is below the
bounded capacity ``ceil(c * (total_in_flight + 1) / n)`` (Mirrokni et al., 2016, as in
HAProxy's ``hash-balance-factor``): a key sticks to its deployment until that deployment
carries more than ``c`` times its share, then spills to the next one on the ring.

Rings are built lazily per candidate set and cached (a few dozen at most). A ring built for
a larger set serves any subset by skipping the absent owners, which is exactly the ring the
subset would build, since a deployment's points depend on its id alone.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.affinity import bounded_capacity, mix64, stable_hash64
from aigw.policies.tuning import Tuning
from aigw.types import RouteContext

__all__ = ["ConsistentHashPicker", "HashRing"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MAX_RINGS = 32


def _point(seed: int, index: int) -> int:
    return mix64((seed + (index + 1) * _GOLDEN) & _MASK)


class HashRing:
    """Sorted ring points and, for each, the id of the deployment that owns it."""

    __slots__ = ("members", "owners", "points")

    def __init__(self, deployments: Sequence[Deployment], virtual_nodes: int) -> None:
        placed: list[tuple[int, str]] = []
        for d in deployments:
            seed = stable_hash64(d.id)
            count = max(1, round(virtual_nodes * d.config.weight))
            placed.extend((_point(seed, i), d.id) for i in range(count))
        placed.sort()
        self.points = [p for p, _ in placed]
        self.owners = [o for _, o in placed]
        self.members = frozenset(d.id for d in deployments)


class ConsistentHashPicker:
    """Consistent hash with bounded load; ignores scores. Signals: ``ctx.hash_key`` and
    ``state.in_flight``. Without a hash key the pick is uniformly random."""

    __slots__ = ("_load_factor", "_rings", "_rng", "_virtual_nodes")

    def __init__(self, rng: random.Random, tuning: Tuning) -> None:
        self._rng = rng
        self._load_factor = tuning.load_factor
        self._virtual_nodes = tuning.virtual_nodes
        self._rings: dict[tuple[str, ...], HashRing] = {}

    def ring(self, candidates: Sequence[Deployment]) -> HashRing:
        ids = tuple(d.id for d in candidates)
        ring = self._rings.get(ids)
        if ring is not None:
            return ring
        wanted = frozenset(ids)
        ring = next((r for r in self._rings.values() if wanted <= r.members), None)
        if ring is None:
            ring = HashRing(candidates, self._virtual_nodes)
        if len(self._rings) >= _MAX_RINGS:
            del self._rings[next(iter(self._rings))]
        self._rings[ids] = ring
        return ring

    def __call__(
        self, candidates: Sequence[Deployment], scores: Sequence[float], ctx: RouteContext
    ) -> Deployment:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        key = ctx.hash_key
        if key is None:
            return candidates[self._rng.randrange(count)]
        ring = self.ring(candidates)
        by_id = {d.id: d for d in candidates}
        total = 0
        for d in candidates:
            total += d.state.in_flight
        capacity = bounded_capacity(total, count, self._load_factor)
        points, owners = ring.points, ring.owners
        size = len(points)
        start = bisect_left(points, stable_hash64(key))
        for step in range(size):
            chosen = by_id.get(owners[(start + step) % size])
            if chosen is not None and chosen.state.in_flight < capacity:
                return chosen
        return min(candidates, key=lambda d: d.state.in_flight)  # unreachable: see capacity
