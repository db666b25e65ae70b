"""The request pipeline without sockets: failover, leases, queueing, usage accounting, refunds.

A Gateway built as the app builds it, over in-memory state and a MockTransport; each test
drives ``complete``/``open_stream`` and checks what the stages left behind: slots released,
quotas charged, reconciled or refunded, signals recorded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.errors import GatewayError, RateLimitError, UpstreamStatusError
from aigw.gateway import Gateway
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.state import SharedState, open_state
from aigw.tokens import load_counter
from aigw.types import Endpoint, Principal, RequestMeta, UpstreamRequest
from tests.fakes.transport import FakeResponse, MockTransport, chat_reply, sse

KEY = "sk-team-a"
BODY: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


def config(**model_extra: Any) -> dict[str, Any]:
    deployments = model_extra.pop(
        "deployments",
        [
            {"id": name, "base_url": f"http://127.0.0.1:{9000 + i}/v1", "model": "m"}
            for i, name in enumerate(["a", "b"])
        ],
    )
    return {
        "models": [
            {"name": "chat", "policy": "round-robin", "deployments": deployments, **model_extra}
        ],
        "auth": {"keys": [{"name": "team-a", "key": KEY, "rpm": 100, "tpm": 10_000}]},
    }


class Pipeline:
    """A gateway plus what tests inspect: its transport, state and router."""

    def __init__(self, gateway: Gateway, transport: MockTransport, shared: SharedState) -> None:
        self.gateway = gateway
        self.transport = transport
        self.shared = shared
        self.meta = RequestMeta(authorization=f"Bearer {KEY}".encode())
        self.principal: Principal = gateway.authenticate(self.meta)

    async def complete(self, body: dict[str, Any] = BODY) -> bytes:
        reply = await self.gateway.complete(self.principal, Endpoint.CHAT, dict(body), self.meta)
        await reply.account()
        return reply.body

    def in_flight(self) -> dict[str, int]:
        return {d.id: d.state.in_flight for d in self.gateway.router.deployments.values()}

    async def tokens_remaining(self) -> int:
        """Remaining TPM of team-a, read through a zero-token probe reservation."""
        from aigw.state.base import Charge

        quota = self.gateway.limits._keys["team-a"].tpm
        assert quota is not None
        decision = await self.shared.limiter.reserve("probe", [Charge(quota, 0)])
        return decision.statuses[0].remaining


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    opened: list[SharedState] = []

    async def build(handler: Any, **model_extra: Any) -> Pipeline:
        cfg = parse_config(config(**model_extra))
        loop = asyncio.get_running_loop()
        router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
        shared = await open_state(cfg.state, loop.time)
        opened.append(shared)
        transport = MockTransport(handler)
        contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
        return Pipeline(build_gateway(cfg, router, shared, transport, contexts), transport, shared)

    yield build
    for shared in opened:
        await shared.aclose()


async def test_a_reply_is_relayed_and_its_usage_reconciles_the_reservation(make: Any) -> None:
    p = await make(
        lambda d, r: FakeResponse(200, [chat_reply(prompt_tokens=7, completion_tokens=5)])
    )
    before = await p.tokens_remaining()
    body = await p.complete({**BODY, "max_tokens": 1000})
    assert b'"usage"' in body
    # Charged 12 tokens in the end (7 + 5), not the reserved prompt + 1000.
    assert before - await p.tokens_remaining() == 12
    assert p.in_flight() == {"a": 0, "b": 0}


async def test_failover_releases_the_failed_attempt_and_succeeds_on_the_next(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id == "a":
            return FakeResponse(500, [b'{"error": {"message": "boom"}}'])
        return FakeResponse(200, [chat_reply()])

    p = await make(handler)
    for _ in range(4):
        await p.complete()
    assert {dep for dep, _ in p.transport.sent} == {"a", "b"}
    assert p.in_flight() == {"a": 0, "b": 0}
    assert p.gateway.router.deployments["a"].state.consecutive_failures >= 1
    assert all(r.released or r.closed for r in p.transport.responses)


async def test_when_every_deployment_fails_nothing_is_charged(make: Any) -> None:
    p = await make(lambda d, r: FakeResponse(503, [b'{"error": {"message": "down"}}']))
    before = await p.tokens_remaining()
    with pytest.raises(GatewayError) as info:
        await p.complete()
    assert info.value.status == 503
    assert await p.tokens_remaining() == before
    assert p.in_flight() == {"a": 0, "b": 0}


async def test_a_client_error_is_not_retried_and_is_refunded(make: Any) -> None:
    p = await make(lambda d, r: FakeResponse(400, [b'{"error": {"message": "bad"}}']))
    before = await p.tokens_remaining()
    with pytest.raises(UpstreamStatusError):
        await p.complete()
    assert len(p.transport.sent) == 1
    assert await p.tokens_remaining() == before


async def test_a_client_gone_before_the_reply_is_refunded_and_releases_its_slot(
    make: Any,
) -> None:
    sent = asyncio.Event()
    never = asyncio.Event()

    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        sent.set()
        await never.wait()
        raise AssertionError("unreachable")

    p = await make(handler, deployments=[_dep("a", max_concurrency=1)])
    before = await p.tokens_remaining()
    task = asyncio.ensure_future(p.complete())
    await sent.wait()
    assert p.in_flight() == {"a": 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert p.in_flight() == {"a": 0}
    assert await p.tokens_remaining() == before
    # The slot is free again: the next request does not queue.
    p.transport._handler = lambda d, r: FakeResponse(200, [chat_reply()])
    await asyncio.wait_for(p.complete(), 1)


async def test_at_max_concurrency_a_request_waits_for_the_slot(make: Any) -> None:
    release = asyncio.Event()
    first_sent = asyncio.Event()
    calls = 0

    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_sent.set()
            await release.wait()
        return FakeResponse(200, [chat_reply()])

    p = await make(handler, deployments=[_dep("a", max_concurrency=1)])
    first = asyncio.ensure_future(p.complete())
    await first_sent.wait()
    second = asyncio.ensure_future(p.complete())
    done, _ = await asyncio.wait([second], timeout=0.05)
    assert not done and calls == 1  # waiting in the queue, not failed with 503
    assert p.gateway.admission.depth("chat") == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 2)
    assert calls == 2
    assert p.in_flight() == {"a": 0}


async def test_queue_timeout_is_a_429_with_retry_after_and_refunds(make: Any) -> None:
    hold = asyncio.Event()

    async def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        await hold.wait()
        return FakeResponse(200, [chat_reply()])

    p = await make(handler, deployments=[_dep("a", max_concurrency=1)], queue={"timeout_s": 0.05})
    first = asyncio.ensure_future(p.complete())
    await asyncio.sleep(0)
    before = await p.tokens_remaining()
    with pytest.raises(RateLimitError) as info:
        await p.complete()
    assert info.value.code == "queue_timeout"
    assert "Retry-After" in info.value.headers
    assert await p.tokens_remaining() == before
    hold.set()
    await first


async def test_a_stream_reports_usage_and_releases_when_relayed(make: Any) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = sse(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {
            **chunk,
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        },
        "[DONE]",
    )
    p = await make(
        lambda d, r: FakeResponse(200, events), deployments=[_dep("a", max_concurrency=1)]
    )
    before = await p.tokens_remaining()
    stream = await p.gateway.open_stream(
        p.principal, Endpoint.CHAT, {**BODY, "stream": True}, p.meta
    )
    assert p.in_flight() == {"a": 1}
    got: list[bytes] = []

    async def send(data: bytes) -> None:
        got.append(data)

    await stream.relay(send)
    text = b"".join(got)
    assert b'"usage"' not in text  # the client did not ask for usage: the extra chunk is gone
    assert text.endswith(b"data: [DONE]\n\n")
    assert p.in_flight() == {"a": 0}
    assert before - await p.tokens_remaining() == 4
    sent_body = p.transport.sent[0][1]
    assert sent_body["stream_options"] == {"include_usage": True}


def _dep(name: str, **extra: Any) -> dict[str, Any]:
    return {"id": name, "base_url": "http://127.0.0.1:9000/v1", "model": "m", **extra}


async def test_a_deployment_whose_own_quota_is_spent_is_skipped_not_failed(make: Any) -> None:
    p = await make(
        lambda d, r: FakeResponse(200, [chat_reply()]),
        deployments=[_dep("a", rpm=1), _dep("b")],
    )
    for _ in range(4):
        await p.complete()
    served = [dep for dep, _ in p.transport.sent]
    assert served.count("a") == 1  # its upstream allows one request a minute
    assert served.count("b") == 3
    assert p.gateway.router.deployments["a"].state.consecutive_failures == 0


async def test_when_every_deployment_quota_is_spent_the_answer_is_429(make: Any) -> None:
    p = await make(lambda d, r: FakeResponse(200, [chat_reply()]), deployments=[_dep("a", rpm=1)])
    await p.complete()
    with pytest.raises(RateLimitError) as info:
        await p.complete()
    assert info.value.code == "upstream_quota_exhausted"
    assert int(info.value.headers["Retry-After"]) >= 1


class Recorder:
    """An AttemptObserver that writes down the events it gets."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_dispatch(self, attempt: Any) -> None:
        self.events.append(f"dispatch:{attempt.deployment.id}")

    def on_first_byte(self, attempt: Any) -> None:
        self.events.append("first_byte")

    def on_success(self, attempt: Any) -> None:
        self.events.append("success")

    def on_failure(self, attempt: Any, error: GatewayError) -> None:
        self.events.append(f"failure:{error.status}")

    def on_finish(self, attempt: Any) -> None:
        self.events.append("finish")


