"""A fake Anthropic Messages API (``POST /v1/messages``) for end-to-end tests on real sockets.

It checks what the real API checks that a translation could get wrong (``x-api-key``,
``anthropic-version``, ``max_tokens``, user/assistant alternation, tool_choice naming a
declared tool) and answers deterministically:

* by default one text block ``"echo: <last user text>"`` (``stop_reason: end_turn``), cut to
  ``max_tokens`` words (``stop_reason: max_tokens``) when that is smaller;
* when ``tools`` are given and ``tool_choice`` is ``any`` or ``tool``, one ``tool_use`` block
  calling the chosen (or first) tool with ``{}`` (``stop_reason: tool_use``).

With ``stream: true`` it sends Anthropic's event sequence, ``event:`` lines included
(message_start, content_block_start, ping, content_block_delta..., content_block_stop,
message_delta, message_stop). Received bodies are appended to ``app.state.requests``.
Token counts are words, which is enough for tests that compare usage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["MESSAGE_ID", "create_fake_anthropic"]

MESSAGE_ID = "msg_fake_01"
TOOL_USE_ID = "toolu_fake_01"


def create_fake_anthropic(api_key: str = "test-key", model: str = "claude-fake-1") -> Starlette:
    """Build the fake; ``model`` is what replies report (requests may name any model)."""

    async def messages(request: Request) -> Response:
        if request.headers.get("x-api-key") != api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid_request_error", "There was an error parsing the body")
        request.app.state.requests.append(body)
        problem = _validate(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        message = _reply(body, model)
        if body.get("stream"):
            return StreamingResponse(_events(message), media_type="text/event-stream")
        return JSONResponse(message)

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    app.state.requests = []
    return app


def _error(status: int, kind: str, message: str) -> JSONResponse:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status)


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body: expected an object"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == previous:
            return (
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        if not message.get("content"):
            return f"messages.{i}: all messages must have non-empty content"
        previous = role
    choice = body.get("tool_choice") or {}
    names = [tool.get("name") for tool in body.get("tools") or ()]
    if choice.get("type") == "tool" and choice.get("name") not in names:
        return f"tool_choice: tool {choice.get('name')!r} not found in tools"
    return None


def _reply(body: dict[str, Any], model: str) -> dict[str, Any]:
    prompt_words = sum(len(_text(m.get("content")).split()) for m in body["messages"])
    prompt_words += len(str(body.get("system") or "").split())
    choice = body.get("tool_choice") or {}
    tools = body.get("tools") or []
    if tools and choice.get("type") in ("any", "tool"):
        name = choice.get("name") or tools[0]["name"]
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": TOOL_USE_ID, "name": name, "input": {}}
        ]
        stop_reason, output = "tool_use", 5
    else:
        last_user = next(m for m in reversed(body["messages"]) if m["role"] == "user")
        words = f"echo: {_text(last_user['content'])}".split()
        stop_reason = "end_turn"
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[: body["max_tokens"]], "max_tokens"
        content = [{"type": "text", "text": " ".join(words)}]
        output = len(words)
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt_words,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
        },
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(block.get("text", "") for block in content or () if block.get("type") == "text")


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def _events(message: dict[str, Any]) -> AsyncIterator[bytes]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    yield _sse("message_start", {"message": start})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield _sse(
                "content_block_start",
                {"index": index, "content_block": {"type": "text", "text": ""}},
            )
            yield _sse("ping", {})
            words = block["text"].split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                delta = {"type": "text_delta", "text": piece}
                yield _sse("content_block_delta", {"index": index, "delta": delta})
        else:
            yield _sse(
                "content_block_start", {"index": index, "content_block": {**block, "input": {}}}
            )
            yield _sse("ping", {})
            # Real streams open with an empty fragment, then send the JSON in pieces.
            for piece in ("", "{", "}"):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _sse("content_block_delta", {"index": index, "delta": delta})
        yield _sse("content_block_stop", {"index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _sse(
        "message_delta", {"delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}
    )
    yield _sse("message_stop", {})
