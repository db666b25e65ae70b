"""GET /metrics after known traffic: the values, not only the names (real sockets, real SDK)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import deployment
from tests.servers import ThreadedServer, free_port

MODEL = "chat"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
KEY = "sk-team-a-0123456789"
ADMIN = "admin-0123456789"
Start = Callable[..., ThreadedServer]


def samples(gateway: ThreadedServer, headers: dict[str, str] | None = None) -> dict[Any, float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = httpx.get(f"{gateway.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    found: dict[Any, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def settled(gateway: ThreadedServer, name: str, expected: float, **labels: str) -> dict[Any, float]:
    """/metrics once ``name{labels}`` reaches ``expected``: a request is recorded just after
    its response is sent, so the client may ask a moment before (bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        found = samples(gateway)
        if value(found, name, **labels) == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


@pytest.fixture
def gateway(start_backend: Start, start_gateway: Start) -> ThreadedServer:
    backend = start_backend(seed=3)
    dead = f"http://127.0.0.1:{free_port()}"
    return start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "policy": "round-robin",
                    "deployments": [
                        deployment(backend.url, "gpu-a", metrics_url=f"{backend.url}/metrics"),
                        deployment(dead, "dead"),
                    ],
                }
            ],
            "auth": {"keys": [{"name": "team-a", "key": KEY, "rpm": 5}]},
        }
    )


def test_metrics_count_known_traffic(gateway: ThreadedServer) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)
    prompt_tokens = completion_tokens = 0
    with client:
        for _ in range(3):
            reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
            assert reply.usage is not None
            prompt_tokens += reply.usage.prompt_tokens
            completion_tokens += reply.usage.completion_tokens
        for _ in range(2):
            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    messages=HELLO,
                    max_tokens=5,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
            assert usage is not None
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model-" + "x" * 40, messages=HELLO)
        with pytest.raises(openai.RateLimitError):  # the key's 5 rpm are spent
            client.chat.completions.create(model=MODEL, messages=HELLO)

    found = settled(
        gateway, "aigw_requests_total", 5, model=MODEL, deployment="gpu-a", status="200"
    )
    assert value(found, "aigw_requests_total", model=MODEL, deployment="gpu-a", status="200") == 5
    # The unknown model is counted without its name: no client-chosen label values.
    assert value(found, "aigw_requests_total", model="", deployment="", status="404") == 1
    assert value(found, "aigw_requests_total", model=MODEL, deployment="", status="429") == 1
    assert not any("no-such-model" in str(labels) for _, labels in found)
    assert value(found, "aigw_ratelimit_rejections_total", key="team-a", limit="key_rpm") == 1
    assert value(found, "aigw_request_duration_seconds_count", model=MODEL) == 6

    # Round-robin sent some of the five to the dead deployment first: each failed over.
    ok = value(found, "aigw_upstream_attempts_total", deployment="gpu-a", outcome="success")
    failed = value(found, "aigw_upstream_attempts_total", deployment="dead", outcome="error")
    assert ok == 5
    assert failed is not None and failed >= 1
    decisions = value(
        found, "aigw_routing_decisions_total", model=MODEL, policy="round-robin", deployment="dead"
    )
    assert decisions == failed
    assert value(found, "aigw_queue_wait_seconds_count", model=MODEL) == 5 + failed

    labels = {"model": MODEL, "deployment": "gpu-a"}
    assert value(found, "aigw_input_tokens_total", **labels) == prompt_tokens
    assert value(found, "aigw_output_tokens_total", **labels) == completion_tokens
    assert value(found, "aigw_time_to_first_token_seconds_count", **labels) == 2
    assert value(found, "aigw_time_per_output_token_seconds_count", **labels) == 2

    assert value(found, "aigw_queue_depth", model=MODEL) == 0
    assert value(found, "aigw_deployment_in_flight", deployment="gpu-a") == 0
    assert value(found, "aigw_deployment_healthy", deployment="gpu-a") == 1
    assert value(found, "aigw_deployment_draining", deployment="gpu-a") == 0
    # The serving loop's tasks: at least the one answering this scrape.
    tasks = value(found, "aigw_asyncio_tasks")
    assert tasks is not None and tasks >= 1
    assert value(found, "aigw_engine_metrics_stale", deployment="gpu-a") is not None
    assert value(found, "aigw_engine_metrics_stale", deployment="dead") is None  # no metrics_url


