"""Anthropic's Messages API (``POST /v1/messages``) behind OpenAI's chat completions.

Translated, request (OpenAI → Anthropic):

* ``system``/``developer`` messages (anywhere in the list) → top-level ``system``, joined
  with blank lines, since Anthropic has no system role inside ``messages``;
* ``user`` content as a string or parts: ``text``; ``image_url`` with a ``data:…;base64`` URL →
  a base64 image source, with an ``http(s)`` URL → a url source;
* ``assistant`` content (text and ``refusal`` parts) and ``tool_calls`` → ``tool_use`` blocks
  (``arguments`` parsed into ``input``);
* ``tool`` messages → ``tool_result`` blocks in a user turn; consecutive messages that end up
  with the same role are merged, because Anthropic requires user/assistant alternation;
* ``tools`` (function tools) → ``{name, description, input_schema}``; ``tool_choice``
  ``auto``/``required``/``none``/named → ``auto``/``any``/``none``/``tool``;
  ``parallel_tool_calls: false`` → ``tool_choice.disable_parallel_tool_use``;
* ``max_completion_tokens`` or ``max_tokens`` → ``max_tokens`` (Anthropic requires it:
  :data:`DEFAULT_MAX_TOKENS` when absent); ``temperature`` (must be ≤ 1 here), ``top_p``,
  ``stop`` → ``stop_sequences``, ``user`` (else ``safety_identifier``) → ``metadata.user_id``,
  ``stream``; ``top_k`` (Anthropic's own) passes through. The model is the deployment's.

Rejected with :class:`~aigw.errors.InvalidRequestError` naming the field, because the client
explicitly asked for something Anthropic cannot do: ``n`` > 1, ``logprobs``, ``top_logprobs``,
``logit_bias``, ``response_format`` other than text, ``audio``, non-text ``modalities``,
legacy ``functions``/``function_call``, ``web_search_options``, non-function tools, content
parts other than text/image, ``temperature`` > 1.

Dropped as harmless (no Anthropic equivalent, or only a hint): ``frequency_penalty``,
``presence_penalty``, ``seed``, ``service_tier``, ``store``, ``metadata``, ``prediction``,
``reasoning_effort``, ``stream_options`` (read by the stream translator), message ``name``,
image ``detail``, function ``strict``, and any field this module does not know (Anthropic
rejects unknown fields, so forwarding them would only turn a hint into an error).

Replies: message JSON → ``chat.completion``; the event stream → ``chat.completion.chunk``
SSE (see :class:`AnthropicStream`); thinking and server-tool blocks are not relayed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from aigw.config import DeploymentConfig
from aigw.errors import InvalidRequestError, UpstreamStatusError
from aigw.providers.anthropic_request import DEFAULT_MAX_TOKENS, to_anthropic_request
from aigw.providers.openai_stream import MAX_EVENT_BYTES
from aigw.sse import DONE, ServerSentEvent, SSEDecoder
from aigw.types import Endpoint, UpstreamRequest, Usage

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "AnthropicStream",
    "parse_anthropic_error",
    "to_anthropic_request",
    "to_openai_completion",
]

ANTHROPIC_VERSION = "2023-06-01"

FINISH_REASONS: dict[str | None, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    # A server-tool loop paused: the turn is over for this response, the client may continue.
    "pause_turn": "stop",
    "refusal": "content_filter",
}

# Anthropic error type -> (status for an error met inside a stream, OpenAI error type).
# 529 overloaded is Anthropic's own status; OpenAI clients know 503 (and retry it).
_ERROR_TYPES: dict[str, tuple[int, str]] = {
    "invalid_request_error": (400, "invalid_request_error"),
    "authentication_error": (401, "authentication_error"),
    "billing_error": (402, "insufficient_quota"),
    "permission_error": (403, "permission_error"),
    "not_found_error": (404, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limit_error": (429, "rate_limit_error"),
    "api_error": (502, "api_error"),
    "timeout_error": (504, "timeout"),
    "overloaded_error": (503, "service_unavailable"),
}


class AnthropicProvider:
    """One Anthropic deployment: ``config.base_url`` (e.g. ``https://api.anthropic.com``)."""

    def __init__(self, config: DeploymentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._model = config.model
        self._url = f"{config.base_url}/v1/messages"
        headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["x-api-key"] = config.api_key.get_secret_value()
        # Last, so an operator can pin another version or add anthropic-beta.
        headers.update(config.headers)
        self._headers = headers
        self._clock = clock

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint is Endpoint.CHAT

    def build_request(self, endpoint: Endpoint, body: Mapping[str, Any]) -> UpstreamRequest:
        if endpoint is not Endpoint.CHAT:
            raise InvalidRequestError(
                f"Anthropic deployments serve only chat/completions, not {endpoint.value}"
            )
        upstream = to_anthropic_request(body, self._model)
        return UpstreamRequest(self._url, self._headers, orjson.dumps(upstream))

    def parse_response(
        self, endpoint: Endpoint, status: int, body: bytes
    ) -> tuple[bytes, Usage | None]:
        message = _load_object(body, "response")
        completion = to_openai_completion(message, int(self._clock()))
        usage = message.get("usage")
        return orjson.dumps(completion), _to_usage(usage) if isinstance(usage, dict) else None

    def stream_translator(self, endpoint: Endpoint, request: Mapping[str, Any]) -> AnthropicStream:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return AnthropicStream(self._model, int(self._clock()), include_usage=include_usage)

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        return parse_anthropic_error(status, body)


# -- request ---------------------------------------------------------------------------------


def to_openai_completion(message: dict[str, Any], created: int) -> dict[str, Any]:
    """A ``chat.completion`` object for an Anthropic ``message`` object."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": message.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(message.get("stop_reason"), "stop"),
            }
        ],
        "usage": _usage(message.get("usage") or {}),
    }


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
    prompt += cached
    completion = usage.get("output_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _to_usage(usage: dict[str, Any]) -> Usage:
    """Anthropic's usage as :class:`Usage`: prompt tokens include cache writes and reads."""
    openai = _usage(usage)
    return Usage(openai["prompt_tokens"], openai["completion_tokens"])


def parse_anthropic_error(status: int, body: bytes) -> UpstreamStatusError:
    """``{"type": "error", "error": {"type", "message"}}`` → the error the client sees.

    The status is kept, except Anthropic's non-standard 529 (overloaded), which becomes 503.
    ``code`` carries Anthropic's own error type.
    """
    client_status = 503 if status == 529 else status
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type") if isinstance(error.get("type"), str) else None
        openai_type = _ERROR_TYPES[kind][1] if kind in _ERROR_TYPES else None
        return UpstreamStatusError(client_status, error["message"], type=openai_type, code=kind)
    text = body.decode("utf-8", "replace").strip()[:500]
    return UpstreamStatusError(
        client_status, f"Anthropic returned HTTP {status}: {text or 'empty body'}"
    )


def _stream_error(data: dict[str, Any]) -> UpstreamStatusError:
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    kind = error.get("type")
    if not isinstance(kind, str):
        kind = "api_error"
    status, openai_type = _ERROR_TYPES.get(kind, (502, "api_error"))
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"Anthropic reported {kind} mid-stream"
    return UpstreamStatusError(status, message, type=openai_type, code=kind)


def _load_object(body: bytes | str, what: str, code: str | None = None) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamStatusError(
            502, f"Anthropic sent a {what} that is not JSON: {exc}", code=code
        ) from exc
    if not isinstance(data, dict):
        raise UpstreamStatusError(
            502, f"Anthropic sent a {what} that is not a JSON object", code=code
        )
    return data


# -- stream ----------------------------------------------------------------------------------

_CHUNK_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'
# Token counts are summed (prompt = input + cache writes + cache reads) and serialised by
# orjson, which refuses integers over 64 bits; 2**53 is also where JSON readers lose precision.
_MAX_COUNT = (1 << 53) - 1


def _malformed(field: str) -> UpstreamStatusError:
    # Same code as OpenAIStream's refused lines; the offending value is not quoted.
    return UpstreamStatusError(
        502, f"Anthropic sent a stream event with a malformed {field!r}", code="upstream_bad_event"
    )


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` when it is an object, ``{}`` when absent or null; else a malformed event."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(key)
    return value


def _string(data: dict[str, Any], key: str) -> str | None:
    """``data[key]`` when it is a string, None when absent or null; else a malformed event."""
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _malformed(key)
    return value


def _index(data: dict[str, Any]) -> int:
    """A content block's ``index``, which Anthropic always sends as an integer."""
    value = data.get("index")
    if type(value) is not int:
        raise _malformed("index")
    return value


class AnthropicStream:
    """Translates one Anthropic event stream into OpenAI ``chat.completion.chunk`` SSE.

    ``message_start`` → a chunk with ``delta.role``; text deltas → ``delta.content``; a
    ``tool_use`` block → ``delta.tool_calls[{index, id, type, function{name, arguments: ""}}]``
    and its ``input_json_delta`` fragments → ``function.arguments`` at that index;
    ``message_delta`` → an empty delta with the mapped ``finish_reason``; ``message_stop`` →
    a usage chunk (``choices: []``, only when ``include_usage``) and ``data: [DONE]``. Pings,
    block stops, thinking and unknown events produce nothing. Every chunk carries the same
    ``id`` (Anthropic's message id), ``created`` and ``model``.

    Errors (:class:`UpstreamStatusError`): an ``error`` event (status from its type:
    overloaded → 503, api_error → 502, rate_limit → 429, ...); an event that is not a JSON
    object, or whose fields the translation reads have the wrong JSON type, or a token count
    that is negative or over 2**53 (502 ``upstream_bad_event``: never an exception of another
    kind, never a chunk carrying the bad value); ``finish`` before ``message_stop`` (502).
    When an error event or a malformed one arrives after output was already returned by an
    earlier ``feed``, the output decoded before it in the same chunk is returned first and the
    error is raised by the next ``feed``/``finish``; before any output it is raised at once,
    so the gateway can still retry elsewhere.
    """

    __slots__ = (
        "_created",
        "_decoder",
        "_emitted",
        "_error",
        "_finished",
        "_head",
        "_include_usage",
        "_prefix",
        "_since_event",
        "_tool_index",
        "_usage",
    )

    def __init__(self, model: str, created: int, *, include_usage: bool = False) -> None:
        self._decoder = SSEDecoder()
        self._since_event = 0  # bytes fed since the decoder last completed an event
        self._include_usage = include_usage
        self._created = created
        self._set_identity(f"chatcmpl-{uuid.uuid4().hex}", model)
        self._tool_index: dict[object, int] = {}  # Anthropic block index -> OpenAI tool index
        self._usage: dict[str, int] = {}
        self._finished = False  # message_stop seen, [DONE] sent
        self._emitted = False  # some output already returned to the caller
        self._error: UpstreamStatusError | None = None

    @property
    def usage(self) -> Usage | None:
        """From ``message_start`` (prompt) and ``message_delta`` (output); None before."""
        return _to_usage(self._usage) if self._usage else None

    def feed(self, chunk: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        if self._finished:
            return b""
        events = self._decoder.feed(chunk)
        if events:
            self._since_event = 0  # what is left undecoded is less than this chunk
        else:
            self._since_event += len(chunk)
            if self._since_event > MAX_EVENT_BYTES:  # an endless event: not held in memory
                self._error = UpstreamStatusError(
                    502,
                    f"upstream sent a stream event over {MAX_EVENT_BYTES} bytes",
                    code="upstream_event_too_large",
                )
                raise self._error
        return self._translate(events)

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        if self._finished:
            return b""
        out = self._translate(self._decoder.flush())
        if not self._finished:
            raise UpstreamStatusError(
                502, "Anthropic's stream ended before message_stop", code="incomplete_stream"
            )
        return out

    def _set_identity(self, message_id: str, model: str) -> None:
        # Everything but the delta is fixed per response: serialise it once.
        self._head = b"".join(
            (
                b'data: {"id":',
                orjson.dumps(message_id),
                b',"object":"chat.completion.chunk","created":',
                str(self._created).encode(),
                b',"model":',
                orjson.dumps(model),
            )
        )
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'

    def _translate(self, events: list[ServerSentEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            try:
                if self._event(event, out):
                    break
            except UpstreamStatusError as error:  # an error event, or a malformed one
                if not (out and self._emitted):
                    raise
                self._error = error
                break
        if not out:
            return b""
        self._emitted = True
        return b"".join(out)

    def _event(self, event: ServerSentEvent, out: list[bytes]) -> bool:
        """Translate one event onto ``out``; True once the stream is finished."""
        data = _load_object(event.data, "stream event", "upstream_bad_event")
        kind = data.get("type")
        if kind == "content_block_delta":
            self._block_delta(data, out)
        elif kind == "content_block_start":
            self._block_start(data, out)
        elif kind == "message_start":
            message = _object(data, "message")
            message_id, model = _string(message, "id"), _string(message, "model")
            if message_id and model:
                self._set_identity(message_id, model)
            self._add_usage(message.get("usage"))
            out.append(self._prefix + b'{"role":"assistant","content":""}' + _CHUNK_TAIL)
        elif kind == "message_delta":
            self._add_usage(data.get("usage"))
            reason = FINISH_REASONS.get(_string(_object(data, "delta"), "stop_reason"), "stop")
            out.append(
                self._prefix
                + b'{},"logprobs":null,"finish_reason":"'
                + reason.encode()
                + b'"}]}\n\n'
            )
        elif kind == "message_stop":
            if self._include_usage:
                usage = orjson.dumps(_usage(self._usage))
                out.append(self._head + b',"choices":[],"usage":' + usage + b"}\n\n")
            out.append(DONE)
            self._finished = True
            return True
        elif kind == "error":
            raise _stream_error(data)
        return False

    def _block_start(self, data: dict[str, Any], out: list[bytes]) -> None:
        block = _object(data, "content_block")
        kind = block.get("type")
        if kind == "tool_use":
            index = self._tool_index[_index(data)] = len(self._tool_index)
            call = {
                "index": index,
                "id": _string(block, "id"),
                "type": "function",
                "function": {"name": _string(block, "name"), "arguments": ""},
            }
            out.append(self._prefix + orjson.dumps({"tool_calls": [call]}) + _CHUNK_TAIL)
        elif kind == "text" and (text := _string(block, "text")):
            out.append(self._prefix + orjson.dumps({"content": text}) + _CHUNK_TAIL)

    def _block_delta(self, data: dict[str, Any], out: list[bytes]) -> None:
        delta = _object(data, "delta")
        kind = delta.get("type")
        if kind == "text_delta":
            if text := _string(delta, "text"):
                out.append(self._prefix + orjson.dumps({"content": text}) + _CHUNK_TAIL)
        elif kind == "input_json_delta":
            index = self._tool_index.get(_index(data))
            if index is not None and (fragment := _string(delta, "partial_json")):
                call = {"index": index, "function": {"arguments": fragment}}
                out.append(self._prefix + orjson.dumps({"tool_calls": [call]}) + _CHUNK_TAIL)

    def _add_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            # message_delta counts are cumulative: later values replace earlier ones. Other
            # values (objects such as ``cache_creation``, strings, booleans) are not counts.
            counts = {k: v for k, v in usage.items() if type(v) is int}
            if any(not 0 <= v <= _MAX_COUNT for v in counts.values()):
                raise _malformed("usage")
            self._usage.update(counts)
