"""Routing over real sockets: engine metrics steer traffic; operators can see and drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import deployment
from tests.servers import ThreadedServer

Start = Callable[..., ThreadedServer]
MODEL = "m"
ADMIN_KEY = "admin-s3cret"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Hello there"}]


def stats(backend: ThreadedServer) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{backend.url}/sim/stats").json()
    return result


def wait_until(predicate: Callable[[], bool], deadline: float = 10.0) -> None:
    """Poll a condition owned by another thread/process, with a bounded deadline."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@asynccontextmanager
async def outside_load(backend: ThreadedServer, count: int) -> AsyncIterator[None]:
    """Load the gateway did not send: long generations straight to the engine, cancelled
    (client disconnect, so the engine aborts them) when the block ends."""
    body = {"model": "x", "messages": HELLO, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> None:
            async with client.stream(
                "POST", f"{backend.url}/v1/chat/completions", json=body
            ) as response:
                async for _ in response.aiter_bytes():
                    pass

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("policy", ["round-robin", "gpu-aware"])
async def test_engine_overloaded_by_outside_load_gets_less_traffic(
    policy: str, start_backend: Start, start_gateway: Start
) -> None:
    # A small engine (2 sequences at a time) running real-time; two idle fast ones beside it.
    busy = start_backend(time_scale=1.0, max_num_seqs=2, seed=1)
    idle = [start_backend(seed=2), start_backend(seed=3)]
    deployments = [
        deployment(b.url, f"gpu-{i}", metrics_url=f"{b.url}/metrics")
        for i, b in enumerate([busy, *idle])
    ]
    gateway = start_gateway(
        {
            "models": [{"name": MODEL, "policy": policy, "deployments": deployments}],
            "routing": {"scrape_interval": 0.1},
            "auth": {"admin_key": ADMIN_KEY},
        }
    )
    async with outside_load(busy, 8):
        # Wait until the gateway has scraped the busy engine's queue.
        def queue_seen() -> bool:
            data = httpx.get(f"{gateway.url}/admin/deployments", headers=ADMIN).json()["data"]
            engine = data[0]["engine"]
            return engine is not None and engine["waiting"] >= 4

        await asyncio.to_thread(wait_until, queue_seen)
        before = stats(busy)["received"]
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=0.5)) as client:
            for _ in range(30):
                try:
                    await client.post(
                        f"{gateway.url}/v1/chat/completions",
                        json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
                    )
                except httpx.ReadTimeout:
                    pass  # stuck in the busy engine's queue; counted by the backend all the same
        to_busy = stats(busy)["received"] - before
        to_idle = sum(stats(b)["received"] for b in idle)
        assert to_busy + to_idle == 30
        if policy == "round-robin":
            assert to_busy == 10  # blind to the engine's own queue
        else:
            assert to_busy <= 2


def test_admin_shows_signals_and_drains(start_backend: Start, start_gateway: Start) -> None:
    a, b = start_backend(seed=1), start_backend(seed=2)
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "policy": "round-robin",
                    "deployments": [deployment(a.url, "a"), deployment(b.url, "b")],
                }
            ],
            "auth": {"admin_key": "s3cret"},
        }
    )
    admin = f"{gateway.url}/admin/deployments"
    denied = httpx.get(admin)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
    auth = {"authorization": "Bearer s3cret"}
    drained = httpx.post(f"{admin}/a/drain", headers=auth, json={})
    assert drained.status_code == 200 and drained.json()["draining"] is True
    for _ in range(4):
        reply = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "max_tokens": 2, "stream": True},
        )
        assert reply.headers["x-aigw-deployment"] == "b"
    data = {d["id"]: d for d in httpx.get(admin, headers=auth).json()["data"]}
    assert data["a"]["requests"] == 0 and data["b"]["requests"] == 4
    assert data["b"]["ttft_ewma_s"] is not None and data["b"]["in_flight"] == 0
    assert data["b"]["last_scores"] or data["a"]["draining"]
    assert httpx.post(f"{admin}/a/undrain", headers=auth, json={}).status_code == 200
    served = {
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
        ).headers["x-aigw-deployment"]
        for _ in range(4)
    }
    assert served == {"a", "b"}
    assert httpx.post(f"{admin}/nope/drain", headers=auth, json={}).status_code == 404


async def test_auto_spills_to_cloud_when_gpu_pool_saturates_and_comes_back(
    start_backend: Start, start_gateway: Start
) -> None:
    gpu = start_backend(time_scale=1.0, max_num_seqs=2, seed=1)
    cloud = start_backend(seed=2)  # stands in for a provider API: no metrics, billed per token
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "policy": "auto",
                    "slo_ttft_ms": 1000,
                    "deployments": [
                        deployment(gpu.url, "gpu", metrics_url=f"{gpu.url}/metrics"),
                        deployment(
                            cloud.url,
                            "cloud",
                            kind="cloud",
                            cost={"input_per_mtok": 1, "output_per_mtok": 4},
                        ),
                    ],
                }
            ],
            "routing": {"scrape_interval": 0.1},
            "auth": {"admin_key": ADMIN_KEY},
        }
    )

    def served_by() -> str:
        reply = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "max_tokens": 2, "stream": True},
            timeout=30,
        )
        return reply.headers["x-aigw-deployment"]

    def gpu_signals() -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{gateway.url}/admin/deployments", headers=ADMIN).json()[
            "data"
        ][0]
        return data

    def engine_waiting() -> float:
        engine = gpu_signals()["engine"]
        return -1.0 if engine is None else float(engine["waiting"])

    def saturated() -> bool:
        # The queue is seen, and the drain rate measured from the engine's finished-requests
        # counter has caught up with it (the quick requests before the load made it high).
        signals = gpu_signals()
        engine, rate = signals["engine"], signals["drain_rate_rps"]
        return engine is not None and engine["waiting"] >= 8 and rate is not None and rate < 1.0

    await asyncio.to_thread(wait_until, lambda: engine_waiting() == 0)
    assert {await asyncio.to_thread(served_by) for _ in range(3)} == {"gpu"}  # within SLO: no spill
    async with outside_load(gpu, 12):
        await asyncio.to_thread(wait_until, saturated)
        assert {await asyncio.to_thread(served_by) for _ in range(3)} == {"cloud"}
    # The outside load is gone (its clients disconnected): once scraped, back to the GPU.
    await asyncio.to_thread(wait_until, lambda: engine_waiting() == 0)
    assert await asyncio.to_thread(served_by) == "gpu"