async def test_observers_hear_each_attempt_once_in_order(make: Any) -> None:
    from aigw.fleet.attempt import Observers

    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id == "a":
            return FakeResponse(502, [b"bad gateway"])
        return FakeResponse(200, [chat_reply()])

    p = await make(handler)
    recorder = Recorder()
    p.gateway._observers = Observers([recorder])
    for _ in range(3):
        await p.complete()
    attempts = [recorder.events[i : i + 3] for i in range(0, len(recorder.events), 3)]
    assert len(recorder.events) == 3 * len(attempts)
    for attempt in attempts:  # each attempt: dispatch, one outcome, finish
        expected = "failure:502" if attempt[0] == "dispatch:a" else "success"
        assert attempt[1:] == [expected, "finish"]
    assert ["dispatch:a", "failure:502", "finish"] in attempts


async def test_a_reply_holds_its_slot_until_it_is_accounted(make: Any) -> None:
    p = await make(
        lambda d, r: FakeResponse(200, [chat_reply()]), deployments=[_dep("a", max_concurrency=1)]
    )
    reply = await p.gateway.complete(p.principal, Endpoint.CHAT, dict(BODY), p.meta)
    assert p.in_flight() == {"a": 1}  # sent to the client first, then released
    await reply.account()
    await reply.account()  # settling twice releases once
    assert p.in_flight() == {"a": 0}


