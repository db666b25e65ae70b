"""Shared state: rate limits, admission (queue and slots), sticky-session bindings and
shared ejections, in memory or on Redis.

:func:`open_state` builds what ``state.backend`` asks for, once, in the app's lifespan:
``memory`` (this process only) or ``redis`` (shared by every instance, with the fallback that
``state.on_redis_down`` names). The interfaces are in :mod:`aigw.state.base`.

The Redis implementations are imported only when ``state.backend`` is ``redis``: redis-py
costs a memory-state gateway ~10 MB and ~50 ms of startup for nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aigw.config import StateConfig
from aigw.state.base import AdmissionQueue, RateLimiter, StateUnavailableError
from aigw.state.ejections import EjectionStore, MemoryEjectionStore, ResilientEjectionStore
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from aigw.state.resilient import RedisHealth, ResilientAdmissionQueue, ResilientRateLimiter
from aigw.state.sessions import MemorySessionStore, ResilientSessionStore, SessionStore

__all__ = [
    "EjectionStore",
    "MemoryAdmissionQueue",
    "MemoryEjectionStore",
    "MemoryRateLimiter",
    "MemorySessionStore",
    "SessionStore",
    "SharedState",
    "StateUnavailableError",
    "open_state",
]


@dataclass(frozen=True, slots=True)
class SharedState:
    """The rate limiter, admission queue and session store requests go through, and where
    the health monitor shares ejections (None: this process only); close once."""

    limiter: RateLimiter
    admission: AdmissionQueue
    sessions: SessionStore
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()
    redis: RedisHealth | None = None  # with the Redis backend: whether it is up, its errors
    ejections: EjectionStore | None = None

    async def aclose(self) -> None:
        for close in self.closers:
            await close()


async def open_state(config: StateConfig, clock: Callable[[], float]) -> SharedState:
    """The state ``config`` describes. ``clock``: monotonic seconds (``loop.time``).

    With Redis, this returns even when Redis is unreachable: the wrappers start in their
    outage mode (logged) and move to Redis when it answers.
    """
    if config.backend == "memory":
        return SharedState(
            MemoryRateLimiter(clock), MemoryAdmissionQueue(clock), MemorySessionStore(clock)
        )
    from aigw.state.redis import RedisAdmissionQueue, RedisRateLimiter, connect
    from aigw.state.redis_ejections import RedisEjectionStore
    from aigw.state.redis_sessions import RedisSessionStore

    client = connect(config)
    redis_admission = RedisAdmissionQueue(client, config, uuid.uuid4().hex[:16], clock=clock)
    redis_limiter = RedisRateLimiter(client, config)
    await redis_admission.start()
    mode = config.on_redis_down
    health = RedisHealth(redis_admission.check, mode)
    try:
        await redis_limiter.load()
        await redis_admission.check()
    except StateUnavailableError as exc:
        health.trip(exc)
    limiter = ResilientRateLimiter(redis_limiter, MemoryRateLimiter(clock), health, mode)
    admission = ResilientAdmissionQueue(
        redis_admission, MemoryAdmissionQueue(clock), health, mode, clock
    )
    sessions = ResilientSessionStore(
        RedisSessionStore(client, config), MemorySessionStore(clock), health
    )
    ejections = ResilientEjectionStore(
        RedisEjectionStore(client, config), MemoryEjectionStore(clock), health
    )
    closers = (health.aclose, redis_admission.close, client.aclose)
    return SharedState(limiter, admission, sessions, closers, health, ejections)
