"""Check the few request fields the gateway relies on; everything else passes through.

Each check raises InvalidRequestError whose ``param`` names the offending field, the way
OpenAI's API does, so SDK users see which field to fix.

Bodies nested deeper than :data:`MAX_NESTING` levels are refused at parse time: orjson reads
up to 1024 levels but writes only about 255, so a deeper body would fail when the gateway
re-serialises it for the upstream. 64 is far above any real OpenAI body (tools with JSON
schemas nest 10-20 levels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from aigw.errors import InvalidRequestError
from aigw.types import Endpoint

__all__ = ["MAX_NESTING", "VALIDATORS", "parse_body"]

MAX_NESTING = 64

# Keep only brackets and quotes, and make every bracket a brace: depth ignores the kind.
_STRUCTURE_ONLY = (
    bytes.maketrans(b"[]", b"{}"),
    bytes(b for b in range(256) if b not in b'{}[]"'),
)


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequestError("Request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"Request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequestError(
            f"Request body must be a JSON object, not {_json_type(body)}.", code="invalid_json"
        )
    # Only a body with more than MAX_NESTING brackets can be that deep (two C-speed counts).
    if raw.count(b"{") + raw.count(b"[") > MAX_NESTING and _deeper_than(raw, MAX_NESTING):
        raise InvalidRequestError(
            f"Request body is JSON nested deeper than {MAX_NESTING} levels.",
            code="nesting_too_deep",
        )
    return body


def _deeper_than(raw: bytes, limit: int) -> bool:
    """Whether valid JSON ``raw`` nests more than ``limit`` arrays/objects.

    Strings are cut out (escaped backslashes, then escaped quotes removed, so that every
    remaining quote delimits a string: the text between odd and even quotes is outside them),
    the rest reduced to braces; each ``replace`` then removes exactly one level (the innermost
    pairs). All of it runs at C speed: no Python loop over the body's bytes or values.
    """
    if b"\\" in raw:  # memchr; most bodies with escapes hold only \n, not \\ or \"
        if b"\\\\" in raw:
            raw = raw.replace(b"\\\\", b"")
        if b'\\"' in raw:
            raw = raw.replace(b'\\"', b"")
    braces = b"".join(raw.translate(*_STRUCTURE_ONLY).split(b'"')[::2])
    for _ in range(limit):
        braces = braces.replace(b"{}", b"")
        if not braces:
            return False
    return True


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise _typed("model", "a non-empty string", model)
    _optional(body, "stream", bool, "a boolean")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise _typed(name, "an integer >= 1", value)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _typed("stream_options", "an object", options)
        if body.get("stream") is not True:
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is true.",
                param="stream_options",
            )


def _chat(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequestError("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise _typed("messages", "a non-empty array of message objects", messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _typed(f"messages[{i}]", "a message object", message)
        if not isinstance(message.get("role"), str):
            raise InvalidRequestError(
                f"Missing required parameter: 'messages[{i}].role'.", param=f"messages[{i}].role"
            )
    _optional(body, "tools", list, "an array")


def _completions(body: dict[str, Any]) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")
    if not isinstance(prompt, str | list):
        raise _typed("prompt", "a string or an array", prompt)


def _embeddings(body: dict[str, Any]) -> None:
    _common(body)
    if body.get("stream"):
        raise InvalidRequestError("Embeddings cannot be streamed.", param="stream")
    value = body.get("input")
    if value is None:
        raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
    if not isinstance(value, str | list) or value == [] or value == "":
        raise _typed("input", "a non-empty string or array", value)


VALIDATORS: dict[Endpoint, Callable[[dict[str, Any]], None]] = {
    Endpoint.CHAT: _chat,
    Endpoint.COMPLETIONS: _completions,
    Endpoint.EMBEDDINGS: _embeddings,
}


def _optional(body: dict[str, Any], name: str, kind: type, expected: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _typed(name, expected, value)


def _typed(param: str, expected: str, value: object) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
        param=param,
        code="invalid_type",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return "an object"
