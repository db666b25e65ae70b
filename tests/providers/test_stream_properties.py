"""Properties of the stream translators, seen as the client sees them through the gateway.

``relay`` does what ``UpstreamStream.relay`` does: it sends each ``feed``'s output, then
``finish``'s, and on a :class:`~aigw.errors.GatewayError` one error event in OpenAI's shape,
after which nothing. Any other exception escapes the gateway (no error event, a broken
response), so a test fails on it.

Properties: a valid upstream stream gives the same client bytes however it is cut into
chunks; garbage ends in a valid relay or in exactly one clean error event, never an exception,
never a line an OpenAI client should not see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from aigw.errors import GatewayError, UpstreamStatusError
from aigw.providers.anthropic import AnthropicStream
from aigw.providers.openai_stream import MAX_EVENT_BYTES, OpenAIStream
from aigw.sse import ServerSentEvent, SSEDecoder
from aigw.types import Usage

BOM = b"\xef\xbb\xbf"
MODEL = "claude-sonnet-4-5-20250929"
OWN_CODES = {"upstream_bad_event", "upstream_event_too_large"}
CUTS = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=10)
TEXT = st.text(
    st.one_of(st.sampled_from('é✓😀🚀"\\:\n\r {}'), st.characters(exclude_categories=["Cs"])),
    max_size=8,
)
TEXT_LIST = st.lists(TEXT, max_size=5)
_LINE_END = re.compile(rb"\r\n|\r|\n")

Translator = OpenAIStream | AnthropicStream


def relay(translator: Translator, chunks: Sequence[bytes]) -> tuple[bytes, GatewayError | None]:
    """The client's bytes and the error that ended them (None when the stream ended well)."""
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out.append(translator.feed(chunk))
        out.append(translator.finish())
    except GatewayError as exc:
        out.append(error_event(exc))
        return b"".join(out), exc
    return b"".join(out), None


def error_event(exc: GatewayError) -> bytes:
    return b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    positions = sorted({cut % (len(stream) + 1) for cut in cuts})
    return [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)], strict=True)]


def splits(stream: bytes, cuts: list[int]) -> list[list[bytes]]:
    """Whole, cut where hypothesis chose, and a byte at a time (every cut there is)."""
    return [[stream], split(stream, cuts), [stream[i : i + 1] for i in range(len(stream))]]


