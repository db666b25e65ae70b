"""Continuation failover (``stream_resume``) without sockets: a stream that breaks mid-way goes
on on another deployment from the text already sent; one stream for the client (one id, one
role chunk, one ``[DONE]``, usage of the whole answer), charged once, slots released."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from aigw.app import build_gateway
from aigw.configfile import parse_config
from aigw.fleet.deployment import Deployment
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.state import SharedState, open_state
from aigw.state.base import Charge
from aigw.tokens import load_counter
from aigw.types import Endpoint, RequestMeta, UpstreamRequest
from tests.fakes.transport import FakeResponse, MockTransport, sse

KEY = "sk-team-a"
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hello"}],
    "stream": True,
    "max_tokens": 50,
    "stream_options": {"include_usage": True},
}


def chunk(n: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion.chunk",
        "created": n,
        "model": f"upstream-{n}",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage(n: int, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion.chunk",
        "created": n,
        "model": f"upstream-{n}",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


async def dying(events: list[bytes], error: BaseException | None) -> AsyncIterator[bytes]:
    for event in events:
        yield event
    if error is None:
        await asyncio.sleep(3600)  # silence: the idle timeout must end it
    else:
        raise error


def first_part(n: int = 1) -> list[bytes]:
    return sse(
        chunk(n, {"role": "assistant", "content": ""}),
        chunk(n, {"content": "Hello"}),
        chunk(n, {"content": " wor"}),
    )


def rest(n: int = 2) -> list[bytes]:
    return sse(
        chunk(n, {"role": "assistant", "content": ""}),
        chunk(n, {"content": "ld"}),
        chunk(n, {"content": "!"}, "stop"),
        usage(n, 12, 2),  # prompt: 10 + the 2 tokens of prefix
        "[DONE]",
    )


class Pipeline:
    def __init__(self, cfg: Any, shared: SharedState, transport: MockTransport) -> None:
        loop = asyncio.get_running_loop()
        router = Router(cfg, loop.time, random.Random(0), MODEL_AWARE_FILTERS)
        contexts = ContextBuilder(load_counter(cfg.tokens.encoding, None), 256)
        self.gateway = build_gateway(cfg, router, shared, transport, contexts)
        self.transport = transport
        self.shared = shared
        self.meta = RequestMeta(authorization=f"Bearer {KEY}".encode())
        self.principal = self.gateway.authenticate(self.meta)
        self.resumes: tuple[str, ...] = ()  # the last stream's (what its record counts)

    async def stream(self, body: dict[str, Any] = BODY) -> tuple[bytes, str | None]:
        stream = await self.gateway.open_stream(
            self.principal, Endpoint.CHAT, dict(body), self.meta
        )
        got: list[bytes] = []

        async def send(data: bytes) -> None:
            got.append(data)

        code = await stream.relay(send)
        self.resumes = stream.resumes
        return b"".join(got), code

    def in_flight(self) -> dict[str, int]:
        return {d.id: d.state.in_flight for d in self.gateway.router.deployments.values()}

    async def tokens_remaining(self) -> int:
        quota = self.gateway.limits._keys["team-a"].tpm
        assert quota is not None
        decision = await self.shared.limiter.reserve("probe", [Charge(quota, 0)])
        return decision.statuses[0].remaining


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    opened: list[SharedState] = []

    async def build(handler: Any, resume: bool = True, names: str = "ab", **model: Any) -> Any:
        extra = model.pop("dep", {})
        deps = [
            {"id": n, "base_url": "http://127.0.0.1:9000/v1", "model": "m", **extra} for n in names
        ]
        cfg = parse_config(
            {
                "models": [
                    {
                        "name": "chat",
                        "policy": "round-robin",
                        "deployments": deps,
                        "stream_resume": resume,
                        **model,
                    }
                ],
                "auth": {"keys": [{"name": "team-a", "key": KEY, "rpm": 100, "tpm": 10_000}]},
            }
        )
        shared = await open_state(cfg.state, asyncio.get_running_loop().time)
        opened.append(shared)
        return Pipeline(cfg, shared, MockTransport(handler))

    yield build
    for shared in opened:
        await shared.aclose()


def events(text: bytes) -> list[Any]:
    out = []
    for line in text.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def content(evs: list[Any]) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in evs
        if isinstance(e, dict)
        for c in e.get("choices", [])
    )


def cut_then_rest(error: BaseException | None = None) -> Any:
    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        body = orjson.loads(request.body)
        if body.get("continue_final_message"):
            return FakeResponse(200, rest())
        return FakeResponse(200, dying(first_part(), error or ConnectionResetError("cut")))

    return handler


async def test_a_cut_stream_resumes_on_another_deployment_as_one_stream(make: Any) -> None:
    p = await make(cut_then_rest())
    before = await p.tokens_remaining()
    text, code = await p.stream()
    assert code is None
    evs = events(text)
    assert content(evs) == "Hello world!"
    assert evs.count("[DONE]") == 1 and evs[-1] == "[DONE]"
    assert b'"error"' not in text
    chunks = [e for e in evs if isinstance(e, dict)]
    assert {(e["id"], e["created"], e["model"]) for e in chunks} == {
        ("chatcmpl-1", 1, "upstream-1")
    }
    roles = [c for e in chunks for c in e["choices"] if "role" in c["delta"]]
    assert len(roles) == 1  # the continuation's opening chunk is not sent again
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
    # The continuation: the conversation plus the partial answer, to continue, not repeat.
    (first_dep, _), (second_dep, sent) = p.transport.sent
    assert first_dep != second_dep
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hello wor"}
    assert sent["continue_final_message"] is True
    assert sent["add_generation_prompt"] is False
    assert sent["max_tokens"] == 48  # 50 less the two tokens already sent
    assert p.in_flight() == {"a": 0, "b": 0}
    assert before - await p.tokens_remaining() == 14  # charged once, for the whole answer
    # The broken attempt counts against its deployment.
    broken = p.gateway.router.deployments[first_dep]
    assert broken.state.consecutive_failures == 1
    assert p.resumes == ("resumed",)


async def test_without_stream_resume_the_client_gets_one_error_event(make: Any) -> None:
    p = await make(cut_then_rest(), resume=False)
    text, code = await p.stream()
    evs = events(text)
    assert code is not None
    assert content(evs) == "Hello wor"
    assert "[DONE]" not in evs
    assert "error" in evs[-1]
    assert len(p.transport.sent) == 1
    assert p.resumes == ()  # no stream_resume: nothing for aigw_stream_resumes_total


async def test_an_idle_upstream_is_resumed(make: Any) -> None:
    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        if orjson.loads(request.body).get("continue_final_message"):
            return FakeResponse(200, rest())
        return FakeResponse(200, dying(first_part(), None))

    p = await make(handler, dep={"timeouts": {"idle": 0.05}})
    text, code = await p.stream()
    assert code is None
    assert content(events(text)) == "Hello world!"


async def test_an_upstreams_own_refusal_in_the_stream_is_not_resumed(make: Any) -> None:
    # An OpenAI-compatible upstream's error event is the upstream's answer: relayed as it is,
    # never continued elsewhere (only transport failures and retryable errors are resumed).
    refusal = {"error": {"message": "content policy", "type": "invalid_request_error"}}

    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(200, [*first_part(), *sse(refusal)])

    p = await make(handler)
    text, _ = await p.stream()
    assert len(p.transport.sent) == 1
    assert events(text)[-1] == refusal
    assert p.resumes == ()  # an answer, not a break: not counted as a resume outcome


async def test_a_tool_call_stream_is_not_resumed(make: Any) -> None:
    call = {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{"}}]}

    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(
            200, dying(sse(chunk(1, {"role": "assistant"}), chunk(1, call)), ConnectionError())
        )

    p = await make(handler)
    _, code = await p.stream()
    assert code is not None
    assert len(p.transport.sent) == 1
    assert p.resumes == ("not_resumable",)


async def test_resumes_are_bounded_per_request(make: Any) -> None:
    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        return FakeResponse(200, dying(first_part(), ConnectionResetError("cut")))

    p = await make(handler, names="abc")
    text, code = await p.stream()
    assert code is not None
    assert len(p.transport.sent) == 2  # the stream and one continuation (max_stream_resumes: 1)
    assert content(events(text)) == "Hello worHello wor"  # each attempt's text, sent once
    assert p.resumes == ("resumed", "not_resumable")
    assert p.in_flight() == {"a": 0, "b": 0, "c": 0}


async def test_two_resumes_when_allowed_continue_from_all_the_text_sent(make: Any) -> None:
    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        body = orjson.loads(request.body)
        if not body.get("continue_final_message"):
            return FakeResponse(200, dying(first_part(), ConnectionResetError()))
        if body["messages"][-1]["content"] == "Hello wor":
            return FakeResponse(
                200,
                dying(
                    sse(chunk(2, {"role": "assistant"}), chunk(2, {"content": "l"})),
                    ConnectionResetError(),
                ),
            )
        assert body["messages"][-1]["content"] == "Hello worl"
        assert body["max_tokens"] == 47
        return FakeResponse(200, sse(chunk(3, {"content": "d"}, "stop"), usage(3, 13, 1), "[DONE]"))

    p = await make(handler, names="abc", max_stream_resumes=2)
    text, code = await p.stream()
    assert code is None
    evs = events(text)
    assert content(evs) == "Hello world"
    assert evs[-2]["usage"]["completion_tokens"] == 4
    assert evs[-2]["id"] == "chatcmpl-1"
    assert p.resumes == ("resumed", "resumed")


async def test_a_continuation_no_deployment_can_open_is_a_failed_resume(make: Any) -> None:
    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        if orjson.loads(request.body).get("continue_final_message"):
            raise ConnectionError("refused")
        return FakeResponse(200, dying(first_part(), ConnectionResetError("cut")))

    p = await make(handler)
    text, code = await p.stream()
    assert code is not None
    assert "error" in events(text)[-1]
    assert len(p.transport.sent) == 2  # the stream, and the continuation that failed
    assert p.resumes == ("failed",)
    assert p.in_flight() == {"a": 0, "b": 0}


def anthropic_sse(*events: tuple[str, dict[str, Any]]) -> list[bytes]:
    return [
        f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **data}) + b"\n\n"
        for kind, data in events
    ]


def anthropic_stream(input_tokens: int, *texts: str, end: bool) -> list[bytes]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": message}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    events += [
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}})
        for t in texts
    ]
    if end:
        events += [
            ("content_block_stop", {"index": 0}),
            (
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(texts)}},
            ),
            ("message_stop", {}),
        ]
    return anthropic_sse(*events)


async def test_an_anthropic_stream_resumes_with_an_assistant_prefill(make: Any) -> None:
    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        body = orjson.loads(request.body)
        if body["messages"][-1]["role"] == "assistant":
            return FakeResponse(200, anthropic_stream(12, "ld!", end=True))
        return FakeResponse(
            200, dying(anthropic_stream(10, "Hello", " wor", end=False), ConnectionResetError())
        )

    p = await make(
        handler,
        dep={"provider": "anthropic", "base_url": "http://127.0.0.1:9000", "api_key": "k"},
    )
    text, code = await p.stream()
    assert code is None
    evs = events(text)
    assert content(evs) == "Hello world!"
    assert evs.count("[DONE]") == 1 and evs[-1] == "[DONE]"
    chunks = [e for e in evs if isinstance(e, dict)]
    assert len({e["id"] for e in chunks}) == 1
    assert len([c for e in chunks for c in e["choices"] if "role" in c["delta"]]) == 1
    assert chunks[-1]["usage"]["completion_tokens"] == 3  # 2 sent + 1 continued
    assert chunks[-1]["usage"]["prompt_tokens"] == 10
    sent = p.transport.sent[1][1]
    assert sent["messages"][-1]["role"] == "assistant"
    assert "Hello wor" in orjson.dumps(sent["messages"][-1]["content"]).decode()
    assert "continue_final_message" not in sent
    assert sent["max_tokens"] == 48
    assert p.in_flight() == {"a": 0, "b": 0}


async def test_a_completions_stream_resumes_from_its_prompt_plus_the_text_sent(make: Any) -> None:
    def completion(n: int, text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": f"cmpl-{n}",
            "object": "text_completion",
            "created": n,
            "model": "m",
            "choices": [choice],
        }

    def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        body = orjson.loads(request.body)
        if body["prompt"] == "Once":
            return FakeResponse(
                200, dying(sse(completion(1, " upon"), completion(1, " a")), ConnectionResetError())
            )
        assert body["prompt"] == "Once upon a"
        assert body["max_tokens"] == 8
        return FakeResponse(200, sse(completion(2, " time", "length"), "[DONE]"))

    p = await make(handler)
    body = {"model": "chat", "prompt": "Once", "stream": True, "max_tokens": 10}
    stream = await p.gateway.open_stream(p.principal, Endpoint.COMPLETIONS, body, p.meta)
    got: list[bytes] = []

    async def send(data: bytes) -> None:
        got.append(data)

    assert await stream.relay(send) is None
    evs = events(b"".join(got))
    assert "".join(e["choices"][0]["text"] for e in evs if isinstance(e, dict)) == " upon a time"
    assert {e["id"] for e in evs if isinstance(e, dict)} == {"cmpl-1"}
    assert evs.count("[DONE]") == 1


async def test_a_client_gone_while_the_continuation_opens_releases_everything(
    make: Any,
) -> None:
    opened = asyncio.Event()

    async def handler(deployment: Deployment, request: UpstreamRequest) -> FakeResponse:
        if orjson.loads(request.body).get("continue_final_message"):
            opened.set()
            await asyncio.sleep(3600)  # the continuation never answers
        return FakeResponse(200, dying(first_part(), ConnectionResetError()))

    p = await make(handler)
    before = await p.tokens_remaining()
    relay = asyncio.create_task(p.stream())
    await asyncio.wait_for(opened.wait(), 5)
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay
    assert p.in_flight() == {"a": 0, "b": 0}
    assert await p.tokens_remaining() <= before  # reconciled, never charged twice
