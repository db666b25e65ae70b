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
from collections.abc import Callable
from typing import Any

import orjson

from aigw.config import DeploymentConfig
from aigw.errors import InvalidRequestError, UpstreamStatusError
from aigw.providers.base import Endpoint, UpstreamRequest
from aigw.sse import DONE, ServerSentEvent, SSEDecoder

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
DEFAULT_MAX_TOKENS = 4096

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

_REJECTED_IF_SET = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "audio",
    "web_search_options",
    "functions",
    "function_call",
)


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

    def build_request(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamRequest:
        if endpoint is not Endpoint.CHAT:
            raise InvalidRequestError(
                f"Anthropic deployments serve only chat/completions, not {endpoint.value}"
            )
        upstream = to_anthropic_request(body, self._model)
        return UpstreamRequest(self._url, self._headers, orjson.dumps(upstream))

    def parse_response(self, endpoint: Endpoint, status: int, body: bytes) -> bytes:
        message = _load_object(body, "response")
        return orjson.dumps(to_openai_completion(message, int(self._clock())))

    def stream_translator(self, endpoint: Endpoint, request: dict[str, Any]) -> AnthropicStream:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return AnthropicStream(self._model, int(self._clock()), include_usage=include_usage)

    def parse_error(self, status: int, body: bytes) -> UpstreamStatusError:
        return parse_anthropic_error(status, body)


# -- request ---------------------------------------------------------------------------------


def to_anthropic_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat completions ``body``; ``body`` is not mutated.

    Raises :class:`InvalidRequestError` (with ``param``) for what Anthropic cannot honour.
    """
    _reject_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body)}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = messages
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InvalidRequestError("temperature must be a number", param="temperature")
        if not 0 <= temperature <= 1:
            raise InvalidRequestError(
                f"temperature must be between 0 and 1 for Anthropic models (got {temperature!r})",
                param="temperature",
            )
        out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = list(stop)
    elif stop is not None:
        raise InvalidRequestError("stop must be a string or an array of strings", param="stop")
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream"):
        out["stream"] = True
    return out


def _reject_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequestError("Anthropic models return one choice: n must be 1", param="n")
    for name in _REJECTED_IF_SET:
        if body.get(name):
            raise InvalidRequestError(f"{name} is not supported by Anthropic models", param=name)
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise InvalidRequestError(
            "response_format other than text is not supported by Anthropic models",
            param="response_format",
        )
    modalities = body.get("modalities")
    if modalities and any(m != "text" for m in modalities):
        raise InvalidRequestError("Anthropic models only produce text", param="modalities")


def _max_tokens(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(f"{name} must be a positive integer", param=name)
        return value
    return DEFAULT_MAX_TOKENS


def _messages(raw: object) -> tuple[list[str], list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("messages must be a non-empty array", param="messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise InvalidRequestError(
                f"{where}.role {role!r} is not supported by Anthropic models", param=f"{where}.role"
            )
        if not blocks:
            continue  # Anthropic rejects empty content; an empty turn carries nothing anyway
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequestError(
            "messages must contain at least one non-empty user or assistant message",
            param="messages",
        )
    return system, turns


def _plain_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequestError(
                    f"{where}[{j}] must be a text part", param=f"{where}[{j}]"
                )
            texts.append(_str_field(part, "text", f"{where}[{j}]"))
        return "\n".join(texts)
    raise InvalidRequestError(f"{where} must be a string or an array of parts", param=where)


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where} must be a string or an array of parts", param=where)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = _str_field(part, "text", at)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        else:
            raise InvalidRequestError(
                f"{at}: content part type {kind!r} is not supported by Anthropic models", param=at
            )
    return blocks


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if comma and media_type and "base64" in params:
            source = {"type": "base64", "media_type": media_type, "data": data}
            return {"type": "image", "source": source}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError(
        f"{where}.image_url.url must be an http(s) URL or a base64 data: URL",
        param=f"{where}.image_url",
    )


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal"):
                at = f"{where}.content[{j}]"
                raise InvalidRequestError(f"{at} must be a text or refusal part", param=at)
            text = _str_field(part, kind, f"{where}.content[{j}]")
            if text:
                blocks.append({"type": "text", "text": text})
    elif content is not None:
        raise InvalidRequestError(
            f"{where}.content must be a string or parts", param=f"{where}.content"
        )
    for k, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise InvalidRequestError(f"{at} must be a function tool call", param=at)
        blocks.append(
            {
                "type": "tool_use",
                "id": _str_field(call, "id", at),
                "name": _str_field(function, "name", f"{at}.function"),
                "input": _arguments(function.get("arguments"), f"{at}.function.arguments"),
            }
        )
    return blocks


def _arguments(raw: object, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"{where} is not valid JSON: {exc}", param=where) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where} must be a JSON object", param=where)
    return value


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _str_field(message, "tool_call_id", where),
    }
    content = message.get("content")
    if isinstance(content, list):
        content = _user_blocks(content, f"{where}.content")  # Anthropic accepts text and images
    elif content is not None and not isinstance(content, str):
        raise InvalidRequestError(
            f"{where}.content must be a string or parts", param=f"{where}.content"
        )
    if content:
        block["content"] = content
    return block


def _tools(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidRequestError("tools must be an array", param="tools")
    tools = []
    for k, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise InvalidRequestError(
                f"tools[{k}]: only function tools are supported by Anthropic models",
                param=f"tools[{k}]",
            )
        entry: dict[str, Any] = {"name": _str_field(function, "name", f"tools[{k}].function")}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append(entry)
    return tools


def _tool_choice(choice: object, parallel: object, has_tools: bool) -> dict[str, Any] | None:
    if not has_tools:
        if choice in (None, "auto", "none"):
            return None
        raise InvalidRequestError("tool_choice requires tools", param="tool_choice")
    if choice is None:
        out: dict[str, Any] | None = None if parallel is not False else {"type": "auto"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}  # parallelism is moot when no tool may be called
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequestError("tool_choice.function.name is required", param="tool_choice")
        out = {"type": "tool", "name": name}
    else:
        raise InvalidRequestError(
            "tool_choice must be auto, required, none or a named function", param="tool_choice"
        )
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _str_field(obj: dict[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where}.{name} must be a string", param=f"{where}.{name}")
    return value


# -- response --------------------------------------------------------------------------------


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
    message = error.get("message") or f"Anthropic reported {kind} mid-stream"
    return UpstreamStatusError(status, message, type=openai_type, code=kind)


def _load_object(body: bytes | str, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamStatusError(502, f"Anthropic sent a {what} that is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UpstreamStatusError(502, f"Anthropic sent a {what} that is not a JSON object")
    return data


# -- stream ----------------------------------------------------------------------------------

_CHUNK_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'


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
    overloaded → 503, api_error → 502, rate_limit → 429, ...); an event that is not JSON
    (502); ``finish`` before ``message_stop`` (502). When an error event arrives after output
    was already returned by an earlier ``feed``, the output decoded before it in the same
    chunk is returned first and the error is raised by the next ``feed``/``finish``; before
    any output it is raised at once, so the gateway can still retry elsewhere.
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
        "_tool_index",
        "_usage",
    )

    def __init__(self, model: str, created: int, *, include_usage: bool = False) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._created = created
        self._set_identity(f"chatcmpl-{uuid.uuid4().hex}", model)
        self._tool_index: dict[object, int] = {}  # Anthropic block index -> OpenAI tool index
        self._usage: dict[str, int] = {}
        self._finished = False  # message_stop seen, [DONE] sent
        self._emitted = False  # some output already returned to the caller
        self._error: UpstreamStatusError | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        if self._finished:
            return b""
        return self._translate(self._decoder.feed(chunk))

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
            data = _load_object(event.data, "stream event")
            kind = data.get("type")
            if kind == "content_block_delta":
                self._block_delta(data, out)
            elif kind == "content_block_start":
                self._block_start(data, out)
            elif kind == "message_start":
                message = data.get("message") or {}
                if message.get("id") and message.get("model"):
                    self._set_identity(message["id"], message["model"])
                self._add_usage(message.get("usage"))
                out.append(self._prefix + b'{"role":"assistant","content":""}' + _CHUNK_TAIL)
            elif kind == "message_delta":
                self._add_usage(data.get("usage"))
                reason = FINISH_REASONS.get((data.get("delta") or {}).get("stop_reason"), "stop")
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
                break
            elif kind == "error":
                error = _stream_error(data)
                if not (out and self._emitted):
                    raise error
                self._error = error
                break
        if not out:
            return b""
        self._emitted = True
        return b"".join(out)

    def _block_start(self, data: dict[str, Any], out: list[bytes]) -> None:
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            index = self._tool_index[data.get("index")] = len(self._tool_index)
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            out.append(self._prefix + orjson.dumps({"tool_calls": [call]}) + _CHUNK_TAIL)
        elif kind == "text" and block.get("text"):
            out.append(self._prefix + orjson.dumps({"content": block["text"]}) + _CHUNK_TAIL)

    def _block_delta(self, data: dict[str, Any], out: list[bytes]) -> None:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            if delta.get("text"):
                out.append(self._prefix + orjson.dumps({"content": delta["text"]}) + _CHUNK_TAIL)
        elif kind == "input_json_delta":
            index = self._tool_index.get(data.get("index"))
            if index is not None and delta.get("partial_json"):
                call = {"index": index, "function": {"arguments": delta["partial_json"]}}
                out.append(self._prefix + orjson.dumps({"tool_calls": [call]}) + _CHUNK_TAIL)

    def _add_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            # message_delta counts are cumulative: later values replace earlier ones.
            self._usage.update((k, v) for k, v in usage.items() if isinstance(v, int))
