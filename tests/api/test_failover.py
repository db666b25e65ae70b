"""Failures before the first byte fail over; after it, the stream ends with an error event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import deployment
from tests.servers import ThreadedServer, free_port, serve_in_thread

MODEL = "m"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
Start = Callable[..., ThreadedServer]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def sdk() -> Iterator[Callable[[ThreadedServer], openai.OpenAI]]:
    """OpenAI clients for gateways, closed after the test."""
    clients: list[openai.OpenAI] = []

    def make(gateway: ThreadedServer) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


SDK = Callable[[ThreadedServer], openai.OpenAI]


def one_model(*deployments: dict[str, Any], **model: Any) -> dict[str, Any]:
    return {"models": [{"name": MODEL, "deployments": list(deployments), **model}]}


def wait_for_stats(
    backend: ThreadedServer, key: str, value: int, deadline: float = 5.0
) -> dict[str, Any]:
    """Poll a backend's counters (it runs in another thread) until ``key`` reaches ``value``."""
    end = time.monotonic() + deadline
    while True:
        stats: dict[str, Any] = httpx.get(f"{backend.url}/sim/stats").json()
        if stats[key] >= value or time.monotonic() > end:
            return stats
        time.sleep(0.02)


def test_dead_deployment_is_skipped(start_backend: Start, start_gateway: Start, sdk: SDK) -> None:
    good = start_backend()
    gateway = start_gateway(one_model(deployment(dead_url(), "dead"), deployment(good.url, "good")))
    client = sdk(gateway)
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, max_tokens=2
        )
        assert raw.headers["x-aigw-deployment"] == "good"
    assert httpx.get(f"{good.url}/sim/stats").json()["completed"] == 6


def test_failing_deployment_is_retried_elsewhere(
    start_backend: Start, start_gateway: Start, sdk: SDK
) -> None:
    broken = start_backend(faults={"error_rate": 1.0})
    good = start_backend()
    gateway = start_gateway(
        one_model(deployment(broken.url, "broken"), deployment(good.url, "good"))
    )
    client = sdk(gateway)
    for _ in range(4):
        stream = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2, stream=True
        )
        assert any(c.choices and c.choices[0].delta.content for c in stream)
    # The broken one was tried (and failed) at most until outlier detection ejected it.
    assert 1 <= httpx.get(f"{broken.url}/sim/stats").json()["received"] <= 3


def test_single_unreachable_deployment_is_502(start_gateway: Start, sdk: SDK) -> None:
    gateway = start_gateway(one_model(deployment(dead_url(), "dead")))
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gateway).chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unreachable"  # type: ignore[index]
    assert "dead" in info.value.message


def test_all_deployments_failing_is_503(start_gateway: Start, sdk: SDK) -> None:
    gateway = start_gateway(
        one_model(deployment(dead_url(), "dead-1"), deployment(dead_url(), "dead-2"))
    )
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gateway).chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 503
    assert "dead-1" in info.value.message and "dead-2" in info.value.message


def test_fallback_model_serves_when_primary_fails(
    start_backend: Start, start_gateway: Start, sdk: SDK
) -> None:
    backup = start_backend()
    config = {
        "models": [
            {
                "name": MODEL,
                "fallbacks": ["backup"],
                "deployments": [deployment(dead_url(), "dead")],
            },
            {"name": "backup", "deployments": [deployment(backup.url, "backup-gpu")]},
        ]
    }
    gateway = start_gateway(config)
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=2
    )
    assert raw.headers["x-aigw-deployment"] == "backup-gpu"


def test_hung_upstream_stream_times_out_with_504(
    start_backend: Start, start_gateway: Start, sdk: SDK
) -> None:
    hung = start_backend(faults={"hang_rate": 1.0})
    gateway = start_gateway(one_model(deployment(hung.url, "hung", timeouts={"first_byte": 0.3})))
    with pytest.raises(openai.APIStatusError) as info:
        list(sdk(gateway).chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    assert info.value.status_code == 504
    # Giving up closed the upstream connection, so the engine dropped the request.
    assert wait_for_stats(hung, "aborted", 1)["aborted"] == 1


def test_hung_upstream_reply_times_out_with_504(
    start_backend: Start, start_gateway: Start, sdk: SDK
) -> None:
    hung = start_backend(faults={"hang_rate": 1.0})
    gateway = start_gateway(one_model(deployment(hung.url, "hung", timeouts={"total": 0.3})))
    with pytest.raises(openai.APIStatusError) as info:
        sdk(gateway).chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 504


def test_upstream_dying_mid_stream_ends_with_error_event(
    start_backend: Start, start_gateway: Start, sdk: SDK
) -> None:
    dying = start_backend(faults={"die_mid_stream_rate": 1.0, "die_after_tokens": 2})
    gateway = start_gateway(one_model(deployment(dying.url, "dying")))
    stream = sdk(gateway).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=50, stream=True, extra_body={"ignore_eos": True}
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert 1 <= len(received) <= 3  # what was relayed before the break reached the client
    assert "dying" in info.value.message


def test_client_disconnect_mid_stream_cancels_upstream(
    start_backend: Start, start_gateway: Start
) -> None:
    backend = start_backend(time_scale=1.0)
    gateway = start_gateway(one_model(deployment(backend.url, "gpu")))
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 5000,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # The client is gone after one chunk; the engine must drop the request, not finish it.
    stats = wait_for_stats(backend, "aborted", 1)
    assert stats["aborted"] == 1
    assert stats["completed"] == 0
    assert stats["running"] == 0


def test_client_disconnect_while_waiting_cancels_upstream(
    start_backend: Start, start_gateway: Start
) -> None:
    hung = start_backend(faults={"hang_rate": 1.0})
    gateway = start_gateway(one_model(deployment(hung.url, "hung")))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    assert wait_for_stats(hung, "aborted", 1)["aborted"] == 1


def test_body_over_limit_is_413(start_backend: Start, start_gateway: Start, sdk: SDK) -> None:
    backend = start_backend()
    config = one_model(deployment(backend.url, "gpu"))
    config["server"] = {"max_body_bytes": 2000}
    gateway = start_gateway(config)
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as info:
        sdk(gateway).chat.completions.create(model=MODEL, messages=big)
    assert info.value.status_code == 413
    assert httpx.get(f"{backend.url}/sim/stats").json()["received"] == 0


def test_readyz_reports_model_without_healthy_deployment(start_gateway: Start, sdk: SDK) -> None:
    gateway = start_gateway(one_model(deployment(dead_url(), "dead")))
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    client = sdk(gateway)
    for _ in range(3):  # the default outlier threshold: 3 consecutive failures
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=HELLO)
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["models_without_healthy_deployment"] == [MODEL]


def stalling_upstream(stalled: threading.Event) -> Any:
    """An OpenAI-compatible upstream that sends one chunk, then nothing until disconnected."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}
            ],
        }
        await send(
            {
                "type": "http.response.body",
                "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                "more_body": True,
            }
        )
        while (await receive())["type"] != "http.disconnect":
            pass
        stalled.set()  # the gateway gave up on us and closed the connection

    return app


def test_idle_gap_mid_stream_ends_with_error_event_and_closes_upstream(
    servers: ExitStack, start_gateway: Start, sdk: SDK
) -> None:
    closed = threading.Event()
    upstream = servers.enter_context(serve_in_thread(stalling_upstream(closed)))
    gateway = start_gateway(one_model(deployment(upstream.url, "staller", timeouts={"idle": 0.3})))
    stream = sdk(gateway).chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["Hi"]
    assert "timed out (streaming)" in info.value.message
    assert closed.wait(5)
