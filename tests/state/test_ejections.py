"""The EjectionStore contract, run against memory and Redis; then the resilient wrapper."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from aigw.state import open_state
from aigw.state.ejections import EjectionStore, MemoryEjectionStore
from aigw.state.redis_ejections import RedisEjectionStore
from aigw.state.scripts import connect
from tests.state.conftest import RedisServer, state_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    def __init__(self, store: EjectionStore, clock: Clock | None) -> None:
        self.store = store
        self._clock = clock

    async def advance(self, seconds: float) -> None:
        if self._clock is not None:
            self._clock.now += seconds
        else:
            await asyncio.sleep(seconds)  # Redis expires by its own clock


@pytest.fixture(params=["memory", "redis"])
async def ejections(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        clock = Clock()
        yield Store(MemoryEjectionStore(clock), clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    config = state_config(server.url)
    client = connect(config)
    try:
        yield Store(RedisEjectionStore(client, config), None)
    finally:
        await client.aclose()


def ids() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"a-{tag}", f"b-{tag}"


async def test_an_ejection_is_seen_by_other_instances_until_it_ends(ejections: Store) -> None:
    a, b = ids()
    await ejections.store.eject(a, 0.3, owner="gw1")
    seen = await ejections.store.ejections([a, b], owner="gw2")
    assert set(seen) == {a} and 0.1 < seen[a] <= 0.3
    assert await ejections.store.ejections([a, b], owner="gw1") == {}  # not its own
    await ejections.advance(0.35)
    assert await ejections.store.ejections([a, b], owner="gw2") == {}


async def test_an_ejection_is_never_shortened(ejections: Store) -> None:
    a, _ = ids()
    await ejections.store.eject(a, 5.0, owner="gw1")
    await ejections.store.eject(a, 0.1, owner="gw3")
    seen = await ejections.store.ejections([a], owner="gw2")
    assert seen[a] > 4.0
    await ejections.store.eject(a, 10.0, owner="gw3")
    assert (await ejections.store.ejections([a], owner="gw2"))[a] > 9.0
    assert (await ejections.store.ejections([a], owner="gw3")) == {}  # gw3's now


async def test_a_cleared_ejection_is_seen_by_nobody(ejections: Store) -> None:
    a, b = ids()
    await ejections.store.eject(a, 5.0, owner="gw1")
    await ejections.store.eject(b, 5.0, owner="gw1")
    await ejections.store.clear(a)  # gw2's probe saw it come back
    assert set(await ejections.store.ejections([a, b], owner="gw3")) == {b}
    await ejections.store.clear(a)  # clearing what is not there is no error


async def test_nothing_asked_nothing_read(ejections: Store) -> None:
    assert await ejections.store.ejections([], owner="gw1") == {}


async def test_with_redis_down_ejections_stay_local_and_nothing_fails(
    own_redis: RedisServer,
) -> None:
    loop = asyncio.get_running_loop()
    shared = await open_state(state_config(own_redis.url), loop.time)
    try:
        assert shared.ejections is not None
        a, _ = ids()
        await shared.ejections.eject(a, 5.0, owner="gw1")
        own_redis.kill()
        await shared.ejections.eject(a, 5.0, owner="gw1")  # trips the shared health
        assert shared.redis is not None and shared.redis.down
        assert await shared.ejections.ejections([a], owner="gw2") != {}  # the local copy
    finally:
        await shared.aclose()


async def test_the_memory_backend_shares_nothing() -> None:
    shared = await open_state(
        state_config("redis://x").model_copy(update={"backend": "memory"}), Clock()
    )
    assert shared.ejections is None
