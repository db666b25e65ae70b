"""The request that continues a broken stream from the text its client already has.

Continuation failover (``stream_resume``, :mod:`aigw.resume`) sends the client's request again
with the partial assistant text as a prefix the engine must continue, not repeat:

* chat/completions: the conversation plus ``{"role": "assistant", "content": partial}`` and
  vLLM/SGLang's ``continue_final_message: true``, ``add_generation_prompt: false`` (the chat
  template then leaves the last message open). A client that already sent its own assistant
  prefix to continue (``continue_final_message``) gets that message extended instead. The
  Anthropic provider translates only the fields it knows: the last assistant message becomes
  Anthropic's assistant prefill, the vLLM fields are dropped.
* completions: ``prompt`` plus the partial text (one string prompt only).

``max_tokens`` (or ``max_completion_tokens``) is lowered by the tokens already sent, to at
least 1. The body is built as OpenAI's shape, so every provider's ``build_request`` takes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aigw.types import Endpoint

__all__ = ["continuation_body"]


def continuation_body(
    endpoint: Endpoint, body: Mapping[str, Any], partial: str, sent_tokens: int
) -> dict[str, Any] | None:
    """The client's ``body`` (not mutated) continued from ``partial``, the assistant text
    already sent (``sent_tokens`` of it); None when such a request cannot be built (a
    completions prompt that is not one string, a chat body without a message list)."""
    out = dict(body)
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if (
            body.get("continue_final_message")
            and isinstance(last, dict)
            and last.get("role") == "assistant"
            and isinstance(last.get("content"), str)
        ):
            extended = {**last, "content": last["content"] + partial}
            out["messages"] = [*messages[:-1], extended]
        else:
            out["messages"] = [*messages, {"role": "assistant", "content": partial}]
        out["continue_final_message"] = True
        out["add_generation_prompt"] = False
    elif endpoint is Endpoint.COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return None
        out["prompt"] = prompt + partial
        if "echo" in out:
            out["echo"] = False  # the client already has the prompt
    else:
        return None
    for name in ("max_completion_tokens", "max_tokens"):
        limit = body.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool):
            out[name] = max(1, limit - sent_tokens)
    return out
