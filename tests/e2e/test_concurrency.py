"""A deployment's max_concurrency is shared by two ``aigw serve`` processes through Redis.

The upstream (a slow simulated GPU, ~0.4 s a request) is wrapped in an ASGI middleware that
counts the requests it serves at once. A backlog of low-priority requests queues behind the two
slots; high-priority requests sent after it are served before most of it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.e2e.clients import MODEL, ConcurrencyProbe, Result, chat, config, probed_backend, until
from tests.e2e.procs import Processes, RedisServer, start_gateways

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

LOW_KEY = "sk-e2e-low-0123456789"
HIGH_KEY = "sk-e2e-high-0123456789"
PREFIX = "e2e-conc:"
SLOTS = 2
LOW_COUNT = 10
HIGH_COUNT = 4


async def test_max_concurrency_is_shared_and_high_priority_jumps_the_backlog(
    processes: Processes, redis_server: RedisServer, tmp_path: Path
) -> None:
    server, probe = probed_backend(profile="l4", time_scale=1.0)
    with server as backend:
        try:
            keys = [
                {"name": "low", "key": LOW_KEY, "priority": 0},
                {"name": "high", "key": HIGH_KEY, "priority": 10},
            ]
            cfg = config(
                redis_server.url,
                backend.url,
                keys,
                state={"key_prefix": PREFIX},
                dep={"max_concurrency": SLOTS},
                queue={"max_size": 100, "timeout_s": 30},
            )
            gateways = start_gateways(processes, cfg, 2)
            await run_backlog([g.url for g in gateways], redis_server.url, probe)
        finally:
            processes.close()  # the gateways go before the backend they call


async def run_backlog(urls: list[str], redis_url: str, probe: ConcurrencyProbe) -> None:
    done: list[str] = []
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    redis = Redis.from_url(redis_url)
    async with httpx.AsyncClient(timeout=40, limits=limits) as client:

        async def send(tag: str, key: str, url: str) -> Result:
            result = await chat(client, url, key, tag=tag, max_tokens=8, ignore_eos=True)
            done.append(tag)
            return result

        started = time.monotonic()
        lows = [
            asyncio.create_task(send(f"low{i}", LOW_KEY, urls[i % 2])) for i in range(LOW_COUNT)
        ]

        # Every low request is accounted for: finished, at the upstream, or queued in Redis.
        queue_key = f"{PREFIX}q:{MODEL}"
        queued = 0

        async def backlog_settled() -> bool:
            nonlocal queued
            queued = int(await redis.zcard(queue_key))
            return queued >= LOW_COUNT - SLOTS - 2 and queued + probe.now + len(done) == LOW_COUNT

        try:
            await until(backlog_settled, 10, f"{LOW_COUNT} low requests queued or running")
        finally:
            await redis.aclose()
        past_queue = LOW_COUNT - queued  # lows already given a slot when the highs arrive
        highs = [
            asyncio.create_task(send(f"high{i}", HIGH_KEY, urls[i % 2])) for i in range(HIGH_COUNT)
        ]
        results = await asyncio.gather(*lows, *highs)
        elapsed = time.monotonic() - started

    statuses = [(r.tag, r.status, r.code) for r in results if r.status != 200]
    last_high = max(i for i, tag in enumerate(done) if tag.startswith("high"))
    lows_first = sum(1 for tag in done[:last_high] if tag.startswith("low"))
    print(
        f"\nmax concurrency seen upstream: {probe.max} (limit {SLOTS}); "
        f"{len(results)} requests in {elapsed:.2f} s; {queued} lows queued when the highs came; "
        f"completion order: {' '.join(done)}"
    )
    assert not statuses, f"every request should queue and succeed: {statuses}"
    assert probe.max == SLOTS
    # Strict priority: the highs take the next slots; allow one round of slack.
    assert lows_first <= past_queue + SLOTS, (
        f"{lows_first} low requests finished before the last high one; "
        f"{past_queue} had a slot already"
    )
