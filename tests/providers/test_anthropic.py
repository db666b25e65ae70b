"""The Anthropic adapter: request, reply, stream and error translation; a fake over a socket."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
import respx
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aigw.config import DeploymentConfig
from aigw.errors import InvalidRequestError, UpstreamStatusError
from aigw.providers import make_provider
from aigw.providers.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
    AnthropicStream,
)
from aigw.providers.openai_stream import MAX_EVENT_BYTES
from aigw.sse import SSEDecoder
from aigw.types import Endpoint, Usage
from tests.fakes.anthropic import MESSAGE_ID, create_fake_anthropic
from tests.servers import ThreadedServer, serve_in_thread

NOW = 1_700_000_000
MODEL = "claude-sonnet-4-5-20250929"
HELLO: list[dict[str, Any]] = [{"role": "user", "content": "Hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def make(base_url: str = "https://api.anthropic.com", **extra: Any) -> AnthropicProvider:
    config = DeploymentConfig.model_validate(
        {"id": "claude", "provider": "anthropic", "base_url": base_url, "model": MODEL, **extra}
    )
    return AnthropicProvider(config, clock=lambda: NOW + 0.75)


def translate(body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    request = make(api_key="sk-ant-test", **extra).build_request(Endpoint.CHAT, body)
    result: dict[str, Any] = orjson.loads(request.body)
    return result


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "public-name", "messages": HELLO, **fields}


def rejected(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        translate(body)
    return info.value


# -- request ---------------------------------------------------------------------------------


def test_url_headers_and_registry() -> None:
    provider = make(
        api_key="sk-ant-test", headers={"anthropic-beta": "x", "anthropic-version": "v"}
    )
    request = provider.build_request(Endpoint.CHAT, chat())
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers == {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "v",  # the operator's header wins
        "content-type": "application/json",
        "anthropic-beta": "x",
    }
    assert make().build_request(Endpoint.CHAT, chat()).headers == {
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
    }
    config = DeploymentConfig.model_validate(
        {"id": "c", "provider": "anthropic", "base_url": "http://h/", "model": "m"}
    )
    assert isinstance(make_provider(config), AnthropicProvider)


def test_supports_only_chat() -> None:
    provider = make()
    assert provider.supports(Endpoint.CHAT)
    assert not provider.supports(Endpoint.EMBEDDINGS)
    assert not provider.supports(Endpoint.COMPLETIONS)
    with pytest.raises(InvalidRequestError):
        provider.build_request(Endpoint.EMBEDDINGS, {"model": "m", "input": "x"})


def test_minimal_request() -> None:
    assert translate(chat()) == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
    }


def test_system_and_developer_messages_are_hoisted_and_joined() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        ]
    )
    out = translate(body)
    assert out["system"] == "You are terse.\n\nAnswer in French."
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def test_max_tokens_sources() -> None:
    assert translate(chat(max_tokens=50))["max_tokens"] == 50
    assert translate(chat(max_tokens=50, max_completion_tokens=70))["max_tokens"] == 70
    assert rejected(chat(max_tokens=0)).param == "max_tokens"
    assert rejected(chat(max_completion_tokens="9")).param == "max_completion_tokens"


def test_sampling_stop_user_and_stream() -> None:
    out = translate(chat(temperature=0.2, top_p=0.9, top_k=5, stop="END", user="u-42", stream=True))
    assert out["temperature"] == 0.2
    assert out["top_p"] == 0.9
    assert out["top_k"] == 5
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-42"}
    assert out["stream"] is True
    assert translate(chat(stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in translate(chat(stop=[]))
    assert "stream" not in translate(chat(stream=False))


def test_harmless_fields_are_dropped() -> None:
    out = translate(
        chat(
            frequency_penalty=0.5,
            presence_penalty=0.1,
            seed=7,
            service_tier="auto",
            store=False,
            metadata={"k": "v"},
            stream_options={"include_usage": True},
            reasoning_effort="low",
            n=1,
            response_format={"type": "text"},
            parallel_tool_calls=True,
            some_vendor_extension={"x": 1},
        )
    )
    assert set(out) == {"model", "max_tokens", "messages"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop": 5}, "stop"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_unsupported_requests_are_rejected_with_param(fields: dict[str, Any], param: str) -> None:
    assert rejected(chat(**fields)).param == param


def test_images() -> None:
    parts = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "low"}},
    ]
    content = translate(chat(messages=[{"role": "user", "content": parts}]))["messages"][0][
        "content"
    ]
    assert content == [
        {"type": "text", "text": "Compare"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ]
    bad = [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]
    assert rejected(chat(messages=[{"role": "user", "content": bad}])).param == (
        "messages[0].content[0].image_url"
    )


def test_tool_conversation() -> None:
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "24C"}]},
        {"role": "user", "content": "Thanks. Which is warmer?"},
        {"role": "assistant", "content": "Rome."},
    ]
    out = translate(chat(messages=messages, tools=[WEATHER_TOOL]))
    assert out["system"] == "Use tools."
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"location": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "24C"}],
                },
                {"type": "text", "text": "Thanks. Which is warmer?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Rome."}]},
    ]


def test_consecutive_same_role_messages_are_merged() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": ""},  # empty: dropped, so the users stay merged
        {"role": "user", "content": "three"},
    ]
    out = translate(chat(messages=messages))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"},
                {"type": "text", "text": "three"},
            ],
        }
    ]


def test_bad_tool_call_arguments_are_rejected() -> None:
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
            ],
        },
    ]
    error = rejected(chat(messages=messages))
    assert error.param == "messages[1].tool_calls[0].function.arguments"


def test_tools_are_translated() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    assert translate(chat(tools=[WEATHER_TOOL, bare]))["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
    ],
)
def test_tool_choice(choice: object, parallel: object, expected: object) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert translate(chat(**fields)).get("tool_choice") == expected


def test_input_body_is_not_mutated() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "user", "content": "b"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "r"}]},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        stop=["x"],
    )
    before = copy.deepcopy(body)
    provider = make()
    provider.build_request(Endpoint.CHAT, body)
    provider.build_request(Endpoint.CHAT, body)
    assert body == before


# -- response (shapes as in Anthropic's Messages API reference) ------------------------------

TEXT_MESSAGE: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 503,
    },
}

TOOL_MESSAGE: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "text", "text": "I'll check the weather in San Francisco."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "celsius"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 472, "output_tokens": 89},
}

MAX_TOKENS_MESSAGE: dict[str, Any] = {
    **TEXT_MESSAGE,
    "id": "msg_01LZ6bEsSGT6vKq9w5Jr4bJ5",
    "content": [{"type": "text", "text": "Once upon a time, in a land far"}],
    "stop_reason": "max_tokens",
    "usage": {"input_tokens": 14, "output_tokens": 10},
}


def completion(message: dict[str, Any]) -> dict[str, Any]:
    raw, _ = make().parse_response(Endpoint.CHAT, 200, orjson.dumps(message))
    ChatCompletion.model_validate_json(raw)  # the OpenAI SDK accepts it
    result: dict[str, Any] = orjson.loads(raw)
    return result


def test_text_response() -> None:
    assert completion(TEXT_MESSAGE) == {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "object": "chat.completion",
        "created": NOW,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi! My name is Claude.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 3195,
            "completion_tokens": 503,
            "total_tokens": 3698,
            "prompt_tokens_details": {"cached_tokens": 1000},
        },
    }


def test_tool_use_response() -> None:
    out = completion(TOOL_MESSAGE)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather in San Francisco."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }
    assert out["usage"]["total_tokens"] == 561
    only_tool = {**TOOL_MESSAGE, "content": TOOL_MESSAGE["content"][1:]}
    assert completion(only_tool)["choices"][0]["message"]["content"] is None


def test_max_tokens_response() -> None:
    out = completion(MAX_TOKENS_MESSAGE)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["message"]["content"] == "Once upon a time, in a land far"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    out = completion({**TEXT_MESSAGE, "stop_reason": stop_reason})
    assert out["choices"][0]["finish_reason"] == finish_reason


def test_unparseable_response_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamStatusError) as info:
        make().parse_response(Endpoint.CHAT, 200, b"<html>oops</html>")
    assert info.value.status == 502
    assert info.value.retryable


# -- stream ----------------------------------------------------------------------------------


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def message_start(message_id: str) -> bytes:
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": MODEL,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
        },
    }
    return sse("message_start", {"message": message})


def text_delta(index: int, text: str) -> bytes:
    return sse(
        "content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": text}}
    )


def json_delta(index: int, fragment: str) -> bytes:
    delta = {"type": "input_json_delta", "partial_json": fragment}
    return sse("content_block_delta", {"index": index, "delta": delta})


def message_delta(stop_reason: str, output_tokens: int) -> bytes:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return sse("message_delta", {"delta": delta, "usage": {"output_tokens": output_tokens}})


TEXT_STREAM = b"".join(
    [
        message_start("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"),
        sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        sse("ping", {}),
        text_delta(0, "Hello"),
        text_delta(0, "! Ünïcødé 🚀"),
        sse("content_block_stop", {"index": 0}),
        message_delta("end_turn", 15),
        sse("message_stop", {}),
    ]
)

TOOL_STREAM = b"".join(
    [
        message_start("msg_014p7gG3wDgGV9EUtLvnow3U"),
        sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        text_delta(0, "Okay, let's check the weather."),
        sse("content_block_stop", {"index": 0}),
        sse(
            "content_block_start",
            {
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        json_delta(1, ""),
        json_delta(1, '{"location":'),
        sse("ping", {}),
        json_delta(1, ' "San Francisco, CA"}'),
        sse("content_block_stop", {"index": 1}),
        message_delta("tool_use", 89),
        sse("message_stop", {}),
    ]
)


def splits(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def run_stream(chunks: list[bytes], include_usage: bool = False) -> bytes:
    request = chat(stream=True, stream_options={"include_usage": include_usage})
    translator = make().stream_translator(Endpoint.CHAT, request)
    out = b"".join(translator.feed(chunk) for chunk in chunks)
    return out + translator.finish()


def chunks_of(output: bytes) -> list[dict[str, Any]]:
    events = SSEDecoder().feed(output)
    assert events[-1].data == "[DONE]"
    assert all(e.event is None for e in events)
    parsed = []
    for event in events[:-1]:
        ChatCompletionChunk.model_validate_json(event.data)
        parsed.append(orjson.loads(event.data))
    assert len({(c["id"], c["created"], c["model"]) for c in parsed}) == 1
    return parsed


SPLITS = [1, 2, 3, 7, 64, 10_000]


@pytest.mark.parametrize("size", SPLITS)
def test_text_stream(size: int) -> None:
    output = run_stream(splits(TEXT_STREAM, size))
    assert output == run_stream([TEXT_STREAM])
    chunks = chunks_of(output)
    assert chunks[0]["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["created"] == NOW
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == "Hello! Ünïcødé 🚀"
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_crlf_stream() -> None:
    stream = TEXT_STREAM.replace(b"\n", b"\r\n")
    assert run_stream(splits(stream, 1)) == run_stream([TEXT_STREAM])


@pytest.mark.parametrize("size", SPLITS)
def test_tool_stream(size: int) -> None:
    chunks = chunks_of(run_stream(splits(TOOL_STREAM, size)))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == "Okay, let's check the weather."
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    assert calls[0] == {
        "index": 0,  # OpenAI counts tool calls, not content blocks
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert {call["index"] for call in calls} == {0}
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert orjson.loads(arguments) == {"location": "San Francisco, CA"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_usage_chunk() -> None:
    chunks = chunks_of(run_stream([TOOL_STREAM], include_usage=True))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 89,
        "total_tokens": 114,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in chunks_of(run_stream([TOOL_STREAM]))[-1]


def test_stream_usage_is_recorded_as_it_arrives() -> None:
    translator = AnthropicStream(MODEL, NOW)
    assert translator.usage is None
    start = TEXT_STREAM.index(b"event: content_block_start")
    stop = TEXT_STREAM.index(b"event: message_delta")
    translator.feed(TEXT_STREAM[:start])
    assert translator.usage == Usage(25, 1)  # message_start: the prompt, output so far
    translator.feed(TEXT_STREAM[start:stop])
    assert translator.usage == Usage(25, 1)
    translator.feed(TEXT_STREAM[stop:])
    translator.finish()
    assert translator.usage == Usage(25, 15)  # message_delta's cumulative output count


def test_stream_usage_counts_cache_tokens_as_prompt() -> None:
    start = message_start("msg_cached").replace(
        b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0',
        b'"cache_creation_input_tokens":100,"cache_read_input_tokens":2000',
    )
    translator = AnthropicStream(MODEL, NOW, include_usage=True)
    rest = TEXT_STREAM[TEXT_STREAM.index(b"event: content_block_start") :]
    output = translator.feed(start + rest) + translator.finish()
    assert translator.usage == Usage(2125, 15)
    assert chunks_of(output)[-1]["usage"]["prompt_tokens"] == 2125


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_usage_whatever_the_client_asked(include_usage: bool) -> None:
    request = chat(stream=True, stream_options={"include_usage": include_usage})
    translator = make().stream_translator(Endpoint.CHAT, request)
    for chunk in splits(TOOL_STREAM, 5):
        translator.feed(chunk)
    output = translator.finish()
    assert translator.usage == Usage(25, 89)
    assert output == b"" or output.endswith(b"data: [DONE]\n\n")


def test_reply_usage() -> None:
    message = {
        **TEXT_MESSAGE,
        "usage": {
            "input_tokens": 472,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 300,
            "output_tokens": 89,
        },
    }
    raw, usage = make().parse_response(Endpoint.CHAT, 200, orjson.dumps(message))
    assert usage == Usage(782, 89)
    assert orjson.loads(raw)["usage"]["prompt_tokens"] == 782
    plain = orjson.dumps(MAX_TOKENS_MESSAGE)
    assert make().parse_response(Endpoint.CHAT, 200, plain)[1] == Usage(14, 10)
    no_usage = {k: v for k, v in TEXT_MESSAGE.items() if k != "usage"}
    assert make().parse_response(Endpoint.CHAT, 200, orjson.dumps(no_usage))[1] is None


def test_message_stop_without_trailing_blank_line() -> None:
    assert run_stream([TEXT_STREAM.removesuffix(b"\n\n")]) == run_stream([TEXT_STREAM])


def test_stream_ending_without_message_stop_is_an_upstream_error() -> None:
    cut = TEXT_STREAM[: TEXT_STREAM.index(b"event: message_delta")]
    translator = AnthropicStream(MODEL, NOW)
    assert translator.feed(cut)
    with pytest.raises(UpstreamStatusError) as info:
        translator.finish()
    assert info.value.status == 502
    assert info.value.retryable


def test_nothing_after_message_stop() -> None:
    translator = AnthropicStream(MODEL, NOW)
    assert translator.feed(TEXT_STREAM).endswith(b"data: [DONE]\n\n")
    assert translator.feed(text_delta(0, "late")) == b""
    assert translator.finish() == b""


def error_event(kind: str, message: str) -> bytes:
    return sse("error", {"error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("kind", "status", "openai_type"),
    [
        ("overloaded_error", 503, "service_unavailable"),
        ("api_error", 502, "api_error"),
        ("rate_limit_error", 429, "rate_limit_error"),
        ("something_new", 502, "api_error"),
    ],
)
def test_error_event_before_output(kind: str, status: int, openai_type: str) -> None:
    translator = AnthropicStream(MODEL, NOW)
    # Same chunk as message_start: the role chunk is dropped, nothing reached the client yet.
    with pytest.raises(UpstreamStatusError) as info:
        translator.feed(message_start("msg_x") + error_event(kind, "Overloaded"))
    error = info.value
    assert (error.status, error.type, error.code, error.message) == (
        status,
        openai_type,
        kind,
        "Overloaded",
    )
    assert error.retryable


def test_error_event_after_output_keeps_text_then_raises() -> None:
    translator = AnthropicStream(MODEL, NOW)
    assert translator.feed(message_start("msg_x"))
    out = translator.feed(text_delta(0, "partial") + error_event("overloaded_error", "Overloaded"))
    assert b'"content":"partial"' in out
    with pytest.raises(UpstreamStatusError) as info:
        translator.finish()
    assert info.value.status == 503


def test_error_event_alone_raises_at_once() -> None:
    translator = AnthropicStream(MODEL, NOW)
    assert translator.feed(message_start("msg_x"))
    with pytest.raises(UpstreamStatusError):
        translator.feed(error_event("api_error", "Internal server error"))


def test_event_that_is_not_json_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamStatusError) as info:
        AnthropicStream(MODEL, NOW).feed(b"event: message_start\ndata: {nope\n\n")
    assert info.value.status == 502


def test_an_endless_event_is_cut_at_the_event_cap() -> None:
    """An event that never ends is refused once it passes MAX_EVENT_BYTES, not buffered."""
    translator = AnthropicStream(MODEL, NOW)
    assert translator.feed(message_start("msg_x"))
    translator.feed(b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": "')
    with pytest.raises(UpstreamStatusError) as info:
        for _ in range(MAX_EVENT_BYTES // 65_536 + 2):
            translator.feed(b"x" * 65_536)
    assert info.value.code == "upstream_event_too_large"
    with pytest.raises(UpstreamStatusError):  # the stream stays failed
        translator.finish()


# -- errors ----------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "kind", "client_status", "openai_type", "retryable"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", False),
        (401, "authentication_error", 401, "authentication_error", False),
        (403, "permission_error", 403, "permission_error", False),
        (404, "not_found_error", 404, "invalid_request_error", False),
        (413, "request_too_large", 413, "invalid_request_error", False),
        (429, "rate_limit_error", 429, "rate_limit_error", True),
        (500, "api_error", 500, "api_error", True),
        (529, "overloaded_error", 503, "service_unavailable", True),
    ],
)
def test_parse_error(
    status: int, kind: str, client_status: int, openai_type: str, retryable: bool
) -> None:
    error = make().parse_error(status, anthropic_error(kind, "details here"))
    assert isinstance(error, UpstreamStatusError)
    assert (error.status, error.type, error.code, error.message) == (
        client_status,
        openai_type,
        kind,
        "details here",
    )
    assert error.retryable is retryable


def test_parse_error_that_is_not_json() -> None:
    error = make().parse_error(502, b"<html>Bad Gateway</html>")
    assert error.status == 502
    assert error.message == "Anthropic returned HTTP 502: <html>Bad Gateway</html>"
    assert make().parse_error(500, b"").message == "Anthropic returned HTTP 500: empty body"


# -- over HTTP -------------------------------------------------------------------------------


@respx.mock
async def test_round_trip_through_httpx() -> None:
    route = respx.post("https://api.anthropic.com/v1/messages").respond(json=TOOL_MESSAGE)
    provider = make(api_key="sk-ant-test")
    upstream = provider.build_request(Endpoint.CHAT, chat(tools=[WEATHER_TOOL]))
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            upstream.url, content=upstream.body, headers=dict(upstream.headers)
        )
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert orjson.loads(sent.content)["tools"][0]["name"] == "get_weather"
    out = ChatCompletion.model_validate_json(
        provider.parse_response(Endpoint.CHAT, reply.status_code, reply.content)[0]
    )
    assert out.choices[0].message.tool_calls is not None
    assert out.choices[0].finish_reason == "tool_calls"


@contextmanager
def serve(app: Any) -> Iterator[ThreadedServer]:
    with serve_in_thread(app) as server:
        yield server
    # ThreadedServer leaves its thread's event loop open; close it, or pytest (warnings as
    # errors) reports the loop and its self-pipe sockets as unclosed resources.
    if server.loop is not None:
        server.loop.close()


@pytest.mark.e2e
def test_fake_anthropic_over_a_socket() -> None:
    app = create_fake_anthropic()
    with serve(app) as server, httpx.Client(timeout=10) as client:
        provider = make(base_url=server.url, api_key="test-key")

        upstream = provider.build_request(Endpoint.CHAT, chat(max_tokens=20))
        reply = client.post(upstream.url, content=upstream.body, headers=dict(upstream.headers))
        assert reply.status_code == 200
        out = ChatCompletion.model_validate_json(
            provider.parse_response(Endpoint.CHAT, reply.status_code, reply.content)[0]
        )
        assert out.id == MESSAGE_ID
        assert out.choices[0].message.content == "echo: Hello there"
        assert out.usage is not None and out.usage.completion_tokens == 3

        body = chat(stream=True, stream_options={"include_usage": True})
        upstream = provider.build_request(Endpoint.CHAT, body)
        translator = provider.stream_translator(Endpoint.CHAT, body)
        with client.stream(
            "POST", upstream.url, content=upstream.body, headers=dict(upstream.headers)
        ) as stream:
            assert stream.status_code == 200
            output = b"".join(translator.feed(chunk) for chunk in stream.iter_raw())
        chunks = chunks_of(output + translator.finish())
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
        assert text == "echo: Hello there"
        assert chunks[-1]["usage"]["completion_tokens"] == 3

        body = chat(stream=True, tools=[WEATHER_TOOL], tool_choice="required")
        upstream = provider.build_request(Endpoint.CHAT, body)
        translator = provider.stream_translator(Endpoint.CHAT, body)
        with client.stream(
            "POST", upstream.url, content=upstream.body, headers=dict(upstream.headers)
        ) as stream:
            output = b"".join(translator.feed(chunk) for chunk in stream.iter_raw())
        calls = [
            call
            for c in chunks_of(output + translator.finish())
            for call in c["choices"][0]["delta"].get("tool_calls", ())
        ]
        assert calls[0]["function"]["name"] == "get_weather"
        assert "".join(call["function"]["arguments"] for call in calls) == "{}"

        reply = client.post(upstream.url, content=upstream.body, headers={"x-api-key": "wrong"})
        error = provider.parse_error(reply.status_code, reply.content)
        assert (error.status, error.type) == (401, "authentication_error")

    assert len(app.state.requests) == 3  # the unauthenticated one is refused first
    assert app.state.requests[0]["model"] == MODEL
    assert app.state.requests[0]["max_tokens"] == 20


@pytest.mark.e2e
def test_fake_anthropic_enforces_the_api_rules() -> None:
    headers = {"x-api-key": "test-key", "anthropic-version": ANTHROPIC_VERSION}
    user = {"role": "user", "content": "hi"}
    with serve(create_fake_anthropic()) as server, httpx.Client(timeout=10) as client:
        url = f"{server.url}/v1/messages"
        missing = client.post(url, json={"model": "m", "messages": [user]}, headers=headers)
        assert missing.status_code == 400
        assert "max_tokens" in missing.json()["error"]["message"]
        twice = {"model": "m", "max_tokens": 5, "messages": [user, user]}
        reply = client.post(url, json=twice, headers=headers)
        assert reply.status_code == 400
        assert reply.json()["error"]["type"] == "invalid_request_error"
        no_version = client.post(url, json=twice, headers={"x-api-key": "test-key"})
        assert no_version.status_code == 400
        short = {"model": "m", "max_tokens": 1, "messages": [user]}
        reply = client.post(url, json=short, headers=headers)
        assert reply.json()["stop_reason"] == "max_tokens"
        assert reply.json()["content"][0]["text"] == "echo:"