async def test_an_upstream_refusing_the_gateways_credentials_fails_over_as_a_502(
    make: Any,
) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id == "a":
            return FakeResponse(401, [b'{"error": {"message": "Incorrect API key: sk-up***"}}'])
        return FakeResponse(200, [chat_reply()])

    p = await make(handler, deployments=[_dep("a"), _dep("b")])
    for _ in range(2):
        await p.complete()  # never the client's 401: a's failure moves on to b
    assert p.gateway.router.deployments["a"].state.failures >= 1
    p2 = await make(handler, deployments=[_dep("a")])
    with pytest.raises(GatewayError) as info:
        await p2.complete()
    assert (info.value.status, info.value.code) == (502, "upstream_auth_failed")
    assert "sk-up" not in info.value.message


async def test_a_slow_client_is_not_the_deployments_fault(make: Any) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = sse(
        *({**chunk, "choices": [{"index": 0, "delta": {"content": "x"}}]} for _ in range(3)),
        "[DONE]",
    )
    p = await make(lambda d, r: FakeResponse(200, events), deployments=[_dep("a")])
    deployment = p.gateway.router.deployments["a"]
    object.__setattr__(deployment.config.timeouts, "idle", 0.02)  # frozen config, test only
    stream = await p.gateway.open_stream(
        p.principal, Endpoint.CHAT, {**BODY, "stream": True}, p.meta
    )
    got: list[bytes] = []

    async def slow_send(data: bytes) -> None:
        await asyncio.sleep(0.05)  # the client reads slower than the idle timeout
        got.append(data)

    await stream.relay(slow_send)
    assert b"error" not in b"".join(got)
    assert deployment.state.failures == 0


