"""The incremental SSE decoder: line endings, fields, splits at any byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigw.sse import DONE, ServerSentEvent, SSEDecoder, encode_data


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def test_single_event() -> None:
    assert decode(b"data: hello\n\n") == [ServerSentEvent(None, "hello")]


def test_named_event_and_reset_of_name_between_events() -> None:
    events = decode(b"event: ping\ndata: {}\n\ndata: x\n\n")
    assert events == [ServerSentEvent("ping", "{}"), ServerSentEvent(None, "x")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    stream = eol.join([b"event: a", b"data: 1", b"", b"data: 2", b"", b""])
    assert decode(stream) == [ServerSentEvent("a", "1"), ServerSentEvent(None, "2")]


def test_multiline_data_is_joined_with_newline() -> None:
    assert decode(b"data: a\ndata: b\ndata:\n\n") == [ServerSentEvent(None, "a\nb\n")]


def test_field_without_space_and_only_one_space_stripped() -> None:
    assert decode(b"data:x\n\ndata:  y\n\n") == [
        ServerSentEvent(None, "x"),
        ServerSentEvent(None, " y"),
    ]


def test_comments_id_retry_and_unknown_fields_are_ignored() -> None:
    stream = b": keep-alive\nid: 7\nretry: 100\nfoo: bar\ndata: d\n\n:\n\n"
    assert decode(stream) == [ServerSentEvent(None, "d")]


def test_field_name_alone_means_empty_value() -> None:
    assert decode(b"data\n\n") == [ServerSentEvent(None, "")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: lonely\n\ndata: next\n\n") == [ServerSentEvent(None, "next")]


def test_crlf_split_between_cr_and_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The "\n" completes the same line ending; it must not count as a blank line.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r\n") == [ServerSentEvent(None, "a\nb")]


def test_empty_chunk_keeps_pending_cr_state() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(None, "a")]


def test_multibyte_character_split_across_chunks() -> None:
    raw = "data: héllo ✓ 🚀\n\n".encode()
    cut = raw.index("🚀".encode()) + 2
    assert decode(raw[:cut], raw[cut:]) == [ServerSentEvent(None, "héllo ✓ 🚀")]


def test_byte_order_mark_is_skipped_once() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: a\n\n") == [ServerSentEvent(None, "a")]


def test_flush_dispatches_event_without_trailing_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: message_stop\ndata: {}") == []
    assert decoder.flush() == [ServerSentEvent("message_stop", "{}")]
    assert decoder.flush() == []


def test_flush_with_terminated_line_but_no_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last\n") == []
    assert decoder.flush() == [ServerSentEvent(None, "last")]


def test_several_events_in_one_chunk() -> None:
    events = SSEDecoder().feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4")
    assert [e.data for e in events] == ["1", "2", "3"]


def test_encoders() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert decode(encode_data(b"x") + DONE) == [
        ServerSentEvent(None, "x"),
        ServerSentEvent(None, "[DONE]"),
    ]


# -- property: any split of a valid stream decodes to the same events ------------------------

_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12)
_event = st.tuples(
    st.one_of(st.none(), _text.filter(bool)),
    st.lists(_text, min_size=1, max_size=3),
)


def _encode(events: list[tuple[str | None, list[str]]], eol: bytes) -> bytes:
    out = bytearray()
    for name, lines in events:
        out += b": comment" + eol
        if name is not None:
            out += b"event: " + name.encode() + eol
        for line in lines:
            out += b"data: " + line.encode() + eol
        out += eol
    return bytes(out)


@given(
    events=st.lists(_event, max_size=5),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_any_split_decodes_to_the_same_events(
    events: list[tuple[str | None, list[str]]], eol: bytes, cuts: list[int]
) -> None:
    stream = _encode(events, eol)
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)], strict=True)]
    expected = [ServerSentEvent(name, "\n".join(lines)) for name, lines in events]
    assert decode(*chunks) == expected
    assert decode(*[stream[i : i + 1] for i in range(len(stream))]) == expected
