"""What only the Redis admission queue does: instances share slots, leases expire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from aigw.config import StateConfig
from aigw.errors import RateLimitError
from aigw.state.base import Charge, Pool, Quota
from aigw.state.redis import RedisAdmissionQueue, RedisRateLimiter
from aigw.state.scripts import connect, lua_source
from tests.state.conftest import RedisServer, state_config, ticket, until

P = Pool("p", 1)

Instances = Callable[..., Awaitable[RedisAdmissionQueue]]


@pytest.fixture
async def config(redis_server: RedisServer) -> StateConfig:
    return state_config(redis_server.url)


@pytest.fixture
async def client(config: StateConfig) -> AsyncIterator[Redis]:
    redis = connect(config)
    yield redis
    await redis.aclose()


@pytest.fixture
async def instance(client: Redis, config: StateConfig) -> AsyncIterator[Instances]:
    """Start another gateway instance's admission queue on the same Redis."""
    started: list[RedisAdmissionQueue] = []

    async def start(name: str) -> RedisAdmissionQueue:
        queue = RedisAdmissionQueue(client, config, name)
        await queue.start()
        started.append(queue)
        return queue

    yield start
    for queue in started:
        await queue.close()


async def test_instances_share_slots_and_wake_each_others_waiters(instance: Instances) -> None:
    a, b = await instance("a"), await instance("b")
    held = await a.acquire(ticket("r1"), [P])
    with pytest.raises(RateLimitError):
        await b.acquire(ticket("r2", max_queue=0), [P])  # a's slot is b's too
    waiter = asyncio.create_task(b.acquire(ticket("r3"), [P]))
    await until(lambda: b.depth("m") == 1)
    await held.release()  # a's release wakes b's waiter
    lease = await waiter
    waiter_a = asyncio.create_task(a.acquire(ticket("r4"), [P]))
    await until(lambda: a.depth("m") == 1)
    await lease.release()  # and the other way round
    await (await waiter_a).release()


async def test_a_dead_instances_slot_returns_after_the_lease_ttl(instance: Instances) -> None:
    dead = await instance("dead")
    await dead.acquire(ticket("r1"), [P])  # never released...
    await dead.close()  # ...and nobody renews it any more
    alive = await instance("alive")
    started = time.monotonic()
    lease = await alive.acquire(ticket("r2", timeout_s=5), [P])
    waited = time.monotonic() - started
    # lease_ttl_s = 1: the lease expires 0.75 s after its last renewal and is reaped within
    # 0.25 s more, so it is back within the TTL (plus scheduling slack on a busy machine).
    assert 0.4 < waited < 1.0 + 0.2
    await lease.release()


async def test_a_held_lease_outlives_its_ttl_while_its_instance_renews_it(
    instance: Instances,
) -> None:
    a, b = await instance("a"), await instance("b")
    held = await a.acquire(ticket("r1"), [P])
    await asyncio.sleep(1.5)  # lease_ttl_s is 1
    with pytest.raises(RateLimitError):
        await b.acquire(ticket("r2", max_queue=0), [P])
    await held.release()


async def test_a_dead_instances_ticket_leaves_the_queue_after_its_deadline(
    client: Redis, config: StateConfig, instance: Instances
) -> None:
    alive = await instance("alive")
    held = await alive.acquire(ticket("r1"), [P])
    # A ticket queued by an instance that died at once: nobody will cancel it.
    ghost: list[str | int] = [config.key_prefix, 1_000_000, "m", "ghost", "1000000000", 1]
    ghost += ["ghost:1", "ghost", 100_000, "", 0, P.id, P.size]
    script = lua_source("admission_acquire", prelude="admission_lib")
    assert (await client.eval(script, 0, *ghost))[0] == "queued"
    with pytest.raises(RateLimitError) as refused:
        await alive.acquire(ticket("r2", max_queue=1), [P])
    assert refused.value.code == "queue_full"
    await asyncio.sleep(2.2)  # its deadline (0.1 s) and the grace after it (2 s)
    waiter = asyncio.create_task(alive.acquire(ticket("r3", max_queue=1), [P]))
    await until(lambda: alive.depth("m") == 1)
    await held.release()
    await (await waiter).release()


async def test_scripts_are_loaded_again_after_redis_forgets_them(
    client: Redis, config: StateConfig, instance: Instances
) -> None:
    queue = await instance("a")
    limiter = RedisRateLimiter(client, config)
    await limiter.load()
    await client.script_flush()
    assert (await limiter.reserve("r1", [Charge(Quota("k", 1, "requests"), 1)])).allowed
    await (await queue.acquire(ticket("r1"), [P])).release()


async def test_every_key_starts_with_the_prefix(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url.replace("/0", "/3"))
    redis = connect(config)
    try:
        await redis.flushdb()
        queue = RedisAdmissionQueue(redis, config, "a")
        await queue.start()
        limiter = RedisRateLimiter(redis, config)
        assert (await limiter.reserve("r1", [Charge(Quota("k", 5, "tokens"), 2)])).allowed
        held = await queue.acquire(ticket("r1", tenant_pool=Pool("key:a", 3)), [P])
        waiter = asyncio.create_task(queue.acquire(ticket("r2"), [P]))
        await until(lambda: queue.depth("m") == 1)
        keys = [str(key) for key in await redis.keys("*")]  # str: decode_responses
        assert keys and all(key.startswith(config.key_prefix) for key in keys)
        await held.release()
        await (await waiter).release()
        await queue.close()
    finally:
        await redis.aclose()


def deaf(queue: RedisAdmissionQueue) -> None:
    """Grants published to ``queue`` are lost on the way (as when its channel drops)."""
    queue._on_grant = lambda data: None  # type: ignore[method-assign]


async def test_a_grant_that_never_arrives_passes_on_when_its_ticket_is_cancelled(
    instance: Instances,
) -> None:
    a, b = await instance("a"), await instance("b")
    deaf(b)
    held = await a.acquire(ticket("r1"), [P])
    lost = asyncio.create_task(b.acquire(ticket("r2"), [P]))
    await until(lambda: b.depth("m") == 1)
    waiter = asyncio.create_task(a.acquire(ticket("r3"), [P]))
    await until(lambda: a.depth("m") == 2)
    await held.release()  # the slot is r2's in Redis, but b never hears of it
    lost.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lost
    await (await asyncio.wait_for(waiter, 5)).release()


async def test_a_grant_that_never_arrives_is_used_at_the_deadline(instance: Instances) -> None:
    a, b = await instance("a"), await instance("b")
    deaf(b)
    held = await a.acquire(ticket("r1"), [P])
    lost = asyncio.create_task(b.acquire(ticket("r2", timeout_s=0.5), [P]))
    await until(lambda: b.depth("m") == 1)
    await held.release()
    lease = await lost  # no queue_timeout: the cancel script hands the grant over
    assert lease.pool == P and lease.waited_s >= 0.4
    await lease.release()
