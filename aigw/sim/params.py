"""Parse the fields of OpenAI request bodies that the simulator acts on; ignore all others.

Every function raises :class:`BadRequest` (rendered as HTTP 400) with the offending ``param``
when a field it needs is missing or ill-typed. Unknown fields are accepted, as vLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from aigw.sim.text import EMBEDDING_DIM, Prompt, chat_prompt, text_prompt, token_prompt

__all__ = [
    "BadRequest",
    "EmbeddingParams",
    "ForcedTool",
    "GenerationParams",
    "OutputSpec",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
]

MAX_N = 128
MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs
MAX_DIMENSIONS = 8192
# json_object: some object, its values strings, integers or booleans
ANY_OBJECT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": ["string", "integer", "boolean"]},
    "minProperties": 1,
    "maxProperties": 4,
}


class BadRequest(Exception):
    """A client error: HTTP 400 with ``message`` about ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ForcedTool:
    """The function ``tool_choice`` forces, with the JSON Schema of its arguments."""

    name: str
    parameters: Any


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What shapes the generated tokens, beyond their number.

    ``tool``: a forced call, whose arguments satisfy its parameters. ``schema``: the JSON
    Schema the content satisfies (``response_format`` json_schema, or a schema of any
    object for json_object; vLLM's ``guided_json`` too), None for free text. ``stop``: the
    output ends before the first of these strings. ``logprobs``: None for no log
    probabilities, else how many alternatives to list per token.
    """

    tool: ForcedTool | None = None
    schema: Any = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What a chat or completion request asks the engine for.

    ``prompts`` has one entry for chat and one per prompt for completions; each prompt gets
    ``n`` choices, numbered ``prompt_index * n + j``.
    """

    chat: bool
    model: str
    prompts: tuple[Prompt, ...]
    n: int
    max_tokens: int | None
    ignore_eos: bool
    stream: bool
    include_usage: bool
    output: OutputSpec = OutputSpec()


@dataclass(frozen=True, slots=True)
class EmbeddingParams:
    model: str
    inputs: tuple[bytes, ...]
    tokens: tuple[int, ...]
    base64: bool
    dimensions: int = EMBEDDING_DIM


def _model(body: dict[str, Any], default: str) -> str:
    model = body.get("model")
    if model is None:
        return default
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    return model


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer", name)
    if value < minimum:
        raise BadRequest(f"'{name}' must be at least {minimum}, got {value}", name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", name)
    return value


def _common(body: dict[str, Any]) -> tuple[int, bool, bool, bool]:
    n = _optional_int(body, "n", 1) or 1
    if n > MAX_N:
        raise BadRequest(f"'n' must be at most {MAX_N}", "n")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    return n, stream, include_usage, _flag(body, "ignore_eos")


def _forced_tool(body: dict[str, Any]) -> ForcedTool | None:
    """The function a ``tool_choice`` forces, or None when the model may answer in text."""
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if choice is None or choice in ("none", "auto"):
        return None
    if not isinstance(tools, list) or not tools:
        raise BadRequest("When using `tool_choice`, `tools` must be set.", "tools")
    functions: dict[str, Any] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            functions.setdefault(function["name"], function.get("parameters") or {})
    if not functions:
        raise BadRequest("each tool must have a 'function' with a string 'name'", "tools")
    if choice == "required":  # vLLM lets the model pick; the simulated one picks the first
        name = next(iter(functions))
        return ForcedTool(name, functions[name])
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str) and name in functions:
            return ForcedTool(name, functions[name])
        raise BadRequest(f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
    raise BadRequest(
        "'tool_choice' must be 'none', 'auto', 'required' or a function", "tool_choice"
    )


def _response_schema(body: dict[str, Any]) -> Any:
    """The JSON Schema ``response_format`` (or vLLM's ``guided_json``) asks the content to
    satisfy; None for free text."""
    fmt = body.get("response_format")
    if fmt is None:
        guided = body.get("guided_json")
        if isinstance(guided, str):
            try:
                guided = orjson.loads(guided)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"'guided_json' is not JSON: {exc}", "guided_json") from exc
        if guided is not None and not isinstance(guided, dict | bool):
            raise BadRequest("'guided_json' must be a JSON Schema", "guided_json")
        return guided
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest("'response_format.json_schema' must be an object", "response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict | bool):
            raise BadRequest(
                "'response_format.json_schema.schema' must be a JSON Schema", "response_format"
            )
        return schema
    raise BadRequest(
        "'response_format' must be an object whose 'type' is 'text', 'json_object' or "
        "'json_schema'",
        "response_format",
    )


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    return tuple(s for s in stop if s)


def _top(value: int, name: str) -> int:
    if value > MAX_TOP_LOGPROBS:
        raise BadRequest(f"'{name}' must be at most {MAX_TOP_LOGPROBS}, got {value}", name)
    return value


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    top = _optional_int(body, "top_logprobs", 0)
    if not _flag(body, "logprobs"):
        if top:
            raise BadRequest(
                "when using `top_logprobs`, `logprobs` must be set to true.", "logprobs"
            )
        return None
    return _top(top or 0, "top_logprobs")


def _completion_logprobs(body: dict[str, Any]) -> int | None:
    top = _optional_int(body, "logprobs", 0)
    return None if top is None else _top(top, "logprobs")


def parse_chat(body: dict[str, Any], default_model: str) -> GenerationParams:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    try:
        prompt = chat_prompt(messages, body.get("tools"))
    except TypeError as exc:
        raise BadRequest(str(exc), "messages") from exc
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", 1)
    n, stream, include_usage, ignore_eos = _common(body)
    return GenerationParams(
        chat=True,
        model=_model(body, default_model),
        prompts=(prompt,),
        n=n,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        stream=stream,
        include_usage=include_usage,
        output=OutputSpec(
            tool=_forced_tool(body),
            schema=_response_schema(body),
            stop=_stop(body),
            logprobs=_chat_logprobs(body),
        ),
    )


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _completion_prompts(raw: Any) -> tuple[Prompt, ...]:
    """``prompt`` as str, list of str, token ids, or list of token-id lists."""
    try:
        if isinstance(raw, str):
            return (text_prompt(raw),)
        if isinstance(raw, list) and raw:
            if _is_token_list(raw):
                return (token_prompt(raw),)
            if all(isinstance(p, str) for p in raw):
                return tuple(text_prompt(p) for p in raw)
            if all(_is_token_list(p) and p for p in raw):
                return tuple(token_prompt(p) for p in raw)
    except OverflowError as exc:
        raise BadRequest("token ids must be unsigned 32-bit integers", "prompt") from exc
    raise BadRequest(
        "'prompt' must be a string, a list of strings, or token ids (a list or a list of lists)",
        "prompt",
    )


def parse_completion(body: dict[str, Any], default_model: str) -> GenerationParams:
    prompts = _completion_prompts(body.get("prompt"))
    n, stream, include_usage, ignore_eos = _common(body)
    return GenerationParams(
        chat=False,
        model=_model(body, default_model),
        prompts=prompts,
        n=n,
        max_tokens=_optional_int(body, "max_tokens", 1),
        ignore_eos=ignore_eos,
        stream=stream,
        include_usage=include_usage,
        output=OutputSpec(
            schema=_response_schema(body),
            stop=_stop(body),
            logprobs=_completion_logprobs(body),
        ),
    )


def parse_embedding(body: dict[str, Any], default_model: str) -> EmbeddingParams:
    """``input`` as str, list of str, token ids or list of token-id lists."""
    raw = body.get("input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if isinstance(raw, str):
        raw = [raw]
    elif _is_token_list(raw) and raw:
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'input' must be a string, a list of strings or token ids", "input")
    inputs: list[bytes] = []
    tokens: list[int] = []
    for item in raw:
        if isinstance(item, str):
            prompt = text_prompt(item)
            inputs.append(item.encode("utf-8", "surrogatepass"))
        elif _is_token_list(item) and item:
            try:
                prompt = token_prompt(item)
            except OverflowError as exc:
                raise BadRequest("token ids must be unsigned 32-bit integers", "input") from exc
            inputs.append(repr(item).encode())
        else:
            raise BadRequest("'input' items must be strings or token-id lists", "input")
        tokens.append(prompt.tokens)
    model = _model(body, default_model)
    dimensions = _optional_int(body, "dimensions", 1) or EMBEDDING_DIM
    if dimensions > MAX_DIMENSIONS:
        raise BadRequest(f"'dimensions' must be at most {MAX_DIMENSIONS}", "dimensions")
    return EmbeddingParams(model, tuple(inputs), tuple(tokens), fmt == "base64", dimensions)
