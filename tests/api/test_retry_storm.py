"""A sick fleet does not become a retry storm: on real sockets, counted from ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.conftest import deployment
from tests.servers import ThreadedServer, free_port

MODEL = "m"
Start = Callable[..., ThreadedServer]


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            total += float(line.rsplit(" ", 1)[1])
    return total


async def load(url: str, requests: int, concurrency: int) -> list[int]:
    statuses: list[int] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                response = await client.post("/v1/chat/completions", json=body)
                statuses.append(response.status_code)

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return statuses


def test_a_half_failing_deployment_costs_at_most_20_percent_more_attempts(
    start_backend: Start, start_gateway: Start
) -> None:
    """Chaos test 2 of the uptime issue: one of two deployments fails half its requests
    (outlier detection is kept from ejecting it, so only the retry budget bounds retries)."""
    flaky = start_backend(faults={"error_rate": 0.5})
    good = start_backend()
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "policy": "round-robin",
                    "deployments": [deployment(flaky.url, "flaky"), deployment(good.url, "good")],
                }
            ],
            "health": {"consecutive_failures": 1000},
            "retry": {"budget_ratio": 0.2, "budget_min_concurrent": 3},
        }
    )
    requests = 400
    statuses = asyncio.run(load(gateway.url, requests, concurrency=40))
    assert len(statuses) == requests
    text = httpx.get(f"{gateway.url}/metrics").text
    attempts = metric_sum(text, "aigw_upstream_attempts_total")
    served = metric_sum(text, "aigw_requests_total")
    refused = metric_sum(text, "aigw_retry_budget_exhausted_total")
    assert served == requests
    assert attempts <= 1.2 * requests + 3
    assert refused > 0  # the budget, not luck, kept it there: those requests got the 500
    assert statuses.count(500) == refused


def test_every_backend_down_is_a_quick_503_with_retry_after(start_gateway: Start) -> None:
    """Chaos test 3: nothing listens behind any deployment. Once outlier detection ejected
    them, each request makes one try (panic mode) and gets 503 with Retry-After."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "deployments": [deployment(url, f"dead-{i}") for i, url in enumerate(dead)],
                }
            ],
            "health": {"consecutive_failures": 2, "max_ejection_seconds": 10},
        }
    )
    requests = 60
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        responses = [client.post("/v1/chat/completions", json=body) for _ in range(requests)]
    assert time.monotonic() - started < 5.0
    last = responses[-1]
    assert last.status_code == 503
    assert last.json()["error"]["code"] == "no_healthy_deployment"
    assert 1 <= int(last.headers["retry-after"]) <= 10
    attempts = metric_sum(httpx.get(f"{gateway.url}/metrics").text, "aigw_upstream_attempts_total")
    assert attempts <= requests + 6  # retries only until all three were ejected
