"""The failover loop's bounds, without sockets: backoff, Retry-After, the retry budget, the
request deadline, and charges counted once per client request across retries and fallbacks.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.errors import DeadlineExceededError, GatewayError, UpstreamStatusError
from aigw.fleet.attempt import Attempt
from aigw.gateway import Gateway
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.state import SharedState, open_state
from aigw.state.base import Charge, Quota
from aigw.tokens import load_counter
from aigw.types import Endpoint, RequestMeta, UpstreamRequest
from tests.fakes.transport import FakeResponse, MockTransport, chat_reply

KEY = "sk-team-a"
BODY: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
FAIL = b'{"error": {"message": "boom"}}'


def dep(name: str, **extra: Any) -> dict[str, Any]:
    return {"id": name, "base_url": f"http://127.0.0.1:9/{name}/v1", "model": "m", **extra}


class Highest(random.Random):
    """Jitter that always draws the top of its range, so backoff waits are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Gw:
    def __init__(self, gateway: Gateway, transport: MockTransport, shared: SharedState) -> None:
        self.gateway = gateway
        self.transport = transport
        self.shared = shared
        self.meta = RequestMeta(authorization=f"Bearer {KEY}".encode())
        self.principal = gateway.authenticate(self.meta)
        self.sent_at: list[tuple[str, float]] = []

    async def complete(self, body: dict[str, Any] = BODY) -> bytes:
        reply = await self.gateway.complete(self.principal, Endpoint.CHAT, dict(body), self.meta)
        await reply.account()
        return reply.body

    async def error(self, body: dict[str, Any] = BODY) -> GatewayError:
        try:
            await self.complete(body)
        except GatewayError as exc:
            return exc
        raise AssertionError("the request succeeded")

    async def remaining(self, quota: Quota | None) -> int:
        assert quota is not None
        decision = await self.shared.limiter.reserve("probe", [Charge(quota, 0)])
        return decision.statuses[0].remaining

    def sent(self) -> list[str]:
        return [d for d, _ in self.transport.sent]


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    opened: list[SharedState] = []

    async def build(
        handler: Any,
        deployments: list[dict[str, Any]],
        retry: dict[str, Any] | None = None,
        health: dict[str, Any] | None = None,
        rng: random.Random | None = None,
        **extra: Any,
    ) -> Gw:
        models: list[dict[str, Any]] = [
            {"name": "chat", "policy": "round-robin", "deployments": deployments, **extra}
        ]
        if "fallbacks" in extra:
            models.append(
                {"name": "chat2", "policy": "round-robin", "deployments": [dep("fallback")]}
            )
        raw: dict[str, Any] = {
            "models": models,
            "auth": {"keys": [{"name": "team-a", "key": KEY, "rpm": 1000, "tpm": 100_000}]},
            "retry": retry or {},
            "health": health or {"consecutive_failures": 1000},
        }
        cfg = parse_config(raw)
        loop = asyncio.get_running_loop()
        router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
        shared = await open_state(cfg.state, loop.time)
        opened.append(shared)
        transport = MockTransport(handler)
        contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
        gateway = build_gateway(cfg, router, shared, transport, contexts, rng=rng)
        return Gw(gateway, transport, shared)

    yield build
    for shared in opened:
        await shared.aclose()


# --- backoff ----------------------------------------------------------------------------


async def test_first_retry_is_immediate_then_backoff_grows(make: Any) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        times.append(loop.time())
        return FakeResponse(500, [FAIL])

    gw = await make(
        handler,
        [dep("a"), dep("b"), dep("c"), dep("d")],
        retry={"max_attempts": 4, "backoff_base_s": 0.04, "backoff_max_s": 0.06},
        rng=Highest(),
    )
    error = await gw.error()
    assert error.code == "all_deployments_failed"
    assert len(set(gw.sent())) == 4  # each retry on another deployment
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < 0.02  # the first retry goes at once
    assert 0.04 <= gaps[1] < 0.1  # then base
    assert 0.06 <= gaps[2] < 0.12  # then 2 x base, capped at backoff_max_s


# --- Retry-After ------------------------------------------------------------------------


