"""Sticky-session bindings: a conversation's key -> the deployment that holds its KV cache.

One contract (``tests/state/test_sessions.py``), two implementations:
:class:`MemorySessionStore` (this process; TTL on an injected clock, bounded in size, least
recently used evicted first) and :class:`~aigw.state.redis_sessions.RedisSessionStore` (shared
by every gateway instance). :class:`ResilientSessionStore` serves from memory while Redis is
down, whatever ``state.on_redis_down`` says: a binding is a routing preference, never a reason
to refuse a request, so an outage costs KV-cache locality (sessions may move) and nothing else.

Keys are built by :mod:`aigw.routing.sticky` (scoped by API key name and model); values are
deployment ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from aigw.state.base import StateUnavailableError
from aigw.state.resilient import RedisHealth

__all__ = ["MemorySessionStore", "ResilientSessionStore", "SessionStore"]

DEFAULT_MAX_SESSIONS = 100_000  # ~20 MB of keys and ids at most in one process


class SessionStore(Protocol):
    async def lookup(self, key: str, ttl_s: float) -> str | None:
        """The deployment id bound to ``key``, or None (never bound, or expired).

        A hit also renews the binding: it now expires ``ttl_s`` seconds from now (one round
        trip on Redis), so a session in use never needs a :meth:`bind` to stay bound.
        """
        ...

    async def bind(self, key: str, deployment_id: str, ttl_s: float) -> None:
        """Bind ``key`` to ``deployment_id`` (replacing any binding) for ``ttl_s`` seconds."""
        ...


class MemorySessionStore:
    """:class:`SessionStore` in this process. ``clock``: monotonic seconds (``loop.time``).

    At most ``max_sessions`` bindings: binding one more evicts the least recently used
    (looked up or bound). Expired bindings are dropped when looked up or evicted, so memory
    is bounded by ``max_sessions`` whatever the TTLs.
    """

    def __init__(
        self, clock: Callable[[], float], max_sessions: int = DEFAULT_MAX_SESSIONS
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._clock = clock
        self._max = max_sessions
        self._bindings: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key: (id, expiry)

    def __len__(self) -> int:
        return len(self._bindings)

    async def lookup(self, key: str, ttl_s: float) -> str | None:
        found = self._bindings.get(key)
        if found is None:
            return None
        now = self._clock()
        if found[1] <= now:
            del self._bindings[key]
            return None
        self._bindings[key] = (found[0], now + ttl_s)
        self._bindings.move_to_end(key)
        return found[0]

    async def bind(self, key: str, deployment_id: str, ttl_s: float) -> None:
        bindings = self._bindings
        bindings[key] = (deployment_id, self._clock() + ttl_s)
        bindings.move_to_end(key)
        if len(bindings) > self._max:
            bindings.popitem(last=False)


class ResilientSessionStore:
    """A Redis :class:`SessionStore` with a local stand-in while Redis is down (see the module
    docs for why it never answers 503). Shares :class:`RedisHealth` with the other wrappers:
    the first failure trips it, and while it is down no lookup waits on Redis.

    Bindings made locally during an outage stay local: when Redis is back, a session follows
    its Redis binding again (still its deployment from before the outage, if unexpired).
    """

    def __init__(self, redis: SessionStore, local: SessionStore, health: RedisHealth) -> None:
        self._redis = redis
        self._local = local
        self._health = health

    async def lookup(self, key: str, ttl_s: float) -> str | None:
        if not self._health.down:
            try:
                return await self._redis.lookup(key, ttl_s)
            except StateUnavailableError as exc:
                self._health.trip(exc)
        return await self._local.lookup(key, ttl_s)

    async def bind(self, key: str, deployment_id: str, ttl_s: float) -> None:
        if not self._health.down:
            try:
                await self._redis.bind(key, deployment_id, ttl_s)
                return
            except StateUnavailableError as exc:
                self._health.trip(exc)
        await self._local.bind(key, deployment_id, ttl_s)
