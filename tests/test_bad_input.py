"""Hostile or broken input at the gateway's two edges: client bodies and upstream replies.

Client bodies nested deeper than MAX_NESTING are refused at parse time (orjson writes only
about 255 levels, so a deeper body used to fail re-serialisation with a 500). Non-streamed
upstream replies are capped (counted after decompression, so a gzip bomb is cut off too) and
must be a JSON object; both failures are retryable 502s naming the deployment, not its URL.
"""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from aigw.api.validation import MAX_NESTING, parse_body
from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.errors import GatewayError, InvalidRequestError
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.state import open_state
from aigw.tokens import load_counter
from aigw.types import Endpoint, RequestMeta
from aigw.upstream import UpstreamPool


def nested(depth: int) -> bytes:
    """An object whose deepest value sits ``depth`` arrays/objects down (the body counts)."""
    return b'{"model":"m","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 254, 255, 300, 1023])
def test_a_body_nested_too_deep_is_refused_naming_the_limit(depth: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(nested(depth))
    assert info.value.code == "nesting_too_deep"
    assert info.value.status == 400
    assert f"{MAX_NESTING} levels" in info.value.message


def test_a_body_at_the_limit_and_one_re_serialisable_pass() -> None:
    body = parse_body(nested(MAX_NESTING))
    assert orjson.loads(orjson.dumps(body)) == body


@pytest.mark.parametrize(
    "text",
    [
        "{" * 500,  # brackets inside strings are not nesting
        "[[[" * 100 + '\\"' + "]" * 10,  # escaped quotes do not end the string
        "\\" * 7 + '"' + "{" * 100,  # nor do escaped backslashes start one
        '\\\\"' * 50 + "[" * 70 + "\n",
    ],
)
def test_brackets_and_escapes_inside_strings_do_not_count(text: str) -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}] * 3})
    assert parse_body(raw)["messages"][0]["content"] == text


def test_many_shallow_objects_pass() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}] * 500
    assert len(parse_body(orjson.dumps({"model": "m", "messages": messages}))["messages"]) == 500


# --- a real upstream socket: the reply cap counts decompressed bytes ----------------------


@pytest.fixture
async def gzip_upstream() -> AsyncIterator[tuple[int, list[int]]]:
    """An upstream answering a 4 KiB gzip body that expands to 4 MiB; yields its port."""
    inflated = b'{"object":"chat.completion","x":"' + b"x" * (4 * 1024 * 1024) + b'"}'
    payload = gzip.compress(inflated, 9)
    served: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(len(payload))
        return web.Response(
            body=payload,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, served
    finally:
        await runner.cleanup()


async def ask(port: int, max_reply_bytes: int | None) -> bytes:
    server = {} if max_reply_bytes is None else {"max_upstream_reply_bytes": max_reply_bytes}
    cfg = parse_config(
        {
            "server": server,
            "models": [
                {
                    "name": "chat",
                    "deployments": [
                        {"id": "gz", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
                    ],
                }
            ],
        }
    )
    loop = asyncio.get_running_loop()
    router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
    shared = await open_state(cfg.state, loop.time)
    pool = UpstreamPool()
    pool.open(router.deployments.values())
    try:
        contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
        gateway = build_gateway(cfg, router, shared, pool, contexts)  # the cap from the config
        meta = RequestMeta()
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        reply = await gateway.complete(gateway.authenticate(meta), Endpoint.CHAT, body, meta)
        await reply.account()
        return reply.body
    finally:
        await pool.close()
        await shared.aclose()


async def test_a_gzip_bomb_is_cut_at_the_cap_counted_after_decompression(
    gzip_upstream: tuple[int, list[int]],
) -> None:
    port, served = gzip_upstream
    with pytest.raises(GatewayError) as info:
        await ask(port, max_reply_bytes=1024 * 1024)
    assert served and served[0] < 64 * 1024  # a small body on the wire...
    assert info.value.status == 502  # ...refused for what it expands to
    assert info.value.code == "upstream_reply_too_large"
    assert info.value.retryable
    assert "gz" in info.value.message and "127.0.0.1" not in info.value.message


async def test_a_gzip_reply_under_the_cap_is_relayed_decompressed(
    gzip_upstream: tuple[int, list[int]],
) -> None:
    port, _ = gzip_upstream
    body = await ask(port, max_reply_bytes=None)  # the 16 MiB default
    assert len(body) > 4 * 1024 * 1024
