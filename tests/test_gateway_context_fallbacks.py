"""``context_fallbacks`` without sockets: a request too long for every deployment of its model
goes to the first named model with a window that holds it; charged once (the key, and the
serving model's quotas), recorded under the model asked for, never bound to a session."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.errors import GatewayError
from aigw.gateway import Gateway
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.state import SharedState, open_state
from aigw.state.base import Charge
from aigw.tokens import load_counter
from aigw.types import Endpoint, Principal, RequestMeta
from tests.fakes.transport import FakeResponse, MockTransport, chat_reply

KEY = "sk-team-a"
LONG = "word " * 2000  # about 2,000 tokens: over small's 1,000, within large's 8,000


def _model(name: str, window: int, port: int, **extra: Any) -> dict[str, Any]:
    dep = {
        "id": f"{name}-1",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "model": name,
        "context_window": window,
    }
    return {"name": name, "policy": "round-robin", "deployments": [dep], **extra}


def config() -> dict[str, Any]:
    return {
        "models": [
            _model(
                "small",
                1000,
                9001,
                context_fallbacks=["medium", "large"],
                sticky={"key": "user", "ttl_s": 60},
                tpm=100_000,
            ),
            _model("medium", 1500, 9002),
            _model("large", 8000, 9003, tpm=100_000),
        ],
        "auth": {"keys": [{"name": "team-a", "key": KEY, "rpm": 100, "tpm": 100_000}]},
    }


class Pipeline:
    def __init__(self, gateway: Gateway, transport: MockTransport, shared: SharedState) -> None:
        self.gateway = gateway
        self.transport = transport
        self.shared = shared
        self.meta = RequestMeta(authorization=f"Bearer {KEY}".encode())
        self.principal: Principal = gateway.authenticate(self.meta)

    async def complete(self, content: str, **extra: Any) -> Any:
        body = {"model": "small", "messages": [{"role": "user", "content": content}], **extra}
        reply = await self.gateway.complete(self.principal, Endpoint.CHAT, body, self.meta)
        await reply.account()
        return reply

    async def remaining(self, table: str, name: str) -> int:
        quota = getattr(self.gateway.limits, table)[name].tpm
        decision = await self.shared.limiter.reserve("probe", [Charge(quota, 0)])
        return decision.statuses[0].remaining


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    cfg = parse_config(config())
    loop = asyncio.get_running_loop()
    router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
    shared = await open_state(cfg.state, loop.time)
    transport = MockTransport(
        lambda d, r: FakeResponse(200, [chat_reply(prompt_tokens=2000, completion_tokens=5)])
    )
    contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
    yield Pipeline(build_gateway(cfg, router, shared, transport, contexts), transport, shared)
    await shared.aclose()


async def test_a_request_that_fits_stays_on_its_model(pipeline: Pipeline) -> None:
    reply = await pipeline.complete("hello")
    assert reply.deployment.id == "small-1"


async def test_a_request_too_long_goes_to_the_first_context_fallback_that_holds_it(
    pipeline: Pipeline,
) -> None:
    # medium (1,500) does not hold ~2,000 tokens: it is skipped for large.
    reply = await pipeline.complete(LONG, max_tokens=100)
    assert reply.deployment.id == "large-1"
    assert [dep for dep, _ in pipeline.transport.sent] == ["large-1"]
    assert reply.attempt.ctx.model == "small"  # metrics and records: the model asked for


async def test_the_key_is_charged_once_and_the_serving_models_quota_not_the_requested(
    pipeline: Pipeline,
) -> None:
    key = await pipeline.remaining("_keys", "team-a")
    small = await pipeline.remaining("_models", "small")
    large = await pipeline.remaining("_models", "large")
    await pipeline.complete(LONG, max_tokens=100)
    assert key - await pipeline.remaining("_keys", "team-a") == 2005  # the reported usage
    assert large - await pipeline.remaining("_models", "large") == 2005
    assert small == await pipeline.remaining("_models", "small")


async def test_a_session_is_not_bound_to_a_context_fallbacks_deployment(
    pipeline: Pipeline,
) -> None:
    reply = await pipeline.complete(LONG, max_tokens=100, user="alice")
    assert reply.deployment.id == "large-1"
    sessions = pipeline.gateway._sessions
    assert await sessions.lookup("5:small:team-a:alice", 60) is None
    reply = await pipeline.complete("short", user="alice")
    assert reply.deployment.id == "small-1"
    assert await sessions.lookup("5:small:team-a:alice", 60) == "small-1"  # bound as usual


async def test_a_request_too_long_for_every_fallback_is_still_a_400(pipeline: Pipeline) -> None:
    with pytest.raises(GatewayError) as caught:
        await pipeline.complete("word " * 9000)
    assert caught.value.status == 400
    assert caught.value.code == "no_deployment_context_window"
    assert pipeline.transport.sent == []
