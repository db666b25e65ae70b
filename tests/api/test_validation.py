from __future__ import annotations

from typing import Any

import pytest

from aigw.api.validation import VALIDATORS, parse_body
from aigw.errors import InvalidRequestError
from aigw.types import Endpoint

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def param_of(endpoint: Endpoint, body: dict[str, Any]) -> str | None:
    with pytest.raises(InvalidRequestError) as info:
        VALIDATORS[endpoint](body)
    return info.value.param


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"text"'])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        parse_body(raw)


def test_valid_bodies_pass() -> None:
    VALIDATORS[Endpoint.CHAT]({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    VALIDATORS[Endpoint.COMPLETIONS]({"model": "m", "prompt": ["a", "b"], "max_tokens": 3})
    VALIDATORS[Endpoint.EMBEDDINGS]({"model": "m", "input": "text"})


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"n": 1.5}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": {"a": 1}}, "tools"),
    ],
)
def test_chat_field_errors_name_the_param(change: dict[str, Any], param: str) -> None:
    body = {**CHAT, **change}
    body = {k: v for k, v in body.items() if v is not None}
    assert param_of(Endpoint.CHAT, body) == param


def test_completions_and_embeddings_required_fields() -> None:
    assert param_of(Endpoint.COMPLETIONS, {"model": "m"}) == "prompt"
    assert param_of(Endpoint.COMPLETIONS, {"model": "m", "prompt": 3}) == "prompt"
    assert param_of(Endpoint.EMBEDDINGS, {"model": "m"}) == "input"
    assert param_of(Endpoint.EMBEDDINGS, {"model": "m", "input": []}) == "input"
    assert param_of(Endpoint.EMBEDDINGS, {"model": "m", "input": "x", "stream": True}) == "stream"
