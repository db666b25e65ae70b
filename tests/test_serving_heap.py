"""`aigw serve` starts with the cyclic garbage collector off; serving turns it back on with the
start-up heap frozen (aigw.serving.settle_heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import uvicorn

from aigw.serving import GatewayServer, Lifecycle, settle_heap
from tests.servers import free_port


@pytest.fixture
def collector_restored() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


async def _ok(scope: dict[str, object], receive: object, send: object) -> None:
    raise AssertionError("no request is sent in these tests")


@pytest.mark.usefixtures("collector_restored")
async def test_serving_turns_the_collector_back_on_with_the_start_up_heap_frozen() -> None:
    config = uvicorn.Config(_ok, host="127.0.0.1", port=free_port(), lifespan="off")
    config.load()
    server = GatewayServer(config, Lifecycle(), drain_s=0.1, delay_s=0.0)
    server.lifespan = config.lifespan_class(config)  # as uvicorn's serve() does first
    gc.disable()  # as `aigw serve` does before its imports
    await server.startup()
    try:
        assert server.started
        assert gc.isenabled()
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
    finally:
        await server.shutdown()


@pytest.mark.usefixtures("collector_restored")
def test_settle_heap_leaves_a_process_whose_collector_is_on_as_it_was() -> None:
    assert gc.isenabled()
    settle_heap()  # tests, the demo and embedded servers never turned it off
    assert gc.get_freeze_count() == 0
