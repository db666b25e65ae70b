"""Rate limits and admission shared by every gateway process through one Redis.

Each check-and-change is one atomic Lua script (``lua/*.lua``), timed by Redis's own clock
(``TIME``), so every instance agrees on windows and lease expiries. Keys start with
``state.key_prefix``; the scripts build some keys themselves (admission follows a released
pool to its waiting queues), so this needs one Redis, not a cluster.

Rate-limit keys, per quota key ``K``: ``rlw:K``, one HASH of the quota's bucketed window
(:mod:`aigw.state.windows`): field ``h`` the newest bucket, ``s`` the running sum, and one
field per bucket index (at most 61 in the span, plus those that left since the last reserve).
It expires ``window_s + w`` (61 bucket widths) after the last charge, when every bucket has
left. Admission keys are described in ``lua/admission_lib.lua``
and :mod:`aigw.state.redis_admission`.

Every Redis failure (refused, reset, no answer within ``state.timeout_s``, a script error)
raises :class:`~aigw.state.base.StateUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from aigw.config import StateConfig
from aigw.state.base import Charge, LimitDecision, Quota, QuotaStatus, Stamp
from aigw.state.redis_admission import RedisAdmissionQueue
from aigw.state.scripts import Arg, Script, connect, lua_source
from aigw.state.windows import bucket_width_us

__all__ = ["RedisAdmissionQueue", "RedisRateLimiter", "connect"]


class RedisRateLimiter:
    """:class:`~aigw.state.base.RateLimiter` over bucketed windows in Redis.

    A charge of 0 units is allowed while the quota is below its limit and records nothing;
    charges of one reservation must name distinct quota keys. Stamps are Redis's ``TIME``.
    """

    def __init__(self, redis: Redis, config: StateConfig) -> None:
        self._prefix = config.key_prefix
        self._reserve = Script(redis, lua_source("ratelimit_reserve"), config.timeout_s)
        self._adjust = Script(redis, lua_source("ratelimit_adjust"), config.timeout_s)

    async def load(self) -> None:
        """Load the scripts now (``SCRIPT LOAD``), so the first request does not."""
        for script in (self._reserve, self._adjust):
            await script.load()

    def _key(self, quota: Quota) -> str:
        return f"{self._prefix}rlw:{quota.key}"

    async def reserve(self, request_id: str, charges: Sequence[Charge]) -> LimitDecision:
        if not charges:
            return LimitDecision(True, ())
        keys: list[str] = []
        args: list[Arg] = []
        for charge in charges:
            quota = charge.quota
            keys.append(self._key(quota))
            args += (quota.limit, bucket_width_us(quota.window_s), charge.amount)
        reply = await self._reserve(keys, args)
        refused, retry_us, stamp = int(reply[0]), int(reply[1]), int(reply[2])
        statuses = tuple(
            QuotaStatus(charge.quota, int(reply[3 + 2 * i]), int(reply[4 + 2 * i]) / 1e6)
            for i, charge in enumerate(charges)
        )
        if not refused:
            return LimitDecision(True, statuses, stamp=stamp)
        retry_after = None if retry_us < 0 else retry_us / 1e6
        return LimitDecision(False, statuses, charges[refused - 1].quota, retry_after)

    async def reconcile(self, stamp: Stamp, charges: Sequence[Charge], actual: int) -> None:
        await self._settle(
            stamp, [(c.quota, actual - c.amount) for c in charges if c.amount != actual]
        )

    async def refund(self, stamp: Stamp, charges: Sequence[Charge]) -> None:
        await self._settle(stamp, [(c.quota, -c.amount) for c in charges if c.amount])

    async def _settle(self, stamp: Stamp, deltas: Sequence[tuple[Quota, int]]) -> None:
        if not deltas:
            return
        args: list[Arg] = [stamp]
        for quota, delta in deltas:
            args += (bucket_width_us(quota.window_s), delta)
        await self._adjust([self._key(quota) for quota, _ in deltas], args)
