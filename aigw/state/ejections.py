"""Shared ejections: which deployments some gateway instance took out of rotation, and for
how long more, so that every instance stops sending to a dead backend soon after the first
one notices (the health monitor, :mod:`aigw.routing.probes`, writes on ejection and reads
once per ``health.sync_interval_s``; never on the request path).

One contract (``tests/state/test_ejections.py``), two implementations:
:class:`MemoryEjectionStore` (this process) and
:class:`~aigw.state.redis_ejections.RedisEjectionStore` (one key per
ejected deployment, ``{state.key_prefix}ej:{deployment}`` = the instance that ejected it,
expiring when the ejection ends: Redis forgets them by itself). Writing never shortens an
ejection already there (one Lua script). :class:`ResilientEjectionStore` serves from memory
while Redis is down, whatever ``state.on_redis_down`` says: a shared ejection is a routing
hint, never a reason to refuse a request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from aigw.state.base import StateUnavailableError
from aigw.state.resilient import RedisHealth

__all__ = [
    "EjectionStore",
    "MemoryEjectionStore",
    "ResilientEjectionStore",
]


class EjectionStore(Protocol):
    async def eject(self, deployment_id: str, seconds: float, owner: str) -> None:
        """``owner`` (an instance id) took ``deployment_id`` out of rotation for ``seconds``
        from now; an ejection already stored for longer stays as it is."""
        ...

    async def ejections(self, deployment_ids: Sequence[str], owner: str) -> dict[str, float]:
        """Seconds left of each of ``deployment_ids`` that is ejected by an instance other
        than ``owner`` (absent: not ejected, or only by ``owner`` itself). One round trip."""
        ...

    async def clear(self, deployment_id: str) -> None:
        """``deployment_id`` is back (an active probe saw it recover): forget its ejection,
        whoever stored it, so that no instance applies it after this."""
        ...


class MemoryEjectionStore:
    """:class:`EjectionStore` in this process. ``clock``: monotonic seconds (``loop.time``);
    at most one entry per deployment id, dropped when read after it ended."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until: dict[str, tuple[float, str]] = {}

    async def eject(self, deployment_id: str, seconds: float, owner: str) -> None:
        until = self._clock() + seconds
        found = self._until.get(deployment_id)
        if found is None or found[0] < until:
            self._until[deployment_id] = (until, owner)

    async def ejections(self, deployment_ids: Sequence[str], owner: str) -> dict[str, float]:
        now = self._clock()
        left: dict[str, float] = {}
        for deployment_id in deployment_ids:
            found = self._until.get(deployment_id)
            if found is None:
                continue
            if found[0] <= now:
                del self._until[deployment_id]
            elif found[1] != owner:
                left[deployment_id] = found[0] - now
        return left

    async def clear(self, deployment_id: str) -> None:
        self._until.pop(deployment_id, None)


class ResilientEjectionStore:
    """A Redis :class:`EjectionStore` with a local stand-in while Redis is down (sharing
    pauses; each instance still ejects on its own). Shares :class:`RedisHealth` with the
    other wrappers."""

    def __init__(self, redis: EjectionStore, local: EjectionStore, health: RedisHealth) -> None:
        self._redis = redis
        self._local = local
        self._health = health

    async def eject(self, deployment_id: str, seconds: float, owner: str) -> None:
        if not self._health.down:
            try:
                await self._redis.eject(deployment_id, seconds, owner)
                return
            except StateUnavailableError as exc:
                self._health.trip(exc)
        await self._local.eject(deployment_id, seconds, owner)

    async def ejections(self, deployment_ids: Sequence[str], owner: str) -> dict[str, float]:
        if not self._health.down:
            try:
                return await self._redis.ejections(deployment_ids, owner)
            except StateUnavailableError as exc:
                self._health.trip(exc)
        return await self._local.ejections(deployment_ids, owner)

    async def clear(self, deployment_id: str) -> None:
        await self._local.clear(deployment_id)
        if not self._health.down:
            try:
                await self._redis.clear(deployment_id)
            except StateUnavailableError as exc:
                self._health.trip(exc)
