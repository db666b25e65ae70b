"""The drain deadline's cut, in process: streams end with one error event and a clean end,
an unanswered request gets a 503, and every lease is released."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.paced import PacedUpstream
from tests.servers import ThreadedServer, serve_in_thread

MODEL = "m"
Start = Callable[..., ThreadedServer]


@pytest.fixture
def paced() -> Iterator[ThreadedServer]:
    with serve_in_thread(PacedUpstream(0.05)) as server:
        yield server


def cut(gateway: ThreadedServer) -> int:
    app: Any = gateway.server.config.app
    loop = gateway.loop
    assert loop is not None

    async def run() -> int:
        count: int = app.state.aigw.lifecycle.cut()
        return count

    return asyncio.run_coroutine_threadsafe(run(), loop).result(5)


def stream_events(url: str, out: list[list[bytes]], started: threading.Event) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body["max_tokens"] = 1000
    events: list[bytes] = []
    out.append(events)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():  # raises on a chunked body cut short
            if line.startswith("data: "):
                events.append(line[6:].encode())
                started.set()


def test_cut_ends_streams_with_an_error_event_and_releases_their_slots(
    paced: ThreadedServer, start_gateway: Start
) -> None:
    dep = {"id": "paced", "base_url": f"{paced.url}/v1", "model": "paced", "max_concurrency": 2}
    gateway = start_gateway({"models": [{"name": MODEL, "deployments": [dep]}]})
    out: list[list[bytes]] = []
    threads = []
    for _ in range(2):
        started = threading.Event()
        thread = threading.Thread(target=stream_events, args=(gateway.url, out, started))
        thread.start()
        assert started.wait(10)
        threads.append(thread)
    assert cut(gateway) == 2
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    for events in out:
        assert events[-1] != b"[DONE]"
        assert orjson.loads(events[-1])["error"]["code"] == "gateway_shutting_down"
        assert all(b"error" not in e for e in events[:-1])
    # Both slots are free again: two more requests are served without waiting.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        reply = httpx.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers={"x-aigw-queue-timeout": "0.5"}
        )
        assert reply.status_code == 200, reply.text
    # A non-streamed reply is accounted (its slot released) just after it is sent: the last
    # one may still be settling when the client has it.
    app: Any = gateway.server.config.app
    state = app.state.aigw.gateway.router.deployments["paced"].state
    deadline = time.monotonic() + 5
    while state.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.in_flight == 0
