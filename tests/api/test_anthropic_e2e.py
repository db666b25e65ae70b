"""The OpenAI SDK talking to a model served by Anthropic's Messages API through the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette

from tests.fakes.anthropic import create_fake_anthropic
from tests.servers import ThreadedServer

Start = Callable[..., ThreadedServer]
MODEL = "claude"


@pytest.fixture
def anthropic_app() -> Starlette:
    return create_fake_anthropic(api_key="sk-ant-test")


@pytest.fixture
def client(anthropic_app: Starlette, servers: Any, start_gateway: Start) -> Iterator[openai.OpenAI]:
    from tests.servers import serve_in_thread

    upstream = servers.enter_context(serve_in_thread(anthropic_app))
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "deployments": [
                        {
                            "id": "claude-api",
                            "provider": "anthropic",
                            "base_url": upstream.url,
                            "model": "claude-sonnet-4-5",
                            "api_key": "sk-ant-test",
                        }
                    ],
                }
            ]
        }
    )
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello Claude"},
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_chat_completion(client: openai.OpenAI, anthropic_app: Starlette) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=50
    )
    completion = raw.parse()
    assert raw.headers["x-aigw-deployment"] == "claude-api"
    assert completion.choices[0].message.content == "echo: Hello Claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    sent = anthropic_app.state.requests[-1]
    assert sent["system"] == "Be brief."
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] == 50
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hello Claude"}]}
    ] or sent["messages"] == [{"role": "user", "content": "Hello Claude"}]


def test_chat_stream_chunk_by_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: Hello Claude"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # incremental
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert len({c.id for c in chunks}) == 1


def test_tool_call_round_trip(client: openai.OpenAI, anthropic_app: Starlette) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    sent = anthropic_app.state.requests[-1]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tool_choice"] == {"type": "any"}
    # Feed the tool result back: assistant tool_use + user tool_result on Anthropic's side.
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[
            *MESSAGES,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=TOOLS,
    )
    assert follow_up.choices[0].message.content is not None
    blocks = anthropic_app.state.requests[-1]["messages"]
    assert blocks[1]["content"][0]["type"] == "tool_use"
    assert blocks[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": "sunny",
    } or (
        blocks[2]["content"][0]["type"] == "tool_result"
        and blocks[2]["content"][0]["tool_use_id"] == call.id
    )


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True
    )
    calls = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert calls[0].id


def test_unsupported_endpoint_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="x")
    assert "does not support /v1/embeddings" in info.value.message


def test_n_greater_than_one_is_rejected_naming_n(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert info.value.body["param"] == "n"  # type: ignore[index]


def test_upstream_auth_error_is_the_gateways_502_not_the_clients_401(
    anthropic_app: Starlette, servers: Any, start_gateway: Start
) -> None:
    from tests.servers import serve_in_thread

    upstream = servers.enter_context(serve_in_thread(anthropic_app))
    deployment = {
        "id": "claude-api",
        "provider": "anthropic",
        "base_url": upstream.url,
        "model": "claude-sonnet-4-5",
        "api_key": "wrong-key",
    }
    gateway = start_gateway({"models": [{"name": MODEL, "deployments": [deployment]}]})
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as sdk:
        # The client's own key was fine: the upstream refused the gateway's key for it.
        with pytest.raises(openai.InternalServerError) as info:
            sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_auth_failed"
    assert "wrong-key" not in str(info.value)
