"""OpenAI chat completion request -> Anthropic Messages request (see providers.anthropic).

The translation rules, what is rejected and what is dropped, are listed in the docstring of
:mod:`aigw.providers.anthropic`, which re-exports :func:`to_anthropic_request`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aigw.errors import InvalidRequestError

__all__ = ["DEFAULT_MAX_TOKENS", "to_anthropic_request"]

DEFAULT_MAX_TOKENS = 4096

_REJECTED_IF_SET = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "audio",
    "web_search_options",
    "functions",
    "function_call",
)


def to_anthropic_request(body: Mapping[str, Any], model: str) -> dict[str, Any]:
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


def _reject_unsupported(body: Mapping[str, Any]) -> None:
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


def _max_tokens(body: Mapping[str, Any]) -> int:
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
