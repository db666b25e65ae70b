"""Chaos: drain a deployment, then SIGTERM the gateway under streaming load, state in Redis
(issue 10, chaos test 6): 0 connection resets, 0 requests lost, no lease left behind.

The memory-state version of the SIGTERM half is in test_shutdown.py; its helpers are reused.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.e2e.procs import GatewayProcess, Processes, RedisServer
from tests.e2e.test_shutdown import MODEL, StreamResult, poll_readyz, stream
from tests.fakes.paced import PacedUpstream
from tests.servers import ThreadedServer, serve_in_thread

pytestmark = pytest.mark.e2e

ADMIN_KEY = "sk-admin-chaos-shutdown-0123456789"
PREFIX = "chaos6:"
TICK_S = 0.1
DRAIN_S = 2.0
DELAY_S = 0.8
LEASE_TTL_S = 30.0  # far longer than the test: a lease gone after exit was released, not expired
FIRST_TOKENS = 12  # ~1.2 s: in flight on the drained deployment, ends before the SIGTERM
WORKER_TOKENS = 4  # ~0.4 s: the workers' streams, each ends within the drain
MEDIUM_TOKENS = 10  # ~1 s: in flight at the SIGTERM, ends within the drain
LONG_TOKENS = 200  # ~20 s: cut at the drain deadline
WORKERS = 3
WORKER_MAX_STREAMS = 30  # per worker: the load loop is bounded in count as well as time


@pytest.fixture
def upstream() -> PacedUpstream:
    return PacedUpstream(TICK_S)


@pytest.fixture
def paced(upstream: PacedUpstream) -> Iterator[ThreadedServer]:
    with serve_in_thread(upstream) as server:
        yield server


def gateway_config(upstream: ThreadedServer, redis_url: str) -> dict[str, Any]:
    def dep(id: str) -> dict[str, Any]:
        # max_concurrency: every stream holds an admission lease in Redis.
        return {"id": id, "base_url": f"{upstream.url}/v1", "model": "paced", "max_concurrency": 32}

    return {
        "server": {"drain_seconds": DRAIN_S, "shutdown_delay_s": DELAY_S},
        "auth": {"admin_key": ADMIN_KEY},
        "state": {
            "backend": "redis",
            "url": redis_url,
            "key_prefix": PREFIX,
            "lease_ttl_s": LEASE_TTL_S,
        },
        # round-robin: the first streams land on both deployments, whatever their latency.
        "models": [{"name": MODEL, "policy": "round-robin", "deployments": [dep("a"), dep("b")]}],
    }


async def slots(redis: Redis) -> dict[str, int]:
    """Held admission slots per pool: ``slots:<pool>`` ZSETs (aigw/state/lua/admission_lib)."""
    keys = [k async for k in redis.scan_iter(match=f"{PREFIX}slots:*")]
    return {k.removeprefix(f"{PREFIX}slots:"): int(await redis.zcard(k)) for k in sorted(keys)}


async def worker(
    client: httpx.AsyncClient, url: str, stop_at: list[float], out: list[StreamResult]
) -> None:
    """Stream after stream until ``stop_at[0]`` (monotonic) or the count bound."""
    for _ in range(WORKER_MAX_STREAMS):
        if time.monotonic() >= stop_at[0]:
            return
        out.append(await stream(client, url, WORKER_TOKENS))


def assert_clean(results: list[StreamResult], deployment: str | None = None) -> None:
    """Served in full: 200, ``[DONE]``, no error event, no transport error."""
    for r in results:
        assert r.transport_error is None, r.transport_error
        assert r.status == 200 and r.done, (r.status, r.events[-2:])
        assert not any(b'"error"' in e for e in r.events), r.events
        if deployment is not None:
            assert r.deployment == deployment, r.deployment


async def non_streamed(client: httpx.AsyncClient, url: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return await client.post(f"{url}/v1/chat/completions", json=body)


@pytest.mark.timeout(60)
async def test_drain_then_sigterm_under_streaming_load_with_redis_state(
    processes: Processes, redis_server: RedisServer, upstream: PacedUpstream, paced: ThreadedServer
) -> None:
    gateway = GatewayProcess(processes, gateway_config(paced, redis_server.url), "gw")
    gateway.wait_ready()
    url = gateway.url
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    stop_at = [float("inf")]
    worked: list[StreamResult] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        # 1. Streams on both deployments, each holding a lease in Redis.
        first = [asyncio.create_task(stream(client, url, FIRST_TOKENS)) for _ in range(6)]
        await asyncio.sleep(0.3)
        held_before_drain = await slots(redis)
        # 2. Drain `a`: its streams go on, new ones (the workers') go to `b`.
        admin = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
        drained = await client.post(f"{url}/admin/deployments/a/drain", headers=admin)
        assert drained.status_code == 200, drained.text
        workers = [
            asyncio.create_task(worker(client, url, stop_at, worked)) for _ in range(WORKERS)
        ]
        firsts = await asyncio.gather(*first)
        held_after_drained_ended = await slots(redis)
        # 3. Streams in flight at the SIGTERM: some end within the drain, some are cut.
        medium = [asyncio.create_task(stream(client, url, MEDIUM_TOKENS)) for _ in range(2)]
        long = [asyncio.create_task(stream(client, url, LONG_TOKENS)) for _ in range(4)]
        await asyncio.sleep(0.3)
        held_at_sigterm = await slots(redis)
        gateway.proc.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The workers stop sending a little before the listener closes.
        stop_at[0] = signalled + DELAY_S - 0.3
        readyz = asyncio.create_task(poll_readyz(url, signalled + DELAY_S + 0.4))
        # 4. Sent during shutdown_delay_s (readyz already 503): still served.
        await asyncio.sleep(DELAY_S / 2)
        late = [asyncio.create_task(stream(client, url, 8)) for _ in range(3)]
        late_plain = await non_streamed(client, url)
        mediums = await asyncio.gather(*medium)
        longs = await asyncio.gather(*long)
        lates = await asyncio.gather(*late)
        await asyncio.gather(*workers)
        seen = await readyz
    exit_status = await asyncio.to_thread(gateway.proc.popen.wait, 15)
    exited = time.monotonic()
    # Right after exit, within the lease TTL: what the gateway left in Redis.
    left = await slots(redis)
    queues = [k async for k in redis.scan_iter(match=f"{PREFIX}q*:*")]
    waiting = [k async for k in redis.scan_iter(match=f"{PREFIX}pq:*")]
    checked_after_s = time.monotonic() - exited
    await redis.aclose()
    log = gateway.proc.log_text()

    print(
        f"\nslots held: before drain {held_before_drain}, after a's streams ended "
        f"{held_after_drained_ended}, at SIGTERM {held_at_sigterm}, after exit {left} "
        f"(checked {checked_after_s:.3f} s after exit; lease ttl {LEASE_TTL_S:g} s); "
        f"worker streams {len(worked)}; readyz {seen[:3]}...; "
        f"long streams cut {[round(r.ended_at - signalled, 2) for r in longs]} s after SIGTERM"
    )
    everything = [*firsts, *worked, *mediums, *longs, *lates]
    # No client saw a reset or a chunked body cut short.
    assert [r.transport_error for r in everything if r.transport_error] == []
    # The drain: a's streams finished normally; every stream after it went to b.
    on_a = [r for r in firsts if r.deployment == "a"]
    assert len(on_a) == 3 and held_before_drain == {"a": 3, "b": 3}, held_before_drain
    assert_clean(firsts)
    assert held_after_drained_ended.get("a", 0) == 0, held_after_drained_ended
    assert len(worked) >= WORKERS * 3  # load ran through the drain and into the shutdown
    assert_clean(worked, "b")
    assert held_at_sigterm.get("b", 0) >= 6, held_at_sigterm  # medium + long, and workers'
    # The SIGTERM: readyz 503 first; what ends within the drain ends with [DONE]...
    assert seen and seen[0] == 503 and 200 not in seen, seen
    assert_clean(mediums, "b")
    assert_clean(lates, "b")
    assert late_plain.status_code == 200, late_plain.text
    # ...what does not ends with exactly one gateway_shutting_down event and a clean end.
    for r in longs:
        assert r.status == 200 and not r.done and r.deployment == "b"
        assert r.last_error is not None and r.last_error["code"] == "gateway_shutting_down"
        assert sum(b'"error"' in e for e in r.events) == 1, r.events[-3:]
        assert DELAY_S + DRAIN_S - 0.3 <= r.ended_at - signalled <= DELAY_S + DRAIN_S + 1.5
    # 0 lost: the upstream saw each request once (no retry, none dropped on the way).
    sent = len(everything) + 1
    assert upstream.served["/v1/chat/completions"] == sent
    assert exit_status == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # No lease, queued ticket or waiter left: released on exit, not left to expire.
    assert left == {} and queues == [] and waiting == [], (left, queues, waiting)
    assert checked_after_s < LEASE_TTL_S / 10