async def test_an_upstream_quota_is_refunded_when_the_upstream_sent_nothing(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        raise ConnectionError("refused")

    p = await make(handler, deployments=[_dep("a", rpm=1)])
    for _ in range(2):  # the second would be refused (429) had the first one been charged
        with pytest.raises(GatewayError) as info:
            await p.complete()
        assert info.value.code != "upstream_quota_exhausted"


async def test_a_client_gone_while_the_upstream_quota_is_charged_releases_its_slot(
    make: Any,
) -> None:
    p = await make(
        lambda d, r: FakeResponse(200, [chat_reply()]),
        deployments=[_dep("a", max_concurrency=1, rpm=100)],
    )
    entered = asyncio.Event()
    never = asyncio.Event()

    async def stuck(*args: Any) -> None:
        entered.set()
        await never.wait()  # a shared-state call that does not come back

    original = p.gateway.limits.reserve_deployment
    p.gateway.limits.reserve_deployment = stuck  # type: ignore[method-assign]
    task = asyncio.ensure_future(p.complete())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    p.gateway.limits.reserve_deployment = original  # type: ignore[method-assign]
    await asyncio.wait_for(p.complete(), 1)  # the slot came back: no queue_timeout


async def test_an_observer_that_raises_still_lets_the_attempt_finish(make: Any) -> None:
    from aigw.fleet.attempt import Observers
    from aigw.routing.recorder import SignalRecorder

    class Broken(Recorder):
        def on_success(self, attempt: Any) -> None:
            raise RuntimeError("observer bug")

    p = await make(lambda d, r: FakeResponse(200, [chat_reply()]), deployments=[_dep("a")])
    p.gateway._observers = Observers([SignalRecorder(), Broken()])
    with pytest.raises(RuntimeError):
        await p.complete()
    assert p.in_flight() == {"a": 0}  # on_finish ran, and the slot was released


# --- non-streamed replies: capped, and a JSON object --------------------------------------


async def test_a_reply_over_the_cap_is_aborted_and_another_deployment_answers(make: Any) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        if deployment.id == "a":
            return FakeResponse(200, iter(lambda: b"x" * 4096, None))  # never ends
        return FakeResponse(200, [chat_reply()])

    p = await make(handler)
    p.gateway._send._max_reply_bytes = 64 * 1024
    for _ in range(2):
        assert b'"usage"' in await p.complete()
    big = [
        r for (dep, _), r in zip(p.transport.sent, p.transport.responses, strict=True) if dep == "a"
    ]
    assert big and all(r.closed and not r.released for r in big)
    assert p.in_flight() == {"a": 0, "b": 0}
    assert p.gateway.router.deployments["a"].state.consecutive_failures >= 1


async def test_a_reply_over_the_cap_from_the_only_deployment_is_a_502(make: Any) -> None:
    p = await make(
        lambda d, r: FakeResponse(200, [b"x" * 40_000, b"y" * 40_000]),
        deployments=[{"id": "solo", "base_url": "http://127.0.0.1:9000/v1", "model": "m"}],
    )
    p.gateway._send._max_reply_bytes = 64 * 1024
    with pytest.raises(GatewayError) as info:
        await p.complete()
    assert (info.value.status, info.value.code) == (502, "upstream_reply_too_large")
    assert "solo" in info.value.message and "127.0.0.1" not in info.value.message
    assert p.in_flight() == {"solo": 0}


@pytest.mark.parametrize(
    "reply", [b"<html>502 Bad Gateway</html>", b"[1, 2]", b'"text"', b"", b'{"usage": ']
)
async def test_a_2xx_reply_that_is_not_a_json_object_is_a_retryable_502(
    make: Any, reply: bytes
) -> None:
    def handler(deployment: Any, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(200, [reply] if deployment.id == "a" else [chat_reply()])

    p = await make(handler)
    for _ in range(2):  # a answers one of them; b then serves it
        assert b'"usage"' in await p.complete()
    assert p.gateway.router.deployments["a"].state.consecutive_failures >= 1

    solo = await make(
        lambda d, r: FakeResponse(200, [reply]),
        deployments=[{"id": "solo", "base_url": "http://127.0.0.1:9000/v1", "model": "m"}],
    )
    with pytest.raises(GatewayError) as info:
        await solo.complete()
    assert (info.value.status, info.value.code) == (502, "upstream_bad_reply")
    assert info.value.message.startswith("deployment solo:")