def decode(data: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [*decoder.feed(data), *decoder.flush()]


def without_error(out: bytes, error: GatewayError | None) -> bytes:
    """What the translator relayed before the error event, checking that event comes last."""
    if error is None:
        return out
    event = error_event(error)
    assert out.endswith(event)
    return out[: -len(event)]


def assert_one_clean_error_at_the_end(out: bytes, error: GatewayError) -> None:
    """The client's SSE parser sees the error as its own, last event, and no other error."""
    events = decode(out)
    assert orjson.loads(events[-1].data) == error.to_dict()
    assert not any(b'"error":' in e.data.encode() for e in events[:-1])


# -- OpenAI-compatible relay ------------------------------------------------------------------


def relayable(stream: bytes) -> bool:
    """Whether every line is one OpenAI-compatible servers write (OpenAIStream's contract).

    Blank, a ``:`` comment, ``event:``/``id:``/``retry:``, or ``data:`` whose value (after one
    optional space) starts with ``{`` or ``[DONE]`` when it is its event's first data line.
    A byte order mark may start the stream.
    """
    first_data = True
    for line in _LINE_END.split(stream.removeprefix(BOM)):
        if not line:
            first_data = True
        elif line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            if first_data and not value.startswith((b"{", b"[DONE]")):
                return False
            first_data = False
        elif not line.startswith((b":", b"event:", b"id:", b"retry:")):
            return False
    return True


HEAD: dict[str, Any] = {
    "id": "chatcmpl-42",
    "object": "chat.completion.chunk",
    "created": 1_700_000_000,
    "model": "llama",
}
Dumps = Callable[[object], bytes]


def _compact(payload: object) -> bytes:
    return orjson.dumps(payload)


def _spaced(payload: object) -> bytes:
    return json.dumps(payload).encode()  # `"usage": {`, as Python servers write it


def _chunk(dumps: Dumps, delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return dumps({**HEAD, **extra, "choices": [choice]})


@st.composite
def openai_streams(draw: st.DrawFn) -> tuple[bytes, bytes, Usage | None, list[int]]:
    """A valid stream, what a stripping relay sends of it, its usage, and its event sizes.

    As vLLM, SGLang or OpenAI write it, including ``"usage": null`` on every chunk, a usage-only
    event (dropped when stripping), keep-alive comments, CRLF line endings, a byte order mark,
    and a last event without its blank line.
    """
    dumps = draw(st.sampled_from([_compact, _spaced]))
    extra: dict[str, Any] = {"usage": None} if draw(st.booleans()) else {}
    payloads = [_chunk(dumps, {"role": "assistant", "content": ""}, None, **extra)]
    payloads += [_chunk(dumps, {"content": text}, None, **extra) for text in draw(TEXT_LIST)]
    counts = draw(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)))
    usage = {"prompt_tokens": counts[0], "completion_tokens": counts[1]}
    usage_on_finish = draw(st.booleans())  # some servers put it on the finishing chunk
    finish_extra = {"usage": usage} if usage_on_finish else extra
    payloads.append(_chunk(dumps, {}, draw(st.sampled_from(["stop", "length"])), **finish_extra))
    usage_only = None if usage_on_finish else draw(st.none() | st.just(usage))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    events = [b"data: " + payload + eol + eol for payload in payloads]
    for _ in range(draw(st.integers(0, 2))):
        events.insert(draw(st.integers(0, len(events))), b": keep-alive" + eol + eol)
    kept = list(events)
    if usage_only is not None:
        events.append(b"data: " + dumps({**HEAD, "choices": [], "usage": usage_only}) + eol + eol)
    events.append(b"data: [DONE]" + eol + eol)
    kept.append(events[-1])
    if draw(st.booleans()):  # the last event without its blank line
        events[-1] = kept[-1] = events[-1].removesuffix(eol)
    if draw(st.booleans()):
        events[0] = BOM + events[0]
        kept[0] = BOM + kept[0]
    seen = Usage(counts[0], counts[1]) if usage_on_finish or usage_only is not None else None
    return b"".join(events), b"".join(kept), seen, [len(e) for e in events]


@settings(max_examples=150, deadline=None)
@given(generated=openai_streams(), cuts=CUTS, strip=st.booleans(), tight=st.booleans())
def test_openai_any_split_of_a_valid_stream_gives_the_same_bytes(
    generated: tuple[bytes, bytes, Usage | None, list[int]],
    cuts: list[int],
    strip: bool,
    tight: bool,
) -> None:
    stream, stripped, usage, sizes = generated
    assert relayable(stream)
    # A cap exactly at the largest event must not refuse it, whatever the cuts. Only for LF
    # streams: see test_openai_crlf_boundary_split_in_three_is_missed.
    limit = max(sizes) if tight and b"\r" not in stream else MAX_EVENT_BYTES
    for chunks in splits(stream, cuts):
        translator = OpenAIStream(strip_usage_chunk=strip, max_event_bytes=limit)
        assert relay(translator, chunks) == (stripped if strip else stream, None)
        assert translator.usage == usage