def test_metrics_can_require_the_admin_key(start_backend: Start, start_gateway: Start) -> None:
    backend = start_backend()
    gateway = start_gateway(
        {
            "models": [{"name": MODEL, "deployments": [deployment(backend.url, "gpu-a")]}],
            "auth": {"admin_key": ADMIN},
            "metrics": {"require_admin_key": True},
        }
    )
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    assert "aigw_queue_depth" in str(samples(gateway, {"authorization": f"Bearer {ADMIN}"}))


def test_retry_budget_exhaustion_is_read_at_scrape_and_survives_a_reload() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from aigw.telemetry.metrics import GatewayMetrics

    def refused(metrics: GatewayMetrics) -> dict[str, float]:
        return {
            s.labels["model"]: s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples
            if s.name == "aigw_retry_budget_exhausted_total"
        }

    metrics = GatewayMetrics([], {}, lambda model: 0, lambda: 0.0)
    assert refused(metrics) == {}
    first = {"m": 2}
    metrics.watch_retries(lambda: first)
    first["m"] = 3  # read when scraped, not when watched
    assert refused(metrics) == {"m": 3.0}
    metrics.watch_retries(lambda: {"m": 1, "n": 4})  # a reload's new gateway
    assert refused(metrics) == {"m": 4.0, "n": 4.0}


async def test_asyncio_tasks_gauge_counts_the_loops_tasks_at_scrape_time() -> None:
    import asyncio

    from aigw.telemetry.metrics import GatewayMetrics

    loop = asyncio.get_running_loop()
    metrics = GatewayMetrics(
        [], {}, lambda model: 0, lambda: 0.0, tasks=lambda: len(asyncio.all_tasks(loop))
    )

    def tasks() -> float:
        text = metrics.render().decode()
        found = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "aigw_asyncio_tasks"
        ]
        assert len(found) == 1, text
        return found[0]

    idle = tasks()
    assert idle >= 1  # this test's own task
    sleepers = [asyncio.create_task(asyncio.sleep(60)) for _ in range(5)]
    assert tasks() == idle + 5
    for sleeper in sleepers:
        sleeper.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)
    assert tasks() == idle
    without = GatewayMetrics([], {}, lambda model: 0, lambda: 0.0)
    assert "aigw_asyncio_tasks" not in without.render().decode()


def test_under_workers_process_counters_sum_every_worker(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers (prometheus_client keys its files by pid: two pids here), each with its
    own Redis error count and retry refusals; either one's /metrics shows both summed."""
    from types import SimpleNamespace

    from prometheus_client import values

    from aigw.telemetry.metrics import GatewayMetrics

    worker = {"pid": 1001}
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: worker["pid"]))

    def errors_and_refused(metrics: GatewayMetrics) -> tuple[float, float]:
        found = {
            s.name: s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples
        }
        return found["aigw_redis_errors_total"], found["aigw_retry_budget_exhausted_total"]

    redis = [SimpleNamespace(down=False, errors=3), SimpleNamespace(down=False, errors=4)]
    workers = []
    for pid, health in zip((1001, 1002), redis, strict=True):
        worker["pid"] = pid
        metrics = GatewayMetrics([], {}, lambda model: 0, lambda: 0.0, health)
        assert metrics.shared
        metrics.watch_retries(lambda: {"m": 1})
        metrics.sync()
        workers.append(metrics)
    worker["pid"] = 1001
    assert errors_and_refused(workers[0]) == (7.0, 2.0)
    redis[1].errors = 10  # worker 2 syncs (its timer, or a scrape it answers)...
    worker["pid"] = 1002
    workers[1].sync()
    worker["pid"] = 1001
    assert errors_and_refused(workers[0]) == (13.0, 2.0)  # ...and worker 1 shows it
    worker["pid"] = 1002
    assert errors_and_refused(workers[1]) == (13.0, 2.0)
