"""What only the Redis rate limiter promises: one small HASH per quota that goes away when
idle, and settling across instances (any instance may settle another's reservation)."""

from __future__ import annotations

import asyncio

from aigw.state.base import Charge, Quota
from aigw.state.redis import RedisRateLimiter
from aigw.state.scripts import connect
from aigw.state.windows import SPAN
from tests.state.conftest import RedisServer, state_config


async def test_a_quota_is_one_hash_of_at_most_61_buckets_that_expires(
    redis_server: RedisServer,
) -> None:
    config = state_config(redis_server.url)
    client = connect(config)
    try:
        limiter = RedisRateLimiter(client, config)
        q = Quota("k", 10**9, "requests", window_s=0.3)  # 5 ms buckets
        for i in range(400):  # ~2 windows: many buckets come and go
            assert (await limiter.reserve(f"r{i}", [Charge(q, 1)])).allowed
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        keys = await client.keys(f"{config.key_prefix}*")
        assert keys == [f"{config.key_prefix}rlw:k"]
        fields = await client.hkeys(keys[0])
        assert len(fields) <= SPAN + 2  # the buckets, the head and the sum
        assert 0 < await client.pttl(keys[0]) <= 0.3 * 1000 * SPAN / 60 + 1
        await asyncio.sleep(0.35)
        assert await client.exists(keys[0]) == 0
    finally:
        await client.aclose()


async def test_another_instance_settles_a_reservation(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    client = connect(config)
    try:
        first, second = RedisRateLimiter(client, config), RedisRateLimiter(client, config)
        q = Quota("tpm", 100, "tokens")
        decision = await first.reserve("r1", [Charge(q, 80)])
        await second.reconcile(decision.stamp, [Charge(q, 80)], 30)
        assert (await first.reserve("p", [Charge(q, 0)])).statuses[0].remaining == 70
        await second.refund(decision.stamp, [Charge(q, 30)])
        assert (await first.reserve("p", [Charge(q, 0)])).statuses[0].remaining == 100
    finally:
        await client.aclose()
