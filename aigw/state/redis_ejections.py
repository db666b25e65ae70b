"""Shared ejections on Redis (the :class:`~aigw.state.ejections.EjectionStore` contract): one
key per ejected deployment, ``{state.key_prefix}ej:{deployment}`` = the instance that ejected
it, expiring when the ejection ends; written by a Lua script that never shortens one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from aigw.config import StateConfig
from aigw.state.base import StateUnavailableError
from aigw.state.scripts import Script, lua_source

__all__ = ["RedisEjectionStore"]


class RedisEjectionStore:
    """:class:`EjectionStore` on Redis (Redis's own clock: TTLs, so instances need not agree
    on the time); every failure raises :class:`StateUnavailableError`."""

    def __init__(self, redis: Redis, config: StateConfig) -> None:
        self._redis = redis
        self._prefix = f"{config.key_prefix}ej:"
        self._timeout_s = config.timeout_s
        self._extend = Script(redis, lua_source("ejection_extend"), config.timeout_s)

    async def eject(self, deployment_id: str, seconds: float, owner: str) -> None:
        await self._extend([self._prefix + deployment_id], [max(1, round(seconds * 1000)), owner])

    async def ejections(self, deployment_ids: Sequence[str], owner: str) -> dict[str, float]:
        if not deployment_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for deployment_id in deployment_ids:
            pipe.get(self._prefix + deployment_id)
            pipe.pttl(self._prefix + deployment_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:  # OSError covers refused, reset, timed out
            message = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise StateUnavailableError(f"redis (ejections): {message}") from exc
        left: dict[str, float] = {}
        for i, deployment_id in enumerate(deployment_ids):
            who, ttl_ms = replies[2 * i], int(replies[2 * i + 1])
            if who is not None and who != owner and ttl_ms > 0:
                left[deployment_id] = ttl_ms / 1000.0
        return left

    async def clear(self, deployment_id: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.delete(self._prefix + deployment_id)
        except (RedisError, OSError) as exc:
            message = "did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise StateUnavailableError(f"redis (ejections): {message}") from exc
