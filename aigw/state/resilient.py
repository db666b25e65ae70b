"""What the gateway does while Redis is unreachable: serve from this process, or answer 503.

:class:`RedisHealth` holds the one "Redis is down" flag both wrappers share. The first
:class:`StateUnavailableError` trips it (logged at ERROR, once per outage); from then on no
request touches Redis, so none waits on it, and a background task probes Redis every second
until it answers (logged again) and the wrappers go back to it.

With ``on_redis_down = "local"`` requests are served by the in-memory implementations: each
instance enforces the full limits and pool sizes on its own, so the fleet admits up to N times
more while the outage lasts. With ``"reject"`` they get a 503 (code ``state_unavailable``).
A lease or reservation always goes back to the implementation that made it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Literal

from aigw.errors import ServiceUnavailableError
from aigw.state.base import (
    AdmissionQueue,
    Charge,
    Lease,
    LimitDecision,
    Pool,
    RateLimiter,
    Stamp,
    StateUnavailableError,
    Ticket,
)

__all__ = ["RedisHealth", "ResilientAdmissionQueue", "ResilientRateLimiter"]

log = logging.getLogger("aigw.state")

Mode = Literal["local", "reject"]


def _unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "Shared state (Redis) is unavailable; retry shortly.",
        code="state_unavailable",
        headers={"Retry-After": "1"},
    )


class RedisHealth:
    """Whether Redis is down, shared by the wrappers. ``probe`` raises
    :class:`StateUnavailableError` until Redis is usable again."""

    def __init__(
        self, probe: Callable[[], Awaitable[None]], mode: Mode, *, interval_s: float = 1.0
    ) -> None:
        self._probe = probe
        self._mode = mode
        self._interval_s = interval_s
        self._watcher: asyncio.Task[None] | None = None
        self.down = False
        self.errors = 0  # Redis calls that failed (requests and probes), for /metrics

    def trip(self, error: StateUnavailableError) -> None:
        self.errors += 1
        if self.down:
            return
        self.down = True
        then = "serving from per-process state" if self._mode == "local" else "answering 503"
        log.error("Redis is unreachable (%s): %s until it answers again", error, then)
        self._watcher = asyncio.create_task(self._watch(), name="aigw-state-probe")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._probe()
            except StateUnavailableError:
                self.errors += 1
                continue
            self.down = False
            log.warning("Redis answers again: shared state is back on Redis")
            return

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)


class ResilientRateLimiter:
    """A Redis :class:`RateLimiter` with a local stand-in (or a 503) while Redis is down.

    Settling goes back to whichever limiter reserved, told by the stamp alone: stamps are
    never negative, so a local reservation's stamp is handed out as its complement
    (``~stamp``, negative) and turned back on the way in. Nothing is remembered per request.
    """

    def __init__(
        self, redis: RateLimiter, local: RateLimiter, health: RedisHealth, mode: Mode
    ) -> None:
        self._redis = redis
        self._local = local
        self._health = health
        self._mode = mode

    async def reserve(self, request_id: str, charges: Sequence[Charge]) -> LimitDecision:
        if not self._health.down:
            try:
                return await self._redis.reserve(request_id, charges)
            except StateUnavailableError as exc:
                self._health.trip(exc)
        if self._mode == "reject":
            raise _unavailable()
        decision = await self._local.reserve(request_id, charges)
        return replace(decision, stamp=~decision.stamp) if decision.allowed else decision

    async def reconcile(self, stamp: Stamp, charges: Sequence[Charge], actual: int) -> None:
        if stamp < 0:
            await self._local.reconcile(~stamp, charges, actual)
        elif not self._health.down:
            try:
                await self._redis.reconcile(stamp, charges, actual)
            except StateUnavailableError as exc:
                self._health.trip(exc)  # the charge stays as reserved until it ages out

    async def refund(self, stamp: Stamp, charges: Sequence[Charge]) -> None:
        if stamp < 0:
            await self._local.refund(~stamp, charges)
        elif not self._health.down:
            try:
                await self._redis.refund(stamp, charges)
            except StateUnavailableError as exc:
                self._health.trip(exc)


class ResilientAdmissionQueue:
    """A Redis :class:`AdmissionQueue` with a local stand-in (or a 503) while Redis is down.

    A ticket that was waiting in Redis when the outage began carries on locally with what is
    left of its ``timeout_s``. Leases release to whichever implementation granted them.
    """

    def __init__(
        self,
        redis: AdmissionQueue,
        local: AdmissionQueue,
        health: RedisHealth,
        mode: Mode,
        clock: Callable[[], float],
    ) -> None:
        self._redis = redis
        self._local = local
        self._health = health
        self._mode = mode
        self._clock = clock

    async def acquire(self, ticket: Ticket, choices: Sequence[Pool]) -> Lease:
        if not self._health.down:
            started = self._clock()
            try:
                return await self._redis.acquire(ticket, choices)
            except StateUnavailableError as exc:
                self._health.trip(exc)
                left = max(0.0, ticket.timeout_s - (self._clock() - started))
                ticket = replace(ticket, timeout_s=left)
        if self._mode == "reject":
            raise _unavailable()
        return await self._local.acquire(ticket, choices)

    def depth(self, queue: str) -> int:
        return self._redis.depth(queue) + self._local.depth(queue)
