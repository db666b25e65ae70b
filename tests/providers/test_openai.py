"""The OpenAI-compatible adapter: the request it sends upstream and the usage it reads back."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from aigw.config import DeploymentConfig
from aigw.errors import UpstreamConnectionError
from aigw.providers.openai import OpenAIProvider, injects_usage
from aigw.types import Endpoint, Usage

HELLO: list[dict[str, Any]] = [{"role": "user", "content": "Hello there"}]


def make() -> OpenAIProvider:
    config = DeploymentConfig.model_validate(
        {"id": "gpu-a", "provider": "openai", "base_url": "http://gpu-a/v1", "model": "llama"}
    )
    return OpenAIProvider(config)


def upstream(endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
    before = copy.deepcopy(body)
    sent: dict[str, Any] = orjson.loads(make().build_request(endpoint, body).body)
    assert body == before  # the client's body is reused on failover: never mutated
    return sent


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "public", "messages": HELLO, **fields}


# -- include_usage injection ------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
def test_streams_ask_for_usage(endpoint: Endpoint) -> None:
    sent = upstream(endpoint, chat(stream=True))
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "llama"
    assert injects_usage(endpoint, chat(stream=True))


def test_other_stream_options_are_kept() -> None:
    sent = upstream(Endpoint.CHAT, chat(stream=True, stream_options={"include_obfuscation": False}))
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_include_usage_false_is_overridden() -> None:
    body = chat(stream=True, stream_options={"include_usage": False})
    assert upstream(Endpoint.CHAT, body)["stream_options"] == {"include_usage": True}
    assert injects_usage(Endpoint.CHAT, body)


def test_inert_continuous_usage_stats_stays_inert() -> None:
    # vLLM ignores continuous_usage_stats without include_usage: the client asked for nothing.
    body = chat(stream=True, stream_options={"continuous_usage_stats": True})
    assert upstream(Endpoint.CHAT, body)["stream_options"] == {
        "continuous_usage_stats": False,
        "include_usage": True,
    }


def test_client_include_usage_is_sent_as_is() -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = chat(stream=True, stream_options=options)
    assert upstream(Endpoint.CHAT, body)["stream_options"] == options
    assert not injects_usage(Endpoint.CHAT, body)


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        (Endpoint.CHAT, chat()),
        (Endpoint.CHAT, chat(stream=False)),
        (Endpoint.EMBEDDINGS, {"model": "public", "input": "hi", "stream": True}),
    ],
)
def test_no_injection_without_a_stream(endpoint: Endpoint, body: dict[str, Any]) -> None:
    assert "stream_options" not in upstream(endpoint, body)
    assert not injects_usage(endpoint, body)


def test_translator_strips_only_what_it_injected() -> None:
    provider = make()
    injected = provider.stream_translator(Endpoint.CHAT, chat(stream=True))
    asked = provider.stream_translator(
        Endpoint.CHAT, chat(stream=True, stream_options={"include_usage": True})
    )
    usage_only = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    assert injected.feed(usage_only) == b""
    assert asked.feed(usage_only) == usage_only
    assert injected.usage == asked.usage == Usage(3, 2)
    assert injected is not provider.stream_translator(Endpoint.CHAT, chat(stream=True))


# -- non-streamed replies ---------------------------------------------------------------------

CHAT_REPLY = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "llama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi! How can I help?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
)


def test_chat_reply_is_relayed_as_is_with_its_usage() -> None:
    body, usage = make().parse_response(Endpoint.CHAT, 200, CHAT_REPLY)
    assert body is CHAT_REPLY
    assert usage == Usage(12, 7)


def test_embeddings_usage_has_no_completion() -> None:
    reply = orjson.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": "llama",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )
    assert make().parse_response(Endpoint.EMBEDDINGS, 200, reply) == (reply, Usage(5, 0))


@pytest.mark.parametrize(
    "reply",
    [
        b'{"id":"x","choices":[]}',
        b'{"id":"x","usage":null}',
    ],
)
def test_reply_without_usage(reply: bytes) -> None:
    assert make().parse_response(Endpoint.CHAT, 200, reply) == (reply, None)


@pytest.mark.parametrize("reply", [b"[1, 2]", b"<html>not json</html>", b"", b'"text"'])
def test_a_reply_that_is_not_a_json_object_is_refused(reply: bytes) -> None:
    with pytest.raises(UpstreamConnectionError) as info:
        make().parse_response(Endpoint.CHAT, 200, reply)
    assert info.value.code == "upstream_bad_reply" and info.value.retryable
