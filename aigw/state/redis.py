"""Rate limits and admission shared by every gateway process through one Redis.

Each check-and-change is one atomic Lua script (``lua/*.lua``), timed by Redis's own clock
(``TIME``), so every instance agrees on windows and lease expiries. Keys start with
``state.key_prefix``; the scripts build some keys themselves (admission follows a released
pool to its waiting queues), so this needs one Redis, not a cluster.

Rate-limit keys, per quota key ``K``: ``rl:K`` (ZSET request id -> time in microseconds),
``rla:K`` (HASH request id -> units), ``rls:K`` (the units in the log). All three expire
``window_s`` after the newest charge. Admission keys are described in ``lua/admission_lib.lua``
and :mod:`aigw.state.redis_admission`.

Every Redis failure (refused, reset, no answer within ``state.timeout_s``, a script error)
raises :class:`~aigw.state.base.StateUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from aigw.config import StateConfig
from aigw.state.base import Charge, LimitDecision, Quota, QuotaStatus
from aigw.state.redis_admission import RedisAdmissionQueue
from aigw.state.scripts import Arg, Script, connect, lua_source

__all__ = ["RedisAdmissionQueue", "RedisRateLimiter", "connect"]


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RedisRateLimiter:
    """:class:`~aigw.state.base.RateLimiter` over sliding logs in Redis.

    A charge of 0 units is allowed while the quota is below its limit and records nothing;
    charges of one reservation must name distinct quota keys.
    """

    def __init__(self, redis: Redis, config: StateConfig) -> None:
        self._prefix = config.key_prefix
        self._reserve = Script(redis, lua_source("ratelimit_reserve"), config.timeout_s)
        self._reconcile = Script(redis, lua_source("ratelimit_reconcile"), config.timeout_s)
        self._refund = Script(redis, lua_source("ratelimit_refund"), config.timeout_s)

    async def load(self) -> None:
        """Load the scripts now (``SCRIPT LOAD``), so the first request does not."""
        for script in (self._reserve, self._reconcile, self._refund):
            await script.load()

    def _keys(self, quota: Quota) -> tuple[str, str, str]:
        p, key = self._prefix, quota.key
        return f"{p}rl:{key}", f"{p}rla:{key}", f"{p}rls:{key}"

    async def reserve(self, request_id: str, charges: Sequence[Charge]) -> LimitDecision:
        if not charges:
            return LimitDecision(True, ())
        keys: list[str] = []
        args: list[Arg] = [request_id]
        for charge in charges:
            keys.extend(self._keys(charge.quota))
            args += (charge.quota.limit, _us(charge.quota.window_s), charge.amount)
        reply = await self._reserve(keys, args)
        refused, retry_us = int(reply[1]), int(reply[2])
        statuses = tuple(
            QuotaStatus(charge.quota, int(reply[3 + 2 * i]), int(reply[4 + 2 * i]) / 1e6)
            for i, charge in enumerate(charges)
        )
        if not refused:
            return LimitDecision(True, statuses)
        retry_after = None if retry_us < 0 else retry_us / 1e6
        return LimitDecision(False, statuses, charges[refused - 1].quota, retry_after)

    async def reconcile(self, request_id: str, quota: Quota, amount: int) -> None:
        await self._reconcile(self._keys(quota), (request_id, amount, _us(quota.window_s)))

    async def refund(self, request_id: str, quotas: Sequence[Quota]) -> None:
        if quotas:
            keys = [key for quota in quotas for key in self._keys(quota)]
            await self._refund(keys, (request_id,))