# Garbage: lines an OpenAI-compatible server writes, mixed with lines it must not (HTML,
# plain-text data, bare field names, stray text), any line ending, random bytes.
_GOOD_LINES = [
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}',
    b'data:{"choices":[]}',
    b"data: [DONE]",
    b": keep-alive",
    b"event: message",
    b"id: 7",
    b"retry: 100",
    b"",
    b"",
]
_BAD_LINES = [
    b"data: Internal Server Error",
    b"data:  {",
    b"data",
    b"<html><body>Oops</body></html>",
    b"event",
    b"foo: bar",
    b"DATA: {}",
    b"\xff\xfe",
    b"data: [DON",
]
_garbage_line = st.one_of(
    st.sampled_from(_GOOD_LINES),
    st.sampled_from(_GOOD_LINES).map(lambda line: line[: len(line) // 2]),
    st.sampled_from(_BAD_LINES),
    st.binary(max_size=12),
)


@st.composite
def garbage(draw: st.DrawFn, crlf: bool = True) -> bytes:
    """Garbage lines, or random bytes; a BOM only at the start (see test_openai_bom_mid_stream)
    and, unless ``crlf``, no CR at all (see test_openai_crlf_boundary_split_in_three_is_missed).
    """
    if draw(st.integers(0, 9)) == 0:
        stream = draw(st.binary(max_size=120))
    else:
        eols = [b"\n", b"\r\n", b"\r"] if crlf else [b"\n"]
        lines = draw(st.lists(st.tuples(_garbage_line, st.sampled_from(eols)), max_size=14))
        stream = (BOM if draw(st.booleans()) else b"") + b"".join(a + b for a, b in lines)
    assume(BOM not in stream[1:] and (crlf or b"\r" not in stream))
    return stream


@settings(max_examples=300, deadline=None)
@given(stream=garbage(), cuts=CUTS)
def test_openai_garbage_ends_in_one_clean_error_when_stripping(
    stream: bytes, cuts: list[int]
) -> None:
    """Stripping (the usual case): only whole, checked events reach the client."""
    valid = relayable(stream)
    for chunks in splits(stream, cuts):
        out, error = relay(OpenAIStream(strip_usage_chunk=True), chunks)
        if valid:
            assert (out, error) == (stream, None)
            continue
        assert error is not None
        assert (error.code, error.status, error.type) == ("upstream_bad_event", 502, "api_error")
        assert error.retryable
        relayed = without_error(out, error)
        assert stream.startswith(relayed)
        assert relayable(relayed)
        assert_one_clean_error_at_the_end(out, error)


@settings(max_examples=200, deadline=None)
@given(stream=garbage(), cuts=CUTS)
def test_openai_garbage_is_refused_when_relaying_every_byte(stream: bytes, cuts: list[int]) -> None:
    """Not stripping: bytes go out as they come, so only the start of an unfinished event is
    judged before it ends (the documented trade-off); the stream is still refused."""
    valid = relayable(stream)
    for chunks in splits(stream, cuts):
        out, error = relay(OpenAIStream(strip_usage_chunk=False), chunks)
        assert (error is None) == valid
        assert error is None or error.code == "upstream_bad_event"
        assert stream.startswith(without_error(out, error))
        if valid:
            assert out == stream


@settings(max_examples=200, deadline=None)
@given(stream=garbage(crlf=False), cuts=CUTS, strip=st.booleans())
def test_openai_small_event_cap_ends_in_one_clean_error(
    stream: bytes, cuts: list[int], strip: bool
) -> None:
    """With a 48-byte cap, oversized and malformed events mix; either code, never more."""
    outcomes = set()
    for chunks in splits(stream, cuts):
        out, error = relay(OpenAIStream(strip_usage_chunk=strip, max_event_bytes=48), chunks)
        relayed = without_error(out, error)
        assert stream.startswith(relayed)
        if error is not None:
            assert error.code in OWN_CODES
            if strip:
                assert relayable(relayed)
                assert_one_clean_error_at_the_end(out, error)
        outcomes.add(error is None)
    assert len(outcomes) == 1  # refused whatever the cuts, or relayed whatever the cuts


def test_openai_crlf_boundary_split_in_three_pieces_is_seen() -> None:
    event = b'data: {"a":1}\r\n\r\n'
    stream = event * 4
    translator = OpenAIStream(strip_usage_chunk=True, max_event_bytes=len(event))
    assert relay(translator, [stream[i : i + 1] for i in range(len(stream))]) == (stream, None)


def test_openai_bom_mid_stream_is_refused_at_any_split() -> None:
    stream = b"data: {}\n\n" + BOM + b"data: {}\n\n"
    whole = relay(OpenAIStream(strip_usage_chunk=True), [stream])[1]
    cut = relay(OpenAIStream(strip_usage_chunk=True), [stream[:10], stream[10:]])[1]
    assert whole is not None and cut is not None


def test_openai_error_after_a_relayed_partial_event_is_its_own_event() -> None:
    chunks = [b'data: {"a":1}\n', b"<html>\n\n"]
    out, error = relay(OpenAIStream(strip_usage_chunk=False), chunks)
    assert error is not None
    assert_one_clean_error_at_the_end(out, error)


# -- Anthropic translator ---------------------------------------------------------------------

# Chunks carry the message id, or a random one when message_start has none: compare without it.
_RANDOM_ID = re.compile(rb'"id":"chatcmpl-[0-9a-f]{32}"')
FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def anthropic_relay(
    chunks: Sequence[bytes], include_usage: bool
) -> tuple[bytes, tuple[int, str, str | None, str] | None]:
    """What the client got before any error event (checked), and that error's fields."""
    translator = AnthropicStream(MODEL, 1_700_000_000, include_usage=include_usage)
    out, error = relay(translator, chunks)
    # The gateway charges budgets with it: never negative, whatever the upstream sent.
    usage = translator.usage
    assert usage is None or min(usage.prompt_tokens, usage.completion_tokens) >= 0
    relayed = _RANDOM_ID.sub(b'"id":"chatcmpl-random"', without_error(out, error))
    if error is None:
        return relayed, None
    assert isinstance(error, UpstreamStatusError)
    assert isinstance(error.message, str) and error.message
    assert_one_clean_error_at_the_end(out, error)
    return relayed, (error.status, error.type, error.code, error.message)


def client_chunks(relayed: bytes) -> list[dict[str, Any]]:
    """Every event the client gets before any error: a valid chunk, or a last ``[DONE]``."""
    events = decode(relayed)
    if events and events[-1].data == "[DONE]":
        events.pop()
    chunks = []
    for event in events:
        assert event.event is None
        ChatCompletionChunk.model_validate_json(event.data)
        chunks.append(orjson.loads(event.data))
    return chunks


def sse(kind: str, eol: bytes, **data: Any) -> bytes:
    payload = orjson.dumps({"type": kind, **data})
    return b"event: " + kind.encode() + eol + b"data: " + payload + eol + eol


@st.composite
def anthropic_streams(draw: st.DrawFn) -> tuple[bytes, str, str, str, dict[str, int]]:
    """A valid Messages stream: text blocks of text deltas, maybe a tool_use block, pings.

    Returns it with its text, tool arguments, OpenAI finish reason and usage.
    """
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    usage = {"input_tokens": draw(st.integers(0, 10**6)), "output_tokens": 1}
    message = {"id": "msg_01", "type": "message", "role": "assistant", "model": MODEL}
    events = [sse("message_start", eol, message={**message, "content": [], "usage": usage})]
    texts: list[str] = []
    for index, deltas in enumerate(draw(st.lists(TEXT_LIST, max_size=3))):
        events.append(
            sse("content_block_start", eol, index=index, content_block={"type": "text", "text": ""})
        )
        for text in deltas:
            events.append(
                sse(
                    "content_block_delta",
                    eol,
                    index=index,
                    delta={"type": "text_delta", "text": text},
                )
            )
            if draw(st.integers(0, 4)) == 0:
                events.append(sse("ping", eol))
        events.append(sse("content_block_stop", eol, index=index))
        texts += deltas
    fragments: list[str] = draw(st.lists(TEXT, max_size=3)) if draw(st.booleans()) else []
    if fragments:
        index = len(events)
        block = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}
        events.append(sse("content_block_start", eol, index=index, content_block=block))
        for fragment in fragments:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            events.append(sse("content_block_delta", eol, index=index, delta=delta))
        events.append(sse("content_block_stop", eol, index=index))
    stop_reason = draw(st.sampled_from(list(FINISH)))
    output_tokens = draw(st.integers(0, 10**6))
    stop = {"stop_reason": stop_reason, "stop_sequence": None}
    events.append(sse("message_delta", eol, delta=stop, usage={"output_tokens": output_tokens}))
    events.append(sse("message_stop", eol))
    stream = b"".join(events)
    if draw(st.booleans()):
        stream = stream.removesuffix(eol)  # message_stop without its blank line
    usage["output_tokens"] = output_tokens
    return stream, "".join(texts), "".join(fragments), FINISH[stop_reason], usage


@settings(max_examples=150, deadline=None)
@given(generated=anthropic_streams(), cuts=CUTS, include_usage=st.booleans())
def test_anthropic_any_split_of_a_valid_stream_gives_the_same_chunks(
    generated: tuple[bytes, str, str, str, dict[str, int]], cuts: list[int], include_usage: bool
) -> None:
    stream, text, arguments, finish_reason, usage = generated
    outputs = {anthropic_relay(chunks, include_usage) for chunks in splits(stream, cuts)}
    assert len(outputs) == 1
    ((out, error),) = outputs
    assert error is None
    assert out.endswith(b"data: [DONE]\n\n")
    chunks = client_chunks(out)
    assert {c["id"] for c in chunks} == {"msg_01"}
    if include_usage:
        prompt, completion = usage["input_tokens"], usage["output_tokens"]
        assert chunks.pop()["usage"]["total_tokens"] == prompt + completion
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas[1:]) == text
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    assert "".join(call["function"]["arguments"] for call in calls) == arguments
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == finish_reason


