"""Sticky-session bindings in Redis, shared by every gateway instance.

One string key per session, ``{state.key_prefix}sess:{key}`` = the deployment id, with a
Redis TTL. A lookup is one ``GETEX key PX ttl`` (Redis 6.2+): read and renew in one round
trip, no script needed. A bind is one ``SET key id PX ttl``. Redis expires the keys itself,
so a crashed gateway leaves nothing behind for longer than the TTL.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from aigw.config import StateConfig
from aigw.state.base import StateUnavailableError

__all__ = ["RedisSessionStore"]


class RedisSessionStore:
    """:class:`~aigw.state.sessions.SessionStore` on Redis; every failure (refused, reset, no
    answer within ``state.timeout_s``) raises :class:`StateUnavailableError`."""

    def __init__(self, redis: Redis, config: StateConfig) -> None:
        self._redis = redis
        self._prefix = f"{config.key_prefix}sess:"
        self._timeout_s = config.timeout_s

    async def lookup(self, key: str, ttl_s: float) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._redis.getex(self._prefix + key, px=_ms(ttl_s))
        except (RedisError, OSError) as exc:  # OSError covers refused, reset, timed out
            raise _unavailable(exc) from exc
        return found if isinstance(found, str) or found is None else found.decode()

    async def bind(self, key: str, deployment_id: str, ttl_s: float) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.set(self._prefix + key, deployment_id, px=_ms(ttl_s))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc


def _ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


def _unavailable(exc: BaseException) -> StateUnavailableError:
    if isinstance(exc, TimeoutError):
        return StateUnavailableError("redis did not answer in time (sessions)")
    return StateUnavailableError(f"redis (sessions): {exc}")
