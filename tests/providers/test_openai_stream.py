"""OpenAIStream: byte-exact relay, usage read from the stream, the injected usage event dropped."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from aigw.errors import UpstreamConnectionError
from aigw.providers import StreamTranslator
from aigw.providers.openai_stream import MAX_EVENT_BYTES, OpenAIStream
from aigw.sse import SSEDecoder
from aigw.types import Usage

HEAD: dict[str, Any] = {
    "id": "chatcmpl-42",
    "object": "chat.completion.chunk",
    "created": 1_700_000_000,
    "model": "llama",
}


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def delta(content: str, finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": finish}
    return event({**HEAD, **extra, "choices": [choice]})


USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
# vLLM with include_usage: `"usage":null` on every chunk, then a usage-only chunk.
BODY = [
    delta("", usage=None),
    delta("Hello", usage=None),
    delta(" wörld 🚀", usage=None),
    delta("!", "stop", usage=None),
]
USAGE_EVENT = event({**HEAD, "usage": USAGE, "choices": []})  # vLLM's order: usage first
DONE = b"data: [DONE]\n\n"
STREAM = [*BODY, USAGE_EVENT, DONE]
CLIENT_SEES = b"".join([*BODY, DONE])


def run(chunks: list[bytes], *, strip: bool) -> tuple[bytes, OpenAIStream]:
    translator = OpenAIStream(strip_usage_chunk=strip)
    out = b"".join(translator.feed(chunk) for chunk in chunks)
    return out + translator.finish(), translator


def test_is_a_stream_translator() -> None:
    translator: StreamTranslator = OpenAIStream()
    assert translator.usage is None


def test_injected_usage_event_is_dropped() -> None:
    out, translator = run(STREAM, strip=True)
    assert out == CLIENT_SEES
    assert translator.usage == Usage(9, 3)
    events = SSEDecoder().feed(out)
    assert events[-1].data == "[DONE]"
    for item in events[:-1]:
        chunk = ChatCompletionChunk.model_validate_json(item.data)  # `usage: null` is fine
        assert chunk.choices and chunk.usage is None


def test_every_other_event_is_relayed_per_feed() -> None:
    translator = OpenAIStream(strip_usage_chunk=True)
    assert [translator.feed(chunk) for chunk in STREAM] == [*BODY, b"", DONE]
    assert translator.finish() == b""


def test_client_asked_for_usage_gets_every_byte() -> None:
    translator = OpenAIStream(strip_usage_chunk=False)
    chunks = [b"".join(STREAM[:2]), STREAM[2][:7], STREAM[2][7:], *STREAM[3:]]
    out = [translator.feed(chunk) for chunk in chunks]
    # The same bytes; an event split across chunks goes out whole once its end arrives.
    assert out == [chunks[0], b"", STREAM[2], *STREAM[3:]]
    assert translator.finish() == b""
    assert translator.usage == Usage(9, 3)


def test_split_at_every_byte_offset() -> None:
    whole = b"".join(STREAM)
    for at in range(len(whole) + 1):
        for strip, expected in ((True, CLIENT_SEES), (False, whole)):
            out, translator = run([whole[:at], whole[at:]], strip=strip)
            assert out == expected, (at, strip)
            assert translator.usage == Usage(9, 3), (at, strip)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 100_000])
@pytest.mark.parametrize("strip", [True, False])
def test_fixed_size_pieces(size: int, strip: bool) -> None:
    whole = b"".join(STREAM)
    out, translator = run([whole[i : i + size] for i in range(0, len(whole), size)], strip=strip)
    assert out == (CLIENT_SEES if strip else whole)
    assert translator.usage == Usage(9, 3)


@pytest.mark.parametrize("per_chunk", [1, 2, 3, 6])
def test_several_events_per_chunk(per_chunk: int) -> None:
    chunks = [b"".join(STREAM[i : i + per_chunk]) for i in range(0, len(STREAM), per_chunk)]
    out, translator = run(chunks, strip=True)
    assert out == CLIENT_SEES
    assert translator.usage == Usage(9, 3)


def test_crlf_events() -> None:
    crlf = [chunk.replace(b"\n", b"\r\n") for chunk in STREAM]
    whole = b"".join(crlf)
    expected = b"".join(chunk for chunk in crlf if b'"usage":{' not in chunk)
    for at in range(len(whole) + 1):
        out, translator = run([whole[:at], whole[at:]], strip=True)
        assert out == expected, at
        assert translator.usage == Usage(9, 3), at


def test_openai_order_and_spaced_json() -> None:
    # OpenAI writes `"choices":[],"usage":{...}`; Python's json.dumps puts a space after ':'.
    usage_event = b'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}\n\n'
    out, translator = run([*BODY, usage_event, DONE], strip=True)
    assert out == CLIENT_SEES
    assert translator.usage == Usage(4, 1)


def test_usage_on_a_chunk_with_choices_is_kept() -> None:
    # Some servers (Together, Fireworks) put usage on the finishing chunk: it is content.
    last = delta("!", "stop", usage=USAGE)
    stream = [*BODY[:3], last, DONE]
    out, translator = run(stream, strip=True)
    assert out == b"".join(stream)
    assert translator.usage == Usage(9, 3)


def test_continuous_usage_is_the_last_seen() -> None:
    stream = [
        delta("a", usage={"prompt_tokens": 9, "completion_tokens": 1}),
        delta("b", "stop", usage={"prompt_tokens": 9, "completion_tokens": 2}),
        event({**HEAD, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
        DONE,
    ]
    out, translator = run(stream, strip=False)
    assert out == b"".join(stream)
    assert translator.usage == Usage(9, 2)


def test_unterminated_last_event() -> None:
    stream = [*BODY, USAGE_EVENT.rstrip(b"\n")]
    out, translator = run(stream, strip=True)
    assert out == b"".join(BODY)
    assert translator.usage == Usage(9, 3)
    out, translator = run([*BODY, DONE.rstrip(b"\n")], strip=True)
    assert out == b"".join([*BODY, DONE.rstrip(b"\n")])
    assert translator.usage is None


def test_text_mentioning_usage_is_not_mistaken() -> None:
    tricky = delta('{"usage":{"prompt_tokens":1}, "choices": []}', usage=None)
    out, translator = run([tricky, DONE], strip=True)
    assert out == tricky + DONE
    assert translator.usage is None


def test_error_and_comment_events_pass() -> None:
    stream = [b": keep-alive\n\n", BODY[0], b'data: {"error":{"message":"boom","code":500}}\n\n']
    out, translator = run(stream, strip=True)
    assert out == b"".join(stream)
    assert translator.usage is None


def test_usage_object_shapes() -> None:
    weird = event({"choices": [], "usage": {"prompt_tokens": "7", "completion_tokens": True}})
    out, translator = run([weird], strip=True)
    assert (out, translator.usage) == (b"", Usage(0, 0))


def test_translators_are_independent() -> None:
    first, second = OpenAIStream(strip_usage_chunk=True), OpenAIStream(strip_usage_chunk=True)
    whole = b"".join(STREAM)
    first.feed(whole[:10])
    assert second.feed(whole) == CLIENT_SEES
    assert first.usage is None and second.usage == Usage(9, 3)


# --- safety: an event's size is capped; lines must be SSE an OpenAI server writes ----------


def codes_of(chunks: list[bytes], *, strip: bool, limit: int = MAX_EVENT_BYTES) -> str:
    """The error code the translator raises on ``chunks`` (feed, then finish)."""
    translator = OpenAIStream(strip_usage_chunk=strip, max_event_bytes=limit)
    with pytest.raises(UpstreamConnectionError) as info:
        for chunk in chunks:
            translator.feed(chunk)
        translator.finish()
    assert (info.value.status, info.value.retryable) == (502, True)
    assert info.value.code is not None
    return info.value.code


@pytest.mark.parametrize("strip", [True, False])
def test_an_endless_event_is_cut_off(strip: bool) -> None:
    endless = [b'data: {"choices": [{"delta": {"content": "', *[b"x" * 65_536] * 17]
    assert sum(map(len, endless)) > MAX_EVENT_BYTES
    assert codes_of([*BODY, *endless], strip=strip) == "upstream_event_too_large"


@pytest.mark.parametrize("strip", [True, False])
@pytest.mark.parametrize("size", [1, 7, 100])
def test_an_event_over_the_cap_is_refused_however_it_arrives(strip: bool, size: int) -> None:
    big = delta("y" * 300)
    whole = b"".join([BODY[0], big, DONE])
    pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
    assert codes_of(pieces, strip=strip, limit=len(big) - 1) == "upstream_event_too_large"
    assert codes_of([whole], strip=strip, limit=len(big) - 1) == "upstream_event_too_large"
    out, _ = run(pieces, strip=False)  # at the cap exactly: relayed
    assert OpenAIStream(max_event_bytes=len(big)).feed(whole) == whole == out


BAD = [
    b"data: Internal Server Error\n\n",
    b"<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    b"<html>\n<body>no blank line, never ends",
    b"data:\n\n",
    b"data: [DON\n\n",
    b'data: "just a string"\n\n',
    b'event: x\ndata: oops\n\ndata: {"a": 1}\n\n',
    b'garbage\ndata: {"a": 1}\n\n',
    b'data: {"a": 1}\r\rdata: oops\n\n',  # \r\r is a boundary too
]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("strip", [True, False])
def test_a_line_that_is_not_sse_json_is_refused(bad: bytes, strip: bool) -> None:
    assert codes_of([*BODY, bad], strip=strip) == "upstream_bad_event"
    assert codes_of([b"".join([*BODY, bad])], strip=strip) == "upstream_bad_event"
    assert codes_of([bad, *BODY], strip=strip) == "upstream_bad_event"


@pytest.mark.parametrize("strip", [True, False])
def test_bad_bytes_never_reach_the_client_at_any_split(strip: bool) -> None:
    whole = b"".join([*BODY, b"data: oops, not json\n\n", DONE])
    for at in range(len(whole) + 1):
        translator = OpenAIStream(strip_usage_chunk=strip)
        out = b""
        with pytest.raises(UpstreamConnectionError, match="not an OpenAI-compatible"):
            for chunk in (whole[:at], whole[at:]):
                out += translator.feed(chunk)
            translator.finish()
        assert b"oops" not in out, at
        assert out.startswith(b"".join(BODY)) or len(out) < len(b"".join(BODY)), at


def test_what_sse_allows_passes() -> None:
    stream = [
        b"\xef\xbb\xbf: a comment after the byte order mark\n\n",
        b"event: message\nid: 7\nretry: 1000\n:keep-alive\n\n",
        b'data:{"compact": true}\n\n',
        b'data: {"split":\ndata: "across data lines"}\n\n',
        b"\n\n",
        *BODY,
        b"data:[DONE]\n\n",
    ]
    for strip in (True, False):
        whole = b"".join(stream)
        for at in range(len(whole) + 1):
            out, _ = run([whole[:at], whole[at:]], strip=strip)
            assert out == whole, (at, strip)


def test_an_event_sent_a_line_per_chunk_is_not_rejoined_per_line() -> None:
    # Rejoining everything pending on each newline made one capped event cost ~20 s of CPU.
    translator = OpenAIStream(strip_usage_chunk=True)
    line = b'data: {"x": "yyyyyyyy"}\n'
    started = time.perf_counter()
    with pytest.raises(UpstreamConnectionError, match="over"):
        while True:
            translator.feed(line[:10])
            translator.feed(line[10:])
    assert time.perf_counter() - started < 2.0