async def test_an_upstream_retry_after_is_relayed_and_honoured(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(429, [b'{"error": {"message": "slow down"}}'], {"Retry-After": "2"})

    gw = await make(handler, [dep("a")])
    error = await gw.error()
    assert isinstance(error, UpstreamStatusError) and error.status == 429
    assert error.headers["Retry-After"] == "2"  # the client learns it too
    # The only deployment asked for 2 s of quiet: the next request is not sent to it.
    error = await gw.error()
    assert gw.sent() == ["a"]
    assert error.status == 503 and error.code == "upstream_retry_after"
    assert error.headers["Retry-After"] == "2"


async def test_a_deployment_is_not_retried_before_its_retry_after(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id == "a":
            return FakeResponse(503, [FAIL], {"retry-after-ms": "300"})
        return FakeResponse(200, [chat_reply()])

    gw = await make(handler, [dep("a"), dep("b")])
    for _ in range(6):
        await gw.complete()
    assert len(gw.sent()) == 7 and gw.sent().count("a") == 1  # round-robin would alternate
    await asyncio.sleep(0.35)
    for _ in range(2):
        await gw.complete()
    assert "a" in gw.sent()[7:]  # back in rotation once the wait is over


# --- retry budget -----------------------------------------------------------------------


async def test_a_half_broken_deployment_cannot_make_a_retry_storm(make: Any) -> None:
    """Chaos test 2 of the uptime issue, in process: one of two deployments fails half its
    requests; under concurrency, attempts stay within 1.2 x requests (+ the floor of 3)."""
    rng = random.Random(7)

    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        await asyncio.sleep(0.002)
        if deployment.id == "a" and rng.random() < 0.5:
            return FakeResponse(500, [FAIL])
        return FakeResponse(200, [chat_reply()])

    gw = await make(handler, [dep("a"), dep("b")], retry={"budget_ratio": 0.2})
    requests = 400
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            await gw.complete()
        except GatewayError:
            failed += 1

    for _ in range(requests // 40):  # 40 at a time
        await asyncio.gather(*(one() for _ in range(40)))
    attempts = len(gw.transport.sent)
    assert attempts <= 1.2 * requests + 3
    budget = gw.gateway.retries.budgets["chat"]
    assert budget.exhausted > 0 and failed == budget.exhausted  # refused retries fail
    assert budget.active == 0


async def test_a_fleet_that_always_fails_gets_no_storm(make: Any) -> None:
    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        await asyncio.sleep(0.001)
        return FakeResponse(500, [FAIL])

    gw = await make(handler, [dep("a"), dep("b"), dep("c")], retry={"max_attempts": 3})

    async def one() -> None:
        with pytest.raises(GatewayError):
            await gw.complete()

    for _ in range(10):
        await asyncio.gather(*(one() for _ in range(30)))
    assert len(gw.transport.sent) <= 1.2 * 300 + 3  # not 3 x 300
    assert gw.gateway.retries.exhausted()["chat"] > 0


async def test_all_backends_down_is_a_quick_503_with_retry_after_and_no_storm(
    make: Any,
) -> None:
    """Chaos test 3: every deployment refuses connections. Once outlier detection has
    ejected them, a request makes one attempt (panic mode) and is not retried."""

    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        raise ConnectionError("refused")

    gw = await make(
        handler,
        [dep("a"), dep("b"), dep("c")],
        health={"consecutive_failures": 2, "base_ejection_seconds": 5, "max_ejection_seconds": 10},
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    errors = [await gw.error() for _ in range(50)]
    assert loop.time() - started < 1.0
    assert len(gw.transport.sent) <= 50 + 6  # a retry per request only until all are ejected
    last = errors[-1]
    assert last.status == 503 and last.code == "no_healthy_deployment"
    # Until the soonest comes back (each failed panic try doubled its ejection, up to 10 s).
    assert 1 <= int(last.headers["Retry-After"]) <= 10


# --- the deadline -----------------------------------------------------------------------


async def test_the_deadline_cuts_a_slow_attempt_with_504_and_refunds(make: Any) -> None:
    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        await asyncio.sleep(5)
        raise AssertionError("unreachable")

    gw = await make(handler, [dep("a", max_concurrency=1)], retry={"deadline_s": 0.1})
    tpm = gw.gateway.limits._keys["team-a"].tpm
    before = await gw.remaining(tpm)
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await gw.error()
    assert isinstance(error, DeadlineExceededError)
    assert error.status == 504 and error.code == "request_deadline_exceeded"
    assert loop.time() - started < 0.5
    assert await gw.remaining(tpm) == before
    assert gw.gateway.router.deployments["a"].state.in_flight == 0


async def test_the_deadline_covers_the_queue_wait(make: Any) -> None:
    release = asyncio.Event()

    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        await release.wait()
        return FakeResponse(200, [chat_reply()])

    gw = await make(
        handler,
        [dep("a", max_concurrency=1)],
        retry={"deadline_s": 0.15},
        queue={"timeout_s": 30},
    )
    holder = asyncio.ensure_future(gw.complete())
    await asyncio.sleep(0.01)
    error = await gw.error()  # queues behind the holder, past its deadline
    assert error.code == "request_deadline_exceeded"
    assert gw.gateway.admission.depth("chat") == 0
    release.set()
    with pytest.raises(DeadlineExceededError):
        await holder  # the holder's own deadline passed too


# --- charges once per client request ----------------------------------------------------


class Outcomes:
    def __init__(self) -> None:
        self.successes = 0

    def on_success(self, attempt: Attempt) -> None:
        self.successes += 1


async def test_two_failovers_then_success_are_charged_once(make: Any) -> None:
    """a fails, b fails, then the fallback model's deployment answers: the key's and the
    model's quotas are charged one request and the real usage; the failed deployments'
    own quotas are refunded, the one that answered is charged."""

    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id == "fallback":
            return FakeResponse(200, [chat_reply(prompt_tokens=7, completion_tokens=5)])
        return FakeResponse(500, [FAIL])

    gw = await make(
        handler,
        [dep("a", rpm=10, tpm=10_000), dep("b", rpm=10, tpm=10_000)],
        fallbacks=["chat2"],
        rpm=100,
        tpm=50_000,
    )
    limits = gw.gateway.limits
    key, model = limits._keys["team-a"], limits._models["chat"]
    quotas = [key.rpm, key.tpm, model.rpm, model.tpm]
    quotas += [limits._deployments[d].rpm for d in ("a", "b")]
    quotas += [limits._deployments[d].tpm for d in ("a", "b")]
    before = [await gw.remaining(q) for q in quotas]
    await gw.complete({**BODY, "max_tokens": 1000})
    assert sorted(gw.sent()[:2]) == ["a", "b"] and gw.sent()[2:] == ["fallback"]
    after = [await gw.remaining(q) for q in quotas]
    spent = [b - a for b, a in zip(before, after, strict=True)]
    assert spent == [1, 12, 1, 12, 0, 0, 0, 0]


async def test_a_request_that_fails_everywhere_is_charged_nothing(make: Any) -> None:
    gw = await make(
        lambda d, r: FakeResponse(503, [FAIL]),
        [dep("a", rpm=10), dep("b", rpm=10)],
        fallbacks=["chat2"],
        rpm=100,
        tpm=50_000,
    )
    limits = gw.gateway.limits
    key, model = limits._keys["team-a"], limits._models["chat"]
    quotas = [key.rpm, key.tpm, model.rpm, model.tpm, limits._deployments["a"].rpm]
    before = [await gw.remaining(q) for q in quotas]
    error = await gw.error()
    assert error.status == 503 and error.code == "all_deployments_failed"
    assert "Retry-After" in error.headers
    assert sorted(gw.sent()[:2]) == ["a", "b"] and gw.sent()[2:] == ["fallback"]
    assert [await gw.remaining(q) for q in quotas] == before


async def test_a_stream_refused_with_retry_after_relays_it(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(503, [FAIL], {"Retry-After": "3"})

    gw = await make(handler, [dep("a")])
    body = {**BODY, "stream": True}
    with pytest.raises(UpstreamStatusError) as info:
        await gw.gateway.open_stream(gw.principal, Endpoint.CHAT, body, gw.meta)
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "3"
    state = gw.gateway.router.deployments["a"].state
    assert state.retry_after_until > asyncio.get_running_loop().time() + 2
