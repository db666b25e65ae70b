"""Per-request cost of sticky sessions: ``.venv/bin/python -m tests.routing.bench_sticky``.

1. ``Gateway.complete`` + ``account`` over a mock transport (no sockets), for the same
   three-deployment model without ``sticky``, with ``sticky`` but no session id, and with a
   session id (memory store; the binding exists, so no bind): the differences are what
   sticky sessions add to a request.
2. The pieces: the session key, a memory lookup, ``keep_bound``, and the Redis store's
   lookup (one GETEX) and bind (one SET) over one local connection to a throwaway
   redis-server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aigw.app import build_gateway
from aigw.config import StickyConfig
from aigw.configfile import parse_config
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.routing.sticky import Stickiness, keep_bound
from aigw.state import open_state
from aigw.state.redis_sessions import RedisSessionStore
from aigw.state.scripts import connect
from aigw.state.sessions import MemorySessionStore
from aigw.tokens import load_counter
from aigw.types import Endpoint, RequestMeta
from tests.fakes.transport import FakeResponse, MockTransport, chat_reply
from tests.state.conftest import RedisServer, state_config

REPLY = chat_reply()
BODY = {"messages": [{"role": "user", "content": "hello " * 50}]}


async def per_call_us(n: int, call: Callable[[int], Awaitable[object]]) -> float:
    for i in range(min(n, 2000)):
        await call(i)  # warm up
    best = float("inf")
    for _ in range(5):  # the best of five runs: the least disturbed by the machine
        started = time.perf_counter()
        for i in range(n):
            await call(i)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


async def pipeline() -> None:
    deployments = [
        {"id": f"{m}{i}", "base_url": f"http://127.0.0.1:{9000 + i}/v1", "model": "x"}
        for m in "ps"
        for i in range(3)
    ]
    cfg = parse_config(
        {
            "models": [
                {"name": "plain", "policy": "least-connections", "deployments": deployments[:3]},
                {
                    "name": "sticky",
                    "policy": "least-connections",
                    "deployments": deployments[3:],
                    "sticky": {"key": "header"},
                },
            ]
        }
    )
    loop = asyncio.get_running_loop()
    router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
    shared = await open_state(cfg.state, loop.time)
    transport = MockTransport(lambda d, r: FakeResponse(200, [REPLY]))
    contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
    gateway = build_gateway(cfg, router, shared, transport, contexts)
    plain_meta = RequestMeta()
    plain_meta.headers = [(b"content-type", b"application/json")] * 8
    session_meta = RequestMeta()
    session_meta.headers = [*plain_meta.headers, (b"x-session-id", b"conversation-1")]
    principal = gateway.authenticate(plain_meta)

    def run(model: str, meta: RequestMeta) -> Callable[[int], Awaitable[object]]:
        async def call(i: int) -> None:
            transport.sent.clear()
            transport.responses.clear()
            body: dict[str, Any] = {**BODY, "model": model}
            reply = await gateway.complete(principal, Endpoint.CHAT, body, meta)
            await reply.account()

        return call

    n = 20_000
    plain = await per_call_us(n, run("plain", plain_meta))
    no_id = await per_call_us(n, run("sticky", plain_meta))
    bound = await per_call_us(n, run("sticky", session_meta))
    print(f"Gateway.complete + account, model without sticky:  {plain:6.2f} us")
    print(f"  sticky model, request without a session id:     {no_id:6.2f} us")
    print(f"  sticky model, bound session (lookup, no bind):   {bound:6.2f} us")
    await shared.aclose()


async def pieces() -> None:
    sticky = Stickiness(StickyConfig(key="header"), "llama-3-8b")
    meta = RequestMeta()
    meta.headers = [(b"content-type", b"application/json")] * 8 + [(b"x-session-id", b"abc")]
    memory = MemorySessionStore(time.monotonic)
    await memory.bind("k", "d1", 60)

    async def key(i: int) -> object:
        return sticky.session_key("team-a", BODY, meta)

    async def lookup(i: int) -> object:
        return await memory.lookup("k", 60)

    cfg = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "deployments": [
                        {"id": f"d{i}", "base_url": "http://127.0.0.1:1/v1", "model": "x"}
                        for i in range(4)
                    ],
                }
            ]
        }
    )
    candidates = list(Router(cfg, time.monotonic, random.Random(0)).deployments.values())

    async def keep(i: int) -> object:
        return keep_bound("d2", candidates)

    print(f"session key (header, 9 headers):  {await per_call_us(200_000, key):6.3f} us")
    print(f"memory lookup:                    {await per_call_us(200_000, lookup):6.3f} us")
    print(f"keep_bound (4 candidates):        {await per_call_us(200_000, keep):6.3f} us")

    server = RedisServer()
    server.start()
    try:
        config = state_config(server.url)
        client = connect(config)
        redis = RedisSessionStore(client, config)
        await redis.bind("k", "d1", 60)

        async def redis_lookup(i: int) -> object:
            return await redis.lookup("k", 60)

        async def redis_bind(i: int) -> object:
            await redis.bind(f"k{i % 1000}", "d1", 60)
            return None

        print(f"redis lookup (GETEX):             {await per_call_us(5_000, redis_lookup):6.1f} us")
        print(f"redis bind (SET):                 {await per_call_us(5_000, redis_bind):6.1f} us")
        await client.aclose()
    finally:
        server.kill()


async def main() -> None:
    await pipeline()
    await pieces()


if __name__ == "__main__":
    asyncio.run(main())
