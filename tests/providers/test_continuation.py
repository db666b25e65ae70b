"""The request that continues a broken stream (:mod:`aigw.providers.continuation`), and what
each provider makes of it."""

from __future__ import annotations

from typing import Any

from aigw.providers.anthropic_request import to_anthropic_request
from aigw.providers.continuation import continuation_body
from aigw.types import Endpoint

CHAT: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "max_tokens": 10,
}


def test_chat_appends_the_partial_answer_to_continue() -> None:
    body = continuation_body(Endpoint.CHAT, CHAT, "Hello wor", 2)
    assert body is not None
    assert body["messages"] == [*CHAT["messages"], {"role": "assistant", "content": "Hello wor"}]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["max_tokens"] == 8
    assert CHAT["max_tokens"] == 10 and len(CHAT["messages"]) == 1  # not mutated


def test_a_clients_own_prefix_is_extended_not_repeated() -> None:
    prefixed = {
        **CHAT,
        "messages": [*CHAT["messages"], {"role": "assistant", "content": "Sure: "}],
        "continue_final_message": True,
        "max_completion_tokens": 3,
    }
    body = continuation_body(Endpoint.CHAT, prefixed, "one two", 5)
    assert body is not None
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure: one two"}
    assert len(body["messages"]) == 2
    assert body["max_completion_tokens"] == 1  # never below 1


def test_completions_extend_a_single_string_prompt_only() -> None:
    body = continuation_body(Endpoint.COMPLETIONS, {"prompt": ["Once"], "echo": True}, " upon", 1)
    assert body == {"prompt": "Once upon", "echo": False}
    assert continuation_body(Endpoint.COMPLETIONS, {"prompt": [1, 2]}, "x", 1) is None
    assert continuation_body(Endpoint.EMBEDDINGS, {"input": "x"}, "x", 1) is None


def test_anthropic_gets_an_assistant_prefill_without_the_vllm_fields() -> None:
    body = continuation_body(Endpoint.CHAT, CHAT, "Hello wor", 2)
    assert body is not None
    upstream = to_anthropic_request(body, "claude")
    assert upstream["messages"][-1]["role"] == "assistant"
    assert "continue_final_message" not in upstream
    assert "add_generation_prompt" not in upstream
    assert upstream["max_tokens"] == 8
