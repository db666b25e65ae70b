"""Chaos test 5, over real sockets: streams that break mid-way through the gateway.

Faults: the simulator cuts the connection after 40 of 60 tokens; an upstream sends 20 tokens
then falls silent (the idle timeout ends it); an upstream sends 20 tokens then a malformed
event. Without ``stream_resume`` the client gets what was relayed, then exactly one error event
(no ``[DONE]``, nothing twice). With it, the stream completes on another deployment (a
simulator): 60 tokens, the continuation asked to go on from exactly the text the client had,
no text twice, one role chunk, one id, exactly one ``[DONE]``, usage of the whole answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import deployment
from tests.servers import ThreadedServer, free_port, serve_in_thread

MODEL = "m"
Start = Callable[..., ThreadedServer]
TOKENS = 60
REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a story"}],
    "stream": True,
    "max_tokens": TOKENS,
    "ignore_eos": True,  # the simulator then writes exactly max_tokens tokens
    "stream_options": {"include_usage": True},
}


def faulty_upstream(tail: bytes | None) -> Any:
    """An OpenAI-compatible upstream that streams 20 tokens, then ``tail`` (a malformed
    event), or with ``tail`` None nothing more until the gateway disconnects."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = {"id": "up-1", "object": "chat.completion.chunk", "created": 7, "model": "up"}
        deltas = [{"role": "assistant", "content": ""}] + [{"content": f" w{k}"} for k in range(20)]
        body = b"".join(
            b"data: "
            + orjson.dumps({**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]})
            + b"\n\n"
            for d in deltas
        )
        await send({"type": "http.response.body", "body": body, "more_body": True})
        if tail is not None:
            await asyncio.sleep(0.05)  # its own read: the break comes after the first bytes
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    return app


def start_faulty(kind: str, servers: ExitStack, start_backend: Start) -> dict[str, Any]:
    """The faulty deployment's config, and how many tokens it sends before it breaks."""
    if kind == "cut":
        backend = start_backend(faults={"die_mid_stream_rate": 1.0, "die_after_tokens": 40})
        return deployment(backend.url, "faulty")
    tail = None if kind == "silence" else b"data: Internal error\n\n"
    upstream = servers.enter_context(serve_in_thread(faulty_upstream(tail)))
    return deployment(upstream.url, "faulty", timeouts={"idle": 0.3})


SENT_BEFORE_FAULT = {"cut": 40, "silence": 20, "malformed": 20}


def read_stream(gateway: ThreadedServer) -> tuple[str, list[Any]]:
    """The deployment that began the stream, and its events ("[DONE]" as a string)."""
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{gateway.url}/v1/chat/completions", json=REQUEST) as reply,
    ):
        assert reply.status_code == 200
        raw = b"".join(reply.iter_bytes())
        began = reply.headers["x-aigw-deployment"]
    events: list[Any] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[6:]
            events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return began, events


def contents(events: list[Any]) -> list[str]:
    return [
        c["delta"]["content"]
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
        if c.get("delta", {}).get("content")
    ]


def resume_outcomes(gateway: ThreadedServer, expected: int) -> dict[tuple[str, str], float]:
    """``aigw_stream_resumes_total`` as {(model, outcome): count}, once it sums to
    ``expected`` (a request is recorded just after its stream ends: a bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        text = httpx.get(f"{gateway.url}/metrics").text
        found = {
            (sample.labels["model"], sample.labels["outcome"]): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "aigw_stream_resumes_total"
        }
        if sum(found.values()) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["cut", "silence", "malformed"])
def test_without_stream_resume_a_broken_stream_ends_with_one_error_event(
    kind: str, servers: ExitStack, start_backend: Start, start_gateway: Start
) -> None:
    faulty = start_faulty(kind, servers, start_backend)
    gateway = start_gateway({"models": [{"name": MODEL, "deployments": [faulty]}]})
    _, events = read_stream(gateway)
    assert len(contents(events)) == SENT_BEFORE_FAULT[kind]
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert "[DONE]" not in events
    assert resume_outcomes(gateway, 0) == {}  # not a stream_resume model: no resume counted


@pytest.mark.parametrize("kind", ["cut", "silence", "malformed"])
def test_with_stream_resume_a_broken_stream_completes_on_another_deployment(
    kind: str, servers: ExitStack, start_backend: Start, start_gateway: Start
) -> None:
    faulty = start_faulty(kind, servers, start_backend)
    healthy = start_backend()
    model = {
        "name": MODEL,
        "policy": "round-robin",
        "stream_resume": True,
        "deployments": [faulty, deployment(healthy.url, "healthy")],
    }
    gateway = start_gateway({"models": [model]})
    for _ in range(4):  # round-robin: one of the first two streams begins on the faulty one
        began, events = read_stream(gateway)
        if began == "faulty":
            break
    assert began == "faulty"
    before = SENT_BEFORE_FAULT[kind]
    pieces = contents(events)
    assert len(pieces) == TOKENS  # the whole answer: no token lost, none twice
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert not [e for e in events if isinstance(e, dict) and "error" in e]
    chunks = [e for e in events if isinstance(e, dict)]
    assert len({e["id"] for e in chunks}) == 1  # one stream for the client
    roles = [c for e in chunks for c in e["choices"] if "role" in c["delta"]]
    assert len(roles) == 1
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS
    # The continuation went on from exactly the text the client had been sent.
    continuation = httpx.get(f"{healthy.url}/sim/requests").json()[-1]
    assert continuation["messages"][-1] == {
        "role": "assistant",
        "content": "".join(pieces[:before]).rstrip(),  # trailing whitespace: see resume.prefix
    }
    assert continuation["continue_final_message"] is True
    assert continuation["max_tokens"] == TOKENS - before
    assert resume_outcomes(gateway, 1) == {(MODEL, "resumed"): 1.0}
    # The request is recorded under the deployment that ended it (its last attempt).
    served = {
        sample.labels["deployment"]
        for family in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text)
        for sample in family.samples
        if sample.name == "aigw_requests_total"
    }
    assert served == {"healthy"}


def test_a_stream_no_deployment_can_continue_is_counted_as_a_failed_resume(
    servers: ExitStack, start_backend: Start, start_gateway: Start
) -> None:
    faulty = start_faulty("cut", servers, start_backend)
    dead = deployment(f"http://127.0.0.1:{free_port()}", "dead")  # nothing listens there
    model = {"name": MODEL, "stream_resume": True, "deployments": [faulty, dead]}
    gateway = start_gateway({"models": [model]})
    _, events = read_stream(gateway)  # the dead one fails before any byte: faulty serves
    assert len(contents(events)) == SENT_BEFORE_FAULT["cut"]
    assert "error" in events[-1] and "[DONE]" not in events
    assert resume_outcomes(gateway, 1) == {(MODEL, "failed"): 1.0}
