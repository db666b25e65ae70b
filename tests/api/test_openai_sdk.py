"""Every endpoint through the real OpenAI SDK (sync and async) against a running gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_MODEL, deployment
from tests.servers import ThreadedServer, serve_in_thread

MODEL = "llama-3-8b"


@pytest.fixture
def backends(start_backend: Callable[..., ThreadedServer]) -> dict[str, ThreadedServer]:
    return {"gpu-a": start_backend(seed=1), "gpu-b": start_backend(seed=2)}


@pytest.fixture
def gateway(
    backends: dict[str, ThreadedServer], start_gateway: Callable[..., ThreadedServer]
) -> ThreadedServer:
    deployments = [deployment(server.url, name) for name, server in backends.items()]
    return start_gateway(
        {"models": [{"name": MODEL, "policy": "round-robin", "deployments": deployments}]}
    )


@pytest.fixture
def client(gateway: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def aclient(gateway: ThreadedServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        yield sdk


HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]


def test_chat_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=5
    )
    completion = raw.parse()
    assert raw.headers["x-aigw-deployment"] in {"gpu-a", "gpu-b"}
    assert raw.headers["x-request-id"]
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens <= 5


def test_round_robin_alternates_deployments(client: openai.OpenAI) -> None:
    served = [
        client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, max_tokens=1
        ).headers["x-aigw-deployment"]
        for _ in range(4)
    ]
    assert sorted(served) == ["gpu-a", "gpu-a", "gpu-b", "gpu-b"]
    assert served[0] != served[1]


def test_client_request_id_is_echoed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=1, extra_headers={"x-request-id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42"


def test_chat_stream_chunk_by_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 6  # one chunk per token, relayed as they came
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_unknown_fields_and_tools_pass_through(
    client: openai.OpenAI, backends: dict[str, ThreadedServer]
) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HELLO,
        tools=tools,
        tool_choice="required",
        response_format={"type": "json_object"},
        n=2,
        extra_body={"guided_choice": ["a", "b"], "top_k": 7},
    )
    completion = raw.parse()
    assert len(completion.choices) == 2
    call = completion.choices[0].message.tool_calls
    assert call is not None and call[0].function.name == "get_weather"
    # The engine saw the client's fields untouched, with the upstream model id substituted.
    served_by = backends[raw.headers["x-aigw-deployment"]]
    seen = httpx.get(f"{served_by.url}/sim/requests").json()[-1]
    assert seen["model"] == UPSTREAM_MODEL
    assert seen["guided_choice"] == ["a", "b"] and seen["top_k"] == 7
    assert seen["response_format"] == {"type": "json_object"}
    assert seen["tools"] == tools and seen["n"] == 2


async def test_async_chat_stream(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, stream=True, extra_body={"ignore_eos": True}
    )
    pieces = [
        c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == 4


async def test_async_chat_completion(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
    assert completion.choices[0].finish_reason in {"stop", "length"}


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert completion.object == "text_completion"
    assert completion.choices[0].text


def test_completions_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=3,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    texts = [c.choices[0].text for c in stream if c.choices]
    assert len([t for t in texts if t]) == 3


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_embeddings(client: openai.OpenAI, encoding_format: Any) -> None:
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    result = client.embeddings.create(model=MODEL, input=["alpha", "beta"], **kwargs)
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 64
    assert result.data[0].embedding != result.data[1].embedding


async def test_async_embeddings(aclient: openai.AsyncOpenAI) -> None:
    result = await aclient.embeddings.create(model=MODEL, input="alpha")
    assert len(result.data) == 1


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-99", messages=HELLO)
    assert "gpt-99" in info.value.message
    assert info.value.body["param"] == "model"  # type: ignore[index]
    assert info.value.response.headers["x-request-id"]


def test_missing_messages_is_400_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"content": "no role"}])  # type: ignore[list-item]
    assert info.value.body["param"] == "messages[0].role"  # type: ignore[index]


def test_ill_typed_field_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens="ten")  # type: ignore[arg-type]
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_upstream_context_error_passes_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100_000)
    assert "maximum context length" in info.value.message


def test_malformed_json_is_400(gateway: ThreadedServer) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert response.headers["x-request-id"]


def test_unknown_route_is_openai_shaped_404(gateway: ThreadedServer) -> None:
    response = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert response.headers["x-request-id"]


def test_health_and_readiness(gateway: ThreadedServer) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == [MODEL]


def test_request_id_reaches_the_upstream(
    servers: ExitStack, start_gateway: Callable[..., ThreadedServer]
) -> None:
    seen: list[dict[bytes, bytes]] = []
    reply = b'{"id":"x","object":"chat.completion","created":0,"model":"m","choices":[]}'

    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(dict(scope["headers"]))
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": reply})

    server = servers.enter_context(serve_in_thread(upstream))
    gateway = start_gateway(
        {"models": [{"name": MODEL, "deployments": [deployment(server.url, "rec")]}]}
    )
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, extra_headers={"x-request-id": "trace-7"}
        )
        minted = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.headers["x-request-id"] == "trace-7"
    assert seen[0][b"x-request-id"] == b"trace-7"
    assert seen[1][b"x-request-id"].decode() == minted.headers["x-request-id"]
