"""Traces: span structure over real sockets, with the SDK's in-memory exporter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aigw.app import create_app
from aigw.configfile import parse_config
from aigw.serving import gateway_protocol
from aigw.telemetry.tracing import provider_from_env
from tests.api.test_canaries import echo_upstream
from tests.servers import ThreadedServer, free_port, serve_in_thread

HELLO: list[Any] = [{"role": "user", "content": "hi"}]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(servers: ExitStack, exporter: InMemorySpanExporter) -> Iterator[Any]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def start(config: dict[str, Any]) -> ThreadedServer:
        parsed = parse_config(config, source="<test>")
        app = create_app(parsed, seed=0, tracer_provider=provider)
        return servers.enter_context(serve_in_thread(app, http=gateway_protocol(parsed.server)))

    yield start
    provider.shutdown()


def _deployment(url: str, id: str, upstream_model: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"id": id, "base_url": f"{url}/v1", "model": upstream_model, **extra}


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def finished(exporter: InMemorySpanExporter, requests: int) -> tuple[ReadableSpan, ...]:
    """The spans once ``requests`` request spans ended: a request's span ends just after its
    response is sent, so the client may look a moment before (bounded wait)."""
    assert _poll(lambda: len(by_kind(exporter.get_finished_spans(), SpanKind.SERVER)) >= requests)
    return exporter.get_finished_spans()


def test_a_request_span_with_an_attempt_child_and_its_traceparent_upstream(
    servers: ExitStack, traced: Any, exporter: InMemorySpanExporter
) -> None:
    upstream = servers.enter_context(serve_in_thread(echo_upstream()))
    gateway = traced({"models": [{"name": "m", "deployments": [_deployment(upstream.url, "d1")]}]})
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
        reply = client.chat.completions.create(
            model="m", messages=HELLO, extra_headers={"traceparent": traceparent}
        )
    echoed = reply.choices[0].message.content or ""  # the upstream quotes the headers it got
    spans = finished(exporter, 1)
    (server,) = by_kind(spans, SpanKind.SERVER)
    (client_span,) = by_kind(spans, SpanKind.CLIENT)
    # The client's trace continues through the gateway to the upstream.
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert client_span.parent is not None and client_span.parent.span_id == server.context.span_id
    assert f"traceparent: 00-{CLIENT_TRACE}-{client_span.context.span_id:016x}-01" in echoed
    assert server.name == "chat m"
    assert reply.usage is not None
    assert server.attributes is not None and client_span.attributes is not None
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.model"] == "m"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["aigw.deployment"] == "d1"
    assert server.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert client_span.name == "chat ok"
    assert client_span.attributes["gen_ai.provider.name"] == "openai"
    assert client_span.attributes["gen_ai.response.model"] == "ok"
    assert client_span.attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert client_span.attributes["aigw.attempt"] == 1
    assert server.start_time is not None and client_span.start_time is not None
    assert server.end_time is not None and client_span.end_time is not None
    assert server.start_time <= client_span.start_time <= client_span.end_time <= server.end_time


def test_failover_gives_one_span_per_attempt(
    servers: ExitStack, traced: Any, exporter: InMemorySpanExporter
) -> None:
    upstream = servers.enter_context(serve_in_thread(echo_upstream()))
    dead = f"http://127.0.0.1:{free_port()}"
    deployments = [_deployment(dead, "dead"), _deployment(upstream.url, "live")]
    gateway = traced(
        {"models": [{"name": "m", "policy": "round-robin", "deployments": deployments}]}
    )
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
        for _ in range(2):  # round-robin starts on one or the other: one of them fails over
            client.chat.completions.create(model="m", messages=HELLO)
    spans = finished(exporter, 2)
    attempts = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    servers_spans = by_kind(spans, SpanKind.SERVER)
    assert len(servers_spans) == 2 and len(attempts) == 3
    failed = [s for s in attempts if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert failed[0].attributes is not None
    assert failed[0].attributes["aigw.deployment"] == "dead"
    assert failed[0].attributes["error.type"] == "upstream_unreachable"
    retried = [s for s in attempts if s.parent and s.parent.span_id == failed[0].parent.span_id]  # type: ignore[union-attr]
    assert [s.attributes["aigw.attempt"] for s in retried] == [1, 2]  # type: ignore[index]


def test_a_queued_request_has_a_queue_wait_span(
    servers: ExitStack, traced: Any, exporter: InMemorySpanExporter
) -> None:
    release = threading.Event()
    upstream = servers.enter_context(serve_in_thread(_held_upstream(release)))
    deployment = _deployment(upstream.url, "one", max_concurrency=1)
    gateway = traced({"models": [{"name": "m", "deployments": [deployment]}]})
    body = {"model": "m", "messages": HELLO}
    results: list[int] = []

    def call() -> None:
        results.append(
            httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10).status_code
        )

    first = threading.Thread(target=call)
    first.start()
    assert _wait_in_flight(gateway)  # the first holds the only slot
    second = threading.Thread(target=call)
    second.start()
    assert _wait_queued(gateway)
    release.set()
    first.join(10)
    second.join(10)
    assert results == [200, 200]
    spans = finished(exporter, 2)
    (queued,) = [s for s in spans if s.name == "queue wait"]
    parents = {s.context.span_id for s in by_kind(spans, SpanKind.SERVER)}
    assert queued.parent is not None and queued.parent.span_id in parents
    assert queued.end_time is not None and queued.start_time is not None
    assert queued.end_time > queued.start_time


def _metric(gateway: ThreadedServer, line_start: str) -> float:
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_in_flight(gateway: ThreadedServer) -> bool:
    return _poll(lambda: _metric(gateway, 'aigw_deployment_in_flight{deployment="one"}') == 1)


def _wait_queued(gateway: ThreadedServer) -> bool:
    return _poll(lambda: _metric(gateway, 'aigw_queue_depth{model="m"}') == 1)


def _poll(predicate: Any) -> bool:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _held_upstream(release: threading.Event) -> Any:
    """Answers each request once ``release`` is set (the test holds the first one)."""
    import asyncio

    echo = echo_upstream()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await asyncio.to_thread(release.wait, 10)  # set by the test thread
        await echo(scope, receive, send)

    return app


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert provider_from_env({}) is None
    assert provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is not None
    assert provider_from_env({"OTEL_TRACES_EXPORTER": "console"}) is not None
    assert (
        provider_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
        )
        is None
    )
    assert (
        provider_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )


def test_a_sampled_out_request_writes_no_spans_but_still_propagates(
    servers: ExitStack, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    upstream = servers.enter_context(serve_in_thread(echo_upstream()))
    config = {"models": [{"name": "m", "deployments": [_deployment(upstream.url, "d1")]}]}
    parsed = parse_config(config, source="<test>")
    app = create_app(parsed, seed=0, tracer_provider=provider)
    gateway = servers.enter_context(serve_in_thread(app, http=gateway_protocol(parsed.server)))
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
        reply = client.chat.completions.create(model="m", messages=HELLO)
    echoed = reply.choices[0].message.content or ""
    traceparent = echoed.split("traceparent: ", 1)[1].split(";", 1)[0]
    assert int(traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # the sampled flag is off
    assert exporter.get_finished_spans() == ()
    provider.shutdown()
