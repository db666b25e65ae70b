"""Redis stops or dies: requests never wait on it for long, and state comes back to it."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from aigw.config import StateConfig
from aigw.errors import ServiceUnavailableError
from aigw.state import SharedState, open_state
from aigw.state.base import Charge, Pool, Quota
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from tests.state.conftest import RedisServer, state_config, ticket, until

P = Pool("p", 1)
TIMEOUT = 0.3  # state.timeout_s in these tests
BOUND = TIMEOUT + 1  # the longest any call may wait on an unreachable Redis


async def open_with(server: RedisServer, **extra: object) -> SharedState:
    return await open_state(
        state_config(server.url, timeout_s=TIMEOUT, **extra), asyncio.get_running_loop().time
    )


async def eventually(attempt: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Try until ``attempt`` succeeds: the redis-server process comes back on its own time."""
    async with asyncio.timeout(timeout_s):
        while not await attempt():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def outage_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aigw.state" and r.levelno == logging.ERROR]


async def test_memory_backend_needs_no_redis() -> None:
    shared = await open_state(StateConfig(), time.monotonic)
    assert isinstance(shared.limiter, MemoryRateLimiter)
    assert isinstance(shared.admission, MemoryAdmissionQueue)
    await shared.aclose()


async def test_local_mode_serves_from_memory_while_redis_is_stopped_then_goes_back(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    shared = await open_with(own_redis)
    try:
        quota = Quota("k", 3, "tokens")
        on_redis = await shared.limiter.reserve("r1", [Charge(quota, 2)])  # Redis: 1 left
        assert on_redis.allowed
        own_redis.signal(signal.SIGSTOP)
        started = time.monotonic()
        local = await shared.limiter.reserve("r2", [Charge(quota, 2)])  # this process: 1 left
        assert time.monotonic() - started < BOUND
        assert local.allowed and local.statuses[0].remaining == 1
        # Settling goes where the reservation was made, told by the stamp alone.
        await shared.limiter.reconcile(local.stamp, [Charge(quota, 2)], 1)
        assert (await shared.limiter.reserve("r3", [Charge(quota, 2)])).allowed
        started = time.monotonic()
        async with await shared.admission.acquire(ticket("a"), [P]):
            assert time.monotonic() - started < 0.05  # the outage is known: Redis is skipped
        started = time.monotonic()
        await shared.limiter.refund(on_redis.stamp, [Charge(quota, 2)])  # made on Redis:
        assert time.monotonic() - started < 0.05  # skipped, not awaited
        assert len(outage_errors(caplog)) == 1  # loud, once

        own_redis.signal(signal.SIGCONT)
        await until(lambda: any("back on Redis" in r.getMessage() for r in caplog.records))
        back = await shared.limiter.reserve("r4", [Charge(quota, 1)])
        assert back.allowed  # Redis's count again: 1 left there, none in this process
        async with await shared.admission.acquire(ticket("b"), [P]):
            pass
    finally:
        await shared.aclose()


async def test_reject_mode_answers_503_while_redis_is_dead_and_recovers_on_restart(
    own_redis: RedisServer,
) -> None:
    shared = await open_with(own_redis, on_redis_down="reject")
    try:
        quota = Quota("k", 100, "requests")
        assert (await shared.limiter.reserve("r1", [Charge(quota, 1)])).allowed
        own_redis.kill()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as refused:
            await shared.limiter.reserve("r2", [Charge(quota, 1)])
        assert refused.value.code == "state_unavailable"
        with pytest.raises(ServiceUnavailableError):
            await shared.admission.acquire(ticket("a"), [P])
        assert time.monotonic() - started < BOUND

        own_redis.start()  # same port, empty: the scripts load again by themselves

        async def served() -> bool:
            try:
                return (await shared.limiter.reserve("r3", [Charge(quota, 1)])).allowed
            except ServiceUnavailableError:
                return False

        await eventually(served)
        async with await shared.admission.acquire(ticket("b"), [P]):
            pass
    finally:
        await shared.aclose()


async def test_a_ticket_waiting_in_redis_fails_over_when_redis_stops(
    own_redis: RedisServer,
) -> None:
    shared = await open_with(own_redis)
    try:
        held = await shared.admission.acquire(ticket("r1"), [P])
        waiter = asyncio.create_task(shared.admission.acquire(ticket("r2", timeout_s=10), [P]))
        await until(lambda: shared.admission.depth("m") == 1)
        own_redis.signal(signal.SIGSTOP)
        started = time.monotonic()
        lease = await asyncio.wait_for(waiter, 5)  # a local slot: this process's pool is free
        assert time.monotonic() - started < BOUND
        assert lease.pool == P
        await lease.release()
        own_redis.signal(signal.SIGCONT)
        await held.release()
    finally:
        await shared.aclose()


async def test_starting_while_redis_is_down_serves_locally_until_it_comes_up(
    own_redis: RedisServer,
) -> None:
    own_redis.kill()
    shared = await open_with(own_redis)
    try:
        quota = Quota("k", 1, "requests")
        assert (await shared.limiter.reserve("r1", [Charge(quota, 1)])).allowed  # local
        own_redis.start()

        async def on_redis() -> bool:  # Redis's log is empty: r2 fits there, not locally
            return (await shared.limiter.reserve("r2", [Charge(quota, 1)])).allowed

        await eventually(on_redis)
    finally:
        await shared.aclose()
