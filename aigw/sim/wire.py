"""OpenAI / vLLM wire shapes: response bodies, stream chunks and error bodies, as JSON-ready dicts.

Shapes follow what vLLM's OpenAI server returns (which is OpenAI's shape plus a few fields such
as ``stop_reason``), and OpenAI's published schema where vLLM strays from it: a message has
``refusal: null``, ``usage`` has ``prompt_tokens_details`` (the prefix-cache hits as
``cached_tokens``) and ``completion_tokens_details`` objects rather than nulls. Errors are ``{"error": {"message", "type", "param", "code"}}`` with vLLM's
type names and the HTTP status as ``code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "DONE",
    "Choice",
    "ToolCall",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "sse",
    "usage",
]

DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The one tool call a choice makes: ``arguments`` is a JSON object as text."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Choice:
    """A finished choice of a non-streamed response; ``stop_reason`` is the stop string that
    ended it (vLLM's field), ``logprobs`` the choice's object (or None)."""

    index: int
    text: str
    finish_reason: str
    tool_call: ToolCall | None = None
    stop_reason: str | None = None
    logprobs: dict[str, Any] | None = None


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI-shaped error JSON for HTTP ``status``."""
    error_type = _ERROR_TYPES.get(status, "APIError")
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload``."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _message(choice: Choice) -> dict[str, Any]:
    if choice.tool_call is None:
        return {
            "role": "assistant",
            "content": choice.text,
            "refusal": None,
            "tool_calls": [],
            "reasoning_content": None,
        }
    call = choice.tool_call
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ],
        "reasoning_content": None,
    }


def chat_response(
    response_id: str, created: int, model: str, choices: list[Choice], use: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": _message(c),
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            for c in choices
        ],
        "usage": use,
        "prompt_logprobs": None,
    }


def completion_response(
    response_id: str, created: int, model: str, choices: list[Choice], use: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
                "prompt_logprobs": None,
            }
            for c in choices
        ],
        "usage": use,
    }


def chat_chunk(
    head: dict[str, Any],
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``head`` holds id/object/created/model (and ``usage: null``
    when the client asked for usage)."""
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {**head, "choices": [choice]}


def completion_chunk(
    head: dict[str, Any],
    index: int,
    text: str,
    finish_reason: str | None,
    logprobs: dict[str, Any] | None = None,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    return {
        **head,
        "choices": [
            {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
            }
        ],
    }