# Structured garbage: well-framed events whose JSON has the wrong shape somewhere, so every
# field the translator reads gets every JSON type.
_INTS = st.integers(-(2**63), 2**64 - 1)  # what orjson writes
_scalar = (
    st.none()
    | st.booleans()
    | _INTS
    | st.sampled_from([-1, 2**53, 2**63 - 1, 2**64 - 1])
    | st.floats(allow_nan=False)
    | TEXT
    | st.sampled_from(["text", "tool_use", "text_delta", "input_json_delta", "end_turn"])
)
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
# Every event the translator acts on, well formed; garbage replaces one value in one of them.
TEMPLATES: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {"id": "msg_1", "model": MODEL, "usage": {"input_tokens": 5}},
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "a"}},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    },
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "b"}},
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": "{"},
    },
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
]


def _paths(value: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path to a value in ``value`` but its event ``type`` (another type is ignored)."""
    if not isinstance(value, dict):
        return [path]
    inner = [
        p
        for key, item in value.items()
        if path or key != "type"
        for p in _paths(item, (*path, key))
    ]
    return [path, *inner] if path else inner


def _replaced(template: dict[str, Any], path: tuple[str, ...], value: object) -> object:
    if not path:
        return value
    head, *rest = path
    return {**template, head: _replaced(template[head], tuple(rest), value)}


_COUNTS = st.sampled_from([-1, -(2**63), 2**53, 2**63 - 1, 2**64 - 1])
_CONTAINERS = st.lists(_scalar, max_size=2) | st.dictionaries(TEXT, _scalar, max_size=2)
_WRONG = {  # a value of another JSON type than the template's (or an int out of range)
    str: _INTS | st.booleans() | st.floats(allow_nan=False) | _CONTAINERS,
    int: _COUNTS | st.booleans() | st.floats(allow_nan=False) | TEXT | _CONTAINERS,
    dict: _INTS | TEXT | st.lists(_scalar, max_size=2),
}


FIELDS = [(template, path) for template in TEMPLATES for path in _paths(template)]


def _malformed_object(template: dict[str, Any], path: tuple[str, ...]) -> st.SearchStrategy[object]:
    """``template`` with the value at ``path`` replaced, mostly by one of another type."""
    value: object = template
    for key in path:
        value = value[key]  # type: ignore[index]
    wrong = _WRONG.get(type(value), _json)
    return (wrong | _json).map(lambda new: _replaced(template, path, new))


def _data(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


_anthropic_event = st.one_of(
    st.sampled_from(FIELDS).flatmap(lambda field: _malformed_object(*field)).map(_data),
    st.sampled_from(TEMPLATES).map(_data),
    _json.map(_data),  # mostly not an object
    st.sampled_from([b"data: {nope\n\n", b"<html>\n", b"data: Internal Server Error\n\n"]),
    st.binary(max_size=16),
)
_EVENT_END = re.compile(rb"(?:\r\n|\r|\n){2}")


@st.composite
def anthropic_garbage(draw: st.DrawFn) -> bytes:
    """Garbage after the first events of a valid stream (so output may have gone), or alone."""
    valid = draw(anthropic_streams())[0]
    ends = [0, 0, *(match.end() for match in _EVENT_END.finditer(valid))]
    start = valid[: draw(st.sampled_from(ends))]
    return start + b"".join(draw(st.lists(_anthropic_event, min_size=1, max_size=3)))


@settings(max_examples=300, deadline=None)
@given(stream=anthropic_garbage(), cuts=CUTS, include_usage=st.booleans())
def test_anthropic_garbage_ends_in_one_clean_error(
    stream: bytes, cuts: list[int], include_usage: bool
) -> None:
    assert_anthropic_garbage_ends_cleanly(stream, cuts, include_usage)


_BEFORE = [
    b"",  # the malformed event comes first: nothing reached the client
    b"".join(
        [
            sse("message_start", b"\n", message={"id": "msg_01", "model": MODEL}),
            sse("content_block_start", b"\n", index=1, content_block=TEMPLATES[2]["content_block"]),
        ]
    ),
]


@pytest.mark.parametrize(
    ("template", "path"),
    FIELDS,
    ids=[
        f"{TEMPLATES.index(template)}-{template['type']}:{'.'.join(path)}"
        for template, path in FIELDS
    ],
)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), before=st.sampled_from(_BEFORE), include_usage=st.booleans())
def test_anthropic_any_field_of_another_type_is_one_clean_error_or_ignored(
    template: dict[str, Any],
    path: tuple[str, ...],
    data: st.DataObject,
    before: bytes,
    include_usage: bool,
) -> None:
    event = _data(data.draw(_malformed_object(template, path)))
    stream = before + event + sse("message_stop", b"\n")
    assert_anthropic_garbage_ends_cleanly(stream, data.draw(CUTS), include_usage)


def assert_anthropic_garbage_ends_cleanly(
    stream: bytes, cuts: list[int], include_usage: bool
) -> None:
    """Valid chunks, then [DONE] or exactly one error event; the same error for any cuts."""
    # A byte at a time returns each event's chunks as soon as it is read: the most output.
    # Cut elsewhere, an error may come before output decoded in the same chunk is returned.
    most, error = anthropic_relay([stream[i : i + 1] for i in range(len(stream))], include_usage)
    for chunks in ([stream], split(stream, cuts)):
        relayed, same_error = anthropic_relay(chunks, include_usage)
        assert same_error == error  # the same error whatever the cuts, or none
        assert most.startswith(relayed)
    parsed = client_chunks(most)
    # Ended well (with [DONE]), or by exactly one error event, never both.
    assert most.endswith(b"data: [DONE]\n\n") == (error is None)
    assert most.count(b"data: [DONE]") == (error is None)
    assert all(c["object"] == "chat.completion.chunk" for c in parsed)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "message_start", "message": "msg_x"},
        {"type": "message_start", "message": {"id": ["msg_x"], "model": MODEL}},
        {"type": "message_start", "message": {"usage": {"input_tokens": 2**64 - 1}}},
        {"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}},
        {"type": "message_delta", "usage": {"output_tokens": -5}},
        {"type": "content_block_start", "index": [0], "content_block": {"type": "tool_use"}},
        {"type": "content_block_start", "index": 0, "content_block": ["text"]},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": 5}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": {}}},
        {"type": "content_block_delta", "index": {}, "delta": {"type": "input_json_delta"}},
        {"type": "content_block_delta", "index": 0, "delta": "text_delta"},
        [{"type": "message_start"}],
    ],
)
def test_anthropic_malformed_event_is_one_clean_error(data: object) -> None:
    """Each of these raised AttributeError/TypeError (no error event, a broken response),
    overflowed orjson on the usage chunk, or relayed a chunk with a non-string field."""
    stream = b"data: " + orjson.dumps(data) + b"\n\n" + sse("message_stop", b"\n")
    translator = AnthropicStream(MODEL, 1_700_000_000, include_usage=True)
    out, error = relay(translator, [stream])
    assert isinstance(error, UpstreamStatusError)
    assert (error.status, error.code) == (502, "upstream_bad_event")
    assert error.retryable
    assert out == error_event(error)


def test_anthropic_malformed_event_after_output_keeps_what_came_before() -> None:
    translator = AnthropicStream(MODEL, 1_700_000_000)
    start = sse("message_start", b"\n", message={"id": "msg_x", "model": MODEL})
    assert translator.feed(start)
    text = sse("content_block_delta", b"\n", index=0, delta={"type": "text_delta", "text": "hi"})
    bad = b'data: {"type":"content_block_delta","index":0,"delta":[]}\n\n'
    out, error = relay(translator, [text + bad])
    assert isinstance(error, UpstreamStatusError) and error.code == "upstream_bad_event"
    assert [c["choices"][0]["delta"] for c in client_chunks(without_error(out, error))] == [
        {"content": "hi"}
    ]


def test_anthropic_error_event_with_a_non_string_message() -> None:
    data = {"type": "error", "error": {"type": "overloaded_error", "message": {"text": "x"}}}
    out, error = relay(AnthropicStream(MODEL, 1), [b"data: " + orjson.dumps(data) + b"\n\n"])
    assert isinstance(error, UpstreamStatusError)
    assert (error.status, error.message) == (503, "Anthropic reported overloaded_error mid-stream")
    assert_one_clean_error_at_the_end(out, error)
