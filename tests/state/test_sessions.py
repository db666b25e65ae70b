"""The SessionStore contract, run against memory and Redis; then each one's own promises."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from aigw.state import SharedState, open_state
from aigw.state.redis_sessions import RedisSessionStore
from aigw.state.scripts import connect
from aigw.state.sessions import MemorySessionStore, SessionStore
from tests.state.conftest import RedisServer, state_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """One implementation, and how to let time pass for it (memory: the injected clock;
    Redis: its own clock, so the TTLs in these tests are short and real)."""

    def __init__(self, name: str, store: SessionStore, clock: Clock | None) -> None:
        self.name = name
        self.store = store
        self._clock = clock

    async def advance(self, seconds: float) -> None:
        if self._clock is not None:
            self._clock.now += seconds
        else:
            await asyncio.sleep(seconds)  # Redis expires by its own clock; nothing to wait on


@pytest.fixture(params=["memory", "redis"])
async def sessions(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        clock = Clock()
        yield Store("memory", MemorySessionStore(clock), clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    config = state_config(server.url)
    client = connect(config)
    try:
        yield Store("redis", RedisSessionStore(client, config), None)
    finally:
        await client.aclose()


def key() -> str:
    return f"4:chat:team-a:{uuid.uuid4().hex}"


async def test_an_unknown_session_has_no_binding(sessions: Store) -> None:
    assert await sessions.store.lookup(key(), 60) is None


async def test_a_binding_is_found_and_replaced(sessions: Store) -> None:
    k = key()
    await sessions.store.bind(k, "gpu-a", 60)
    assert await sessions.store.lookup(k, 60) == "gpu-a"
    await sessions.store.bind(k, "gpu-b", 60)
    assert await sessions.store.lookup(k, 60) == "gpu-b"
    assert await sessions.store.lookup(key(), 60) is None  # keys are independent


async def test_a_binding_expires_after_its_ttl(sessions: Store) -> None:
    k = key()
    await sessions.store.bind(k, "gpu-a", 0.2)
    await sessions.advance(0.3)
    assert await sessions.store.lookup(k, 0.2) is None


async def test_a_lookup_renews_the_ttl(sessions: Store) -> None:
    k = key()
    await sessions.store.bind(k, "gpu-a", 0.5)
    for _ in range(4):  # 0.8 s in all, past the TTL, with a lookup every 0.2 s
        await sessions.advance(0.2)
        assert await sessions.store.lookup(k, 0.5) == "gpu-a"
    await sessions.advance(0.6)
    assert await sessions.store.lookup(k, 0.5) is None


# --- memory ---------------------------------------------------------------------------------


async def test_memory_is_bounded_and_evicts_the_least_recently_used() -> None:
    store = MemorySessionStore(Clock(), max_sessions=3)
    for name in "abc":
        await store.bind(name, f"d-{name}", 60)
    assert await store.lookup("a", 60) == "d-a"  # a is now the most recently used
    await store.bind("d", "d-d", 60)
    assert len(store) == 3
    assert await store.lookup("b", 60) is None  # b was the least recently used
    assert [await store.lookup(n, 60) for n in "acd"] == ["d-a", "d-c", "d-d"]


# --- Redis ----------------------------------------------------------------------------------


async def test_redis_lookup_sets_the_ttl_in_the_same_round_trip(redis_server: RedisServer) -> None:
    config = state_config(redis_server.url)
    client = connect(config)
    try:
        store = RedisSessionStore(client, config)
        await store.bind("s", "gpu-a", 30)
        redis_key = f"{config.key_prefix}sess:s"
        assert 29_000 < await client.pttl(redis_key) <= 30_000
        assert await store.lookup("s", 1800) == "gpu-a"
        assert 1_799_000 < await client.pttl(redis_key) <= 1_800_000  # renewed by GETEX
    finally:
        await client.aclose()


async def test_sessions_fall_back_to_memory_while_redis_is_stopped(own_redis: RedisServer) -> None:
    """Never a 503 for a routing preference, even with on_redis_down: reject."""
    config = state_config(own_redis.url, timeout_s=0.3, on_redis_down="reject")
    shared: SharedState = await open_state(config, asyncio.get_running_loop().time)
    try:
        await shared.sessions.bind("s", "gpu-a", 60)
        assert await shared.sessions.lookup("s", 60) == "gpu-a"
        own_redis.signal(signal.SIGSTOP)
        started = time.monotonic()
        assert await shared.sessions.lookup("s", 60) is None  # Redis's binding is out of reach
        assert time.monotonic() - started < 1.3
        await shared.sessions.bind("s", "gpu-b", 60)  # kept in this process meanwhile
        started = time.monotonic()
        assert await shared.sessions.lookup("s", 60) == "gpu-b"
        assert time.monotonic() - started < 0.05  # the outage is known: Redis is skipped
        assert shared.redis is not None and shared.redis.down
    finally:
        own_redis.signal(signal.SIGCONT)
        await shared.aclose()
