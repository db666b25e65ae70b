"""What the simulator's answers say, as clients see them: structured output, forced tool calls'
arguments, logprobs, stop strings, embedding dimensions, usage details. Real sockets, the
official OpenAI SDK and raw httpx for the wire."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest

from aigw.sim.server import BackendSettings, Faults, create_app
from tests.servers import ThreadedServer, serve_in_thread

MESSAGES: list[Any] = [{"role": "user", "content": "Describe a city."}]
CITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "population": {"type": "integer", "minimum": 1000, "maximum": 5000000},
        "districts": {
            "type": "array",
            "items": {"$ref": "#/$defs/district"},
            "minItems": 1,
            "maxItems": 3,
        },
        "capital": {"type": "boolean"},
        "mayor": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "population", "districts", "capital", "mayor"],
    "additionalProperties": False,
    "$defs": {
        "district": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "area": {"type": "number", "minimum": 0}},
            "required": ["name", "area"],
            "additionalProperties": False,
        }
    },
}
CITY_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": CITY, "strict": True},
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "nights": {"type": "integer", "minimum": 1, "maximum": 14},
                    "kind": {"enum": ["hotel", "hostel"]},
                },
                "required": ["city", "nights", "kind"],
            },
        },
    },
]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    settings = BackendSettings(model="m", time_scale=0.001, seed=5, faults=Faults())
    with serve_in_thread(create_app(settings)) as running:
        yield running


@pytest.fixture
def client(server: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def events(server: ThreadedServer, path: str, body: dict[str, Any]) -> list[Any]:
    """The data of every SSE event of a streamed request, [DONE] last."""
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=10) as reply:
        assert reply.status_code == 200
        data = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_json_object_is_an_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="m", messages=MESSAGES, response_format={"type": "json_object"}, n=3
    )
    for choice in completion.choices:
        assert choice.finish_reason == "stop"
        value = json.loads(choice.message.content or "")
        assert isinstance(value, dict) and value


def test_vllm_guided_json(server: ThreadedServer) -> None:
    for guided in (CITY, json.dumps(CITY)):
        body = {"messages": MESSAGES, "guided_json": guided}
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body).json()
        content = reply["choices"][0]["message"]["content"]
        jsonschema_rs.validator_for(CITY).validate(json.loads(content))


def test_json_schema_content_is_valid_and_usage_counts_its_tokens(client: openai.OpenAI) -> None:
    validator = jsonschema_rs.validator_for(CITY)
    for _ in range(5):
        completion = client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            response_format=CITY_FORMAT,  # type: ignore[arg-type]
        )
        content = completion.choices[0].message.content or ""
        validator.validate(json.loads(content))
        assert completion.usage is not None
        assert completion.usage.completion_tokens == math.ceil(len(content) / 4)


def test_json_schema_streamed_in_pieces(server: ThreadedServer) -> None:
    body = {
        "messages": MESSAGES,
        "response_format": CITY_FORMAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = events(server, "/v1/chat/completions", body)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]][1:]
    assert len(pieces) > 3 and all(pieces)  # split across chunks, none empty
    jsonschema_rs.validator_for(CITY).validate(json.loads("".join(pieces)))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == len(pieces)
    assert set(usage["prompt_tokens_details"]) == {"cached_tokens"}


def test_json_cut_by_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        response_format=CITY_FORMAT,
        max_tokens=3,  # type: ignore[arg-type]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and len(choice.message.content or "") <= 12


def test_forced_tool_arguments_follow_the_parameters(
    client: openai.OpenAI, server: ThreadedServer
) -> None:
    validator = jsonschema_rs.validator_for(TOOLS[0]["function"]["parameters"])
    completion = client.chat.completions.create(
        model="m", messages=MESSAGES, tools=TOOLS, tool_choice="required", n=2
    )
    for choice in completion.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        call: Any = choice.message.tool_calls[0]
        validator.validate(json.loads(call.function.arguments))
    body = {
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "book"}},
        "stream": True,
    }
    deltas = [c["choices"][0]["delta"] for c in events(server, "/v1/chat/completions", body)]
    arguments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls")]
    assert arguments[0] == "" and len(arguments) > 3
    validator.validate(json.loads("".join(arguments)))


def test_bad_structured_requests_are_400(server: ThreadedServer) -> None:
    url = f"{server.url}/v1/chat/completions"
    bad = [
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": False}}},
            "response_format",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"$ref": "#/x"}},
                }
            },
            "response_format",
        ),
        ({"top_logprobs": 3}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": 3}, "stop"),
        ({"guided_json": "{not json"}, "guided_json"),
    ]
    for extra, param in bad:
        reply = httpx.post(url, json={"messages": MESSAGES, **extra})
        assert reply.status_code == 400, extra
        assert reply.json()["error"]["param"] == param, extra


def test_chat_logprobs(client: openai.OpenAI, server: ThreadedServer) -> None:
    completion = client.chat.completions.create(
        model="m", messages=MESSAGES, logprobs=True, top_logprobs=3, max_tokens=6
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0 and bytes(token.bytes or []) == token.token.encode()
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        ranked = [t.logprob for t in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
    plain = client.chat.completions.create(model="m", messages=MESSAGES, logprobs=True)
    assert plain.choices[0].logprobs is not None
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content or [])
    body = {"messages": MESSAGES, "logprobs": True, "top_logprobs": 2, "stream": True}
    chunks = events(server, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role delta
    for chunk in chunks[1:]:
        (entry,) = chunk["choices"][0]["logprobs"]["content"]
        assert entry["token"] == chunk["choices"][0]["delta"]["content"]
        assert len(entry["top_logprobs"]) == 2
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].logprobs is None


def test_completion_logprobs(client: openai.OpenAI, server: ThreadedServer) -> None:
    completion = client.completions.create(model="m", prompt="Once", logprobs=2, max_tokens=5)
    choice = completion.choices[0]
    assert choice.logprobs is not None
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert choice.logprobs.text_offset == [
        sum(len(t) for t in (choice.logprobs.tokens or [])[:i]) for i in range(5)
    ]
    for token, top in zip(
        choice.logprobs.tokens or [], choice.logprobs.top_logprobs or [], strict=True
    ):
        assert len(top) == 2 and token in top
    body = {"prompt": "Once", "logprobs": 0, "max_tokens": 4, "stream": True, "ignore_eos": True}
    chunks = events(server, "/v1/completions", body)
    offsets = [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks]
    texts = [c["choices"][0]["text"] for c in chunks]
    assert offsets == [sum(len(t) for t in texts[:i]) for i in range(4)]


def test_stop_strings_end_the_output_before_them(
    client: openai.OpenAI, server: ThreadedServer
) -> None:
    stops = ["ka", "lo", "mi", "ne"]  # syllables of the pseudo-words: one of them shows up
    stopped = client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=40, stop=stops, extra_body={"ignore_eos": True}
    )
    choice = stopped.choices[0]
    content = choice.message.content or ""
    assert choice.finish_reason == "stop" and not any(s in content for s in stops)
    assert choice.model_extra is not None and choice.model_extra["stop_reason"] in stops
    assert stopped.usage is not None and stopped.usage.completion_tokens < 40
    body = {"prompt": "Once", "max_tokens": 40, "stop": stops, "ignore_eos": True, "stream": True}
    chunks = events(server, "/v1/completions", body)
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert not any(s in streamed for s in stops) and len(chunks) < 40
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["stop_reason"] in stops


def test_usage_details_and_refusal(client: openai.OpenAI) -> None:
    long_prompt: list[Any] = [{"role": "user", "content": "All work and no play. " * 100}]
    first = client.chat.completions.create(model="m", messages=long_prompt, max_tokens=2)
    again = client.chat.completions.create(model="m", messages=long_prompt, max_tokens=2)
    assert first.choices[0].message.refusal is None
    assert first.usage is not None and again.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details is not None
    cached = again.usage.prompt_tokens_details.cached_tokens or 0
    assert again.usage.prompt_tokens - 16 <= cached < again.usage.prompt_tokens  # whole blocks
    assert again.usage.completion_tokens_details is not None


def test_embedding_dimensions(client: openai.OpenAI, server: ThreadedServer) -> None:
    default = client.embeddings.create(model="m", input="hi", encoding_format="float")
    assert len(default.data[0].embedding) == 64
    wide = client.embeddings.create(model="m", input="hi", dimensions=1536)
    assert len(wide.data[0].embedding) == 1536
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"input": "hi", "dimensions": 8, "encoding_format": "base64"},
    ).json()
    short = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert sum(x * x for x in short) == pytest.approx(1, abs=1e-5)
    head = default.data[0].embedding[:8]
    scale = math.sqrt(sum(x * x for x in head))
    assert list(short) == pytest.approx([x / scale for x in head], abs=1e-6)  # Matryoshka-like
    for bad in (0, 9000, "8"):
        reply = httpx.post(f"{server.url}/v1/embeddings", json={"input": "hi", "dimensions": bad})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "dimensions"
