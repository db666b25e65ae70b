"""Graceful shutdown of ``aigw serve``: SIGTERM under streaming load.

The order under test: ``/readyz`` answers 503 ``draining`` first; the listener closes after
``server.shutdown_delay_s``; streams that end within ``server.drain_seconds`` end normally;
longer ones end with one ``gateway_shutting_down`` error event and a clean end of the chunked
body (no ``[DONE]``); no client sees a connection reset; the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.procs import GatewayProcess, Processes
from tests.fakes.paced import PacedUpstream
from tests.servers import ThreadedServer, serve_in_thread

pytestmark = pytest.mark.e2e

MODEL = "m"
TICK_S = 0.1
DRAIN_S = 2.0
DELAY_S = 0.6
SHORT_TOKENS = 8  # ~0.8 s: ends within the drain
LONG_TOKENS = 200  # ~20 s: cut at the drain deadline


@pytest.fixture
def paced() -> Iterator[ThreadedServer]:
    with serve_in_thread(PacedUpstream(TICK_S)) as server:
        yield server


def gateway_config(upstream: ThreadedServer) -> dict[str, Any]:
    return {
        "server": {"drain_seconds": DRAIN_S, "shutdown_delay_s": DELAY_S},
        "models": [
            {
                "name": MODEL,
                "deployments": [
                    {
                        "id": "paced",
                        "base_url": f"{upstream.url}/v1",
                        "model": "paced",
                        "max_concurrency": 64,  # so that every stream holds a lease
                    }
                ],
            }
        ],
    }


@dataclass(slots=True)
class StreamResult:
    events: list[bytes] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float = 0.0
    transport_error: str | None = None
    status: int = 0
    deployment: str = ""  # x-aigw-deployment: the deployment that served it

    @property
    def done(self) -> bool:
        return self.events[-1:] == [b"[DONE]"]

    @property
    def last_error(self) -> dict[str, Any] | None:
        if not self.events or self.events[-1] == b"[DONE]":
            return None
        data = orjson.loads(self.events[-1])
        error: dict[str, Any] | None = data.get("error") if isinstance(data, dict) else None
        return error


async def stream(client: httpx.AsyncClient, url: str, tokens: int) -> StreamResult:
    result = StreamResult()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body["max_tokens"] = tokens
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            result.status = response.status_code
            result.deployment = response.headers.get("x-aigw-deployment", "")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    result.events.append(line[6:].encode())
                    result.first.set()
    except httpx.TransportError as exc:  # a reset, or a chunked body cut short
        result.transport_error = repr(exc)
    finally:
        result.ended_at = time.monotonic()
        result.first.set()
    return result


async def poll_readyz(url: str, until: float) -> list[int | str]:
    """Every /readyz answer (or "refused") until ``until`` (monotonic)."""
    seen: list[int | str] = []
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < until:
            try:
                response = await client.get(f"{url}/readyz")
                seen.append(response.status_code)
                if response.status_code == 503:
                    assert response.json() == {"status": "draining"}
            except httpx.TransportError:
                seen.append("refused")
            await asyncio.sleep(0.05)
    return seen


@pytest.mark.timeout(60)
async def test_sigterm_drains_streams_then_exits_zero(
    processes: Processes, paced: ThreadedServer
) -> None:
    gateway = GatewayProcess(processes, gateway_config(paced), "gw")
    gateway.wait_ready()
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        short = [asyncio.create_task(stream(client, gateway.url, SHORT_TOKENS)) for _ in range(6)]
        long = [asyncio.create_task(stream(client, gateway.url, LONG_TOKENS)) for _ in range(6)]
        await asyncio.sleep(0.3)  # every stream has its first events (ticks of 0.1 s)
        gateway.proc.signal(signal.SIGTERM)
        signalled = time.monotonic()
        readyz = asyncio.create_task(poll_readyz(gateway.url, signalled + DELAY_S + 0.4))
        shorts = await asyncio.gather(*short)
        longs = await asyncio.gather(*long)
        seen = await readyz
    exit_status = await asyncio.to_thread(gateway.proc.popen.wait, 15)
    log = gateway.proc.log_text()

    assert all(r.transport_error is None for r in [*shorts, *longs]), [
        r.transport_error for r in [*shorts, *longs]
    ]
    assert all(r.status == 200 and r.done and r.last_error is None for r in shorts)
    for r in longs:
        assert r.status == 200 and not r.done
        assert r.last_error is not None and r.last_error["code"] == "gateway_shutting_down", (
            r.events[-2:]
        )
        assert len(r.events) > 3  # they streamed until cut
        # Cut at the deadline: the delay, then drain_seconds (plus the server's 0.1 s ticks).
        assert DELAY_S + DRAIN_S - 0.3 <= r.ended_at - signalled <= DELAY_S + DRAIN_S + 1.5
    assert seen and seen[0] == 503, seen  # readyz flipped first, while still listening
    assert 200 not in seen, seen
    assert exit_status == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert paced.server.config.app.served["/v1/chat/completions"] == 12


@pytest.mark.timeout(60)
async def test_an_idle_gateway_exits_zero_promptly_on_sigint(
    processes: Processes, paced: ThreadedServer
) -> None:
    gateway = GatewayProcess(processes, gateway_config(paced), "gw")
    gateway.wait_ready()
    started = time.monotonic()
    gateway.proc.signal(signal.SIGINT)
    exit_status = await asyncio.to_thread(gateway.proc.popen.wait, 15)
    assert exit_status == 0, gateway.proc.log_tail()
    assert time.monotonic() - started < DELAY_S + 2.0
