"""The gateway's sticky-session hook, without sockets: look up before routing, bind after the
answer only when the binding changes, nothing at all for a model without ``sticky``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.errors import UpstreamStatusError
from aigw.gateway import Gateway
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.state import SharedState
from aigw.state.base import AdmissionQueue, RateLimiter
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from aigw.state.sessions import MemorySessionStore
from aigw.tokens import load_counter
from aigw.types import Endpoint, RequestMeta, UpstreamRequest
from tests.fakes.transport import FakeResponse, MockTransport, chat_reply

KEYS = {"team-a": "sk-team-a", "team-b": "sk-team-b"}
BODY: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


class CountingStore(MemorySessionStore):
    def __init__(self) -> None:
        super().__init__(asyncio.get_running_loop().time)
        self.lookups = 0
        self.binds: list[tuple[str, str]] = []

    async def lookup(self, key: str, ttl_s: float) -> str | None:
        self.lookups += 1
        return await super().lookup(key, ttl_s)

    async def bind(self, key: str, deployment_id: str, ttl_s: float) -> None:
        self.binds.append((key, deployment_id))
        await super().bind(key, deployment_id, ttl_s)


def deployments(*names: str) -> list[dict[str, Any]]:
    return [
        {"id": n, "base_url": f"http://127.0.0.1:{9000 + i}/v1", "model": "m"}
        for i, n in enumerate(names)
    ]


def config() -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "chat",
                "policy": "round-robin",
                "deployments": deployments("a", "b", "c"),
                "sticky": {"key": "header", "ttl_s": 60},
                "fallbacks": ["spare"],
            },
            {"name": "plain", "policy": "round-robin", "deployments": deployments("p", "q")},
            {"name": "spare", "deployments": deployments("s")},
        ],
        "auth": {"keys": [{"name": n, "key": k} for n, k in KEYS.items()]},
    }


class Pipeline:
    def __init__(self, gateway: Gateway, transport: MockTransport, store: CountingStore) -> None:
        self.gateway = gateway
        self.transport = transport
        self.store = store

    async def send(self, session: str | None, model: str = "chat", tenant: str = "team-a") -> str:
        meta = RequestMeta(authorization=f"Bearer {KEYS[tenant]}".encode())
        if session is not None:
            meta.headers = [(b"x-session-id", session.encode())]
        principal = self.gateway.authenticate(meta)
        body = {**BODY, "model": model}
        reply = await self.gateway.complete(principal, Endpoint.CHAT, body, meta)
        await reply.account()
        return reply.deployment.id


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    def build(handler: Any) -> Pipeline:
        cfg = parse_config(config())
        loop = asyncio.get_running_loop()
        router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
        store = CountingStore()
        limiter: RateLimiter = MemoryRateLimiter(loop.time)
        admission: AdmissionQueue = MemoryAdmissionQueue(loop.time)
        shared = SharedState(limiter, admission, store)
        transport = MockTransport(handler)
        contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
        return Pipeline(build_gateway(cfg, router, shared, transport, contexts), transport, store)

    yield build


def ok(deployment: Any, request: UpstreamRequest) -> FakeResponse:
    return FakeResponse(200, [chat_reply()])


async def test_a_session_stays_on_the_deployment_of_its_first_request(make: Any) -> None:
    p = make(ok)
    first = await p.send("s1")
    assert [await p.send("s1") for _ in range(10)] == [first] * 10
    assert len(p.store.binds) == 1  # bound once; the lookups renewed it since
    assert p.store.lookups == 11
    # Another session is routed by the policy (round-robin moved on), and bound on its own.
    others = {await p.send(f"other-{i}") for i in range(3)}
    assert others == {"a", "b", "c"}


async def test_a_model_without_sticky_and_a_request_without_a_session_skip_the_store(
    make: Any,
) -> None:
    p = make(ok)
    assert {await p.send("s1", model="plain") for _ in range(4)} == {"p", "q"}
    assert {await p.send(None) for _ in range(3)} == {"a", "b", "c"}
    assert p.store.lookups == 0 and p.store.binds == []


async def test_sessions_are_per_tenant(make: Any) -> None:
    p = make(ok)
    a = await p.send("shared-id", tenant="team-a")
    b = await p.send("shared-id", tenant="team-b")
    assert a != b  # team-b's request was routed by the policy, not by team-a's binding
    assert len({key for key, _ in p.store.binds}) == 2


async def test_a_session_moves_when_its_deployment_fails_and_rebinds(make: Any) -> None:
    broken: set[str] = set()

    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id in broken:
            return FakeResponse(503, [b'{"error": {"message": "down"}}'])
        return FakeResponse(200, [chat_reply()])

    p = make(handler)
    first = await p.send("s1")
    other = await p.send("s2")
    broken.add(first)
    moved = await p.send("s1")  # failed over to another deployment, and rebound there
    assert moved != first
    broken.clear()
    assert await p.send("s1") == moved  # the KV cache is on the new one now
    assert await p.send("s2") == other  # the other session never moved


async def test_a_fallback_models_deployment_is_not_bound(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id != "s":
            return FakeResponse(503, [b'{"error": {"message": "down"}}'])
        return FakeResponse(200, [chat_reply()])

    p = make(handler)
    assert await p.send("s1") == "s"
    assert p.store.binds == []


async def test_an_unanswered_request_binds_nothing(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(400, [b'{"error": {"message": "bad"}}'])

    p = make(handler)
    with pytest.raises(UpstreamStatusError):
        await p.send("s1")
    assert p.store.binds == []
