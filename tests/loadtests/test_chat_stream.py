"""loadtests/chat_stream.py: timing the first content token of an SSE chat stream."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from loadtests.chat_stream import read_chat_stream


def _clock() -> Iterator[float]:
    return itertools.count(1.0)  # the n-th chunk arrives at time n


def _chunk(content: str | None, role: bool = False) -> bytes:
    delta = ('"role":"assistant",' if role else "") + (
        f'"content":"{content}"' if content is not None else '"content":null'
    )
    return b'data: {"choices":[{"index":0,"delta":{' + delta.encode() + b"}}]}\n\n"


def test_first_token_skips_the_role_only_opening_chunk() -> None:
    clock = _clock()
    chunks = [_chunk("", role=True), _chunk("Hel"), _chunk("lo"), b"data: [DONE]\n\n"]
    outcome = read_chat_stream(chunks, lambda: next(clock))
    assert outcome.first_token_at == 2.0
    assert outcome.text == "Hello"
    assert outcome.error is None
    assert outcome.length == sum(map(len, chunks))


def test_lines_split_across_chunks_and_crlf() -> None:
    body = _chunk("a").replace(b"\n", b"\r\n") + _chunk("b") + b"data: [DONE]\n\n"
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    clock = _clock()
    outcome = read_chat_stream(pieces, lambda: next(clock))
    assert outcome.text == "ab"
    assert outcome.error is None
    # the first content line is complete in the chunk that holds its newline
    first_newline = body.index(b"\n")
    assert outcome.first_token_at == first_newline // 7 + 1


def test_error_event_fails_the_stream() -> None:
    chunks = [
        _chunk("x"),
        b'data: {"error":{"message":"upstream died","type":"server_error","code":"upstream_error"}}\n\n',
    ]
    outcome = read_chat_stream(chunks, lambda: 0.5)
    assert outcome.first_token_at == 0.5
    assert outcome.error == "error event: upstream_error: upstream died"


def test_missing_done_and_bad_json_fail() -> None:
    assert read_chat_stream([_chunk("x")], lambda: 0.0).error == "stream ended without [DONE]"
    assert "not JSON" in (read_chat_stream([b"data: {oops\n\n"], lambda: 0.0).error or "")


def test_no_content_token() -> None:
    outcome = read_chat_stream([_chunk(None, role=True), b"data: [DONE]\n\n"], lambda: 0.0)
    assert outcome.first_token_at is None
    assert outcome.error is None


def test_transport_error_keeps_what_arrived() -> None:
    def chunks() -> Iterator[bytes]:
        yield _chunk("partial")
        raise ConnectionResetError("reset by peer")

    outcome = read_chat_stream(chunks(), lambda: 3.0, (ConnectionResetError,))
    assert outcome.first_token_at == 3.0
    assert outcome.text == "partial"
    assert outcome.error == "ConnectionResetError: reset by peer"
