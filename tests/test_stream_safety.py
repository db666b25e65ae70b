"""A misbehaving OpenAI-compatible upstream, through the whole pipeline (MockTransport).

An endless event or a line that is not SSE JSON must not reach the client: it gets the chunks
before it, then exactly one error event; the upstream connection is closed (never pooled) and
the request is accounted (slot released).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.sse import SSEDecoder
from aigw.state import open_state
from aigw.tokens import load_counter
from aigw.types import Endpoint, RequestMeta
from tests.fakes.transport import FakeResponse, MockTransport, sse

KEY = "sk-team-a"
CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
GOOD = sse(
    {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {**CHUNK, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
)
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hello"}],
    "stream": True,
}


def _endless() -> list[bytes]:
    return [b'data: {"choices": [{"delta": {"content": "', *[b"x" * 65_536] * 40]


BAD_TAILS = {
    "upstream_bad_event": [b"data: Internal Server Error\n\n", *sse("[DONE]")],
    "upstream_event_too_large": _endless(),
}


@pytest.fixture
async def relay() -> AsyncIterator[Any]:
    closing: list[Any] = []

    async def run(chunks: list[bytes]) -> tuple[bytes, FakeResponse, dict[str, int]]:
        cfg = parse_config(
            {
                "models": [
                    {
                        "name": "chat",
                        "deployments": [
                            {"id": "a", "base_url": "http://127.0.0.1:9000/v1", "model": "m"}
                        ],
                    }
                ],
                "auth": {"keys": [{"name": "team-a", "key": KEY}]},
            }
        )
        loop = asyncio.get_running_loop()
        router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
        shared = await open_state(cfg.state, loop.time)
        closing.append(shared)
        transport = MockTransport(lambda d, r: FakeResponse(200, chunks))
        contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
        gateway = build_gateway(cfg, router, shared, transport, contexts)
        meta = RequestMeta(authorization=f"Bearer {KEY}".encode())
        stream = await gateway.open_stream(
            gateway.authenticate(meta), Endpoint.CHAT, dict(BODY), meta
        )
        got: list[bytes] = []

        async def send(data: bytes) -> None:
            got.append(data)

        await stream.relay(send)
        in_flight = {d.id: d.state.in_flight for d in router.deployments.values()}
        return b"".join(got), transport.responses[0], in_flight

    yield run
    for shared in closing:
        await shared.aclose()


@pytest.mark.parametrize("code", list(BAD_TAILS))
async def test_the_client_gets_what_came_before_then_one_error_event(relay: Any, code: str) -> None:
    text, response, in_flight = await relay([*GOOD, *BAD_TAILS[code]])
    assert text.startswith(b"".join(GOOD))
    events = SSEDecoder().feed(text[len(b"".join(GOOD)) :])
    assert len(events) == 1
    error = orjson.loads(events[0].data)["error"]
    assert (error["code"], error["type"]) == (code, "api_error")
    assert b"Internal Server Error" not in text and b"xxxx" not in text
    assert b"[DONE]" not in text
    assert (response.closed, response.released) == (True, False)
    assert in_flight == {"a": 0}


async def test_an_html_page_sent_as_a_stream_is_an_error_not_relayed(relay: Any) -> None:
    page = [*GOOD, b"<html><body><h1>Oops</h1>\n", b"</body></html>\n"]
    text, response, in_flight = await relay(page)
    assert b"html" not in text
    assert orjson.loads(SSEDecoder().feed(text)[-1].data)["error"]["code"] == "upstream_bad_event"
    assert (response.closed, response.released) == (True, False)
    assert in_flight == {"a": 0}


async def test_a_well_formed_stream_is_still_relayed_whole(relay: Any) -> None:
    chunks = [b": keep-alive\n\n", *GOOD, *sse("[DONE]")]
    text, response, _ = await relay(chunks)
    assert text == b"".join(chunks)
    assert (response.closed, response.released) == (False, True)
