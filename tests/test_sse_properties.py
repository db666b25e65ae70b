"""Properties of :class:`~aigw.sse.SSEDecoder`: splits never matter, garbage never raises.

Two oracles: the events a valid stream was generated from, and a plain reference parser of the
decoder's documented contract (WHATWG ``text/event-stream`` for ``event``/``data``, applied to
the whole body decoded at once, plus ``flush`` dispatching an unterminated last event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.sse import ServerSentEvent, SSEDecoder

BOM = b"\xef\xbb\xbf"
EOLS = (b"\n", b"\r\n", b"\r")
# Field names the decoder must ignore; some look like "data"/"event" but are not.
OTHER_FIELDS = ("id", "retry", "foo", "dat", "datum", "Data", "EVENT", "data ", " event")
_LINE_END = re.compile("\r\n|\r|\n")

# Field values: any text without a line ending, multi-byte characters well represented
# (2-, 3- and 4-byte UTF-8) next to ASCII, spaces and colons.
_value = st.text(
    st.one_of(
        st.sampled_from(" :é✓€😀🚀\u2028\x85\x00\ufeff"),
        st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    ),
    max_size=10,
)


@dataclass(frozen=True, slots=True)
class Event:
    """A generated event: its name (if it has a name line) and the values of its data lines."""

    name: str | None
    data: list[str]

    def expected(self) -> ServerSentEvent | None:
        """What the decoder must dispatch: nothing for an event without data lines."""
        return ServerSentEvent(self.name or None, "\n".join(self.data)) if self.data else None


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` cut at every position in ``cuts`` (taken modulo its length + 1)."""
    positions = sorted({cut % (len(stream) + 1) for cut in cuts})
    starts = [0, *positions]
    ends = [*positions, len(stream)]
    return [stream[a:b] for a, b in zip(starts, ends, strict=True)]


def decode(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def reference(stream: bytes) -> list[ServerSentEvent]:
    """The documented contract, written as plainly as possible, on the whole body at once."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = _LINE_END.split(text)
    if not lines[-1]:
        lines.pop()  # the stream ended with a line ending: no unterminated last line
    lines.append("")  # flush: the blank line the stream never sent
    events: list[ServerSentEvent] = []
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                events.append(ServerSentEvent(name or None, "\n".join(data)))
            name, data = None, []
        elif not line.startswith(":"):
            field, colon, value = line.partition(":")
            value = value[1:] if colon and value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
    return events


@st.composite
def _data_line(draw: st.DrawFn, value: str) -> bytes:
    raw = value.encode()
    forms = [b"data: " + raw]
    if not raw.startswith(b" "):
        forms.append(b"data:" + raw)  # no space: nothing stripped
    if not raw:
        forms.append(b"data")  # a field name alone means an empty value
    return draw(st.sampled_from(forms))


@st.composite
def _noise_line(draw: st.DrawFn) -> bytes:
    value = draw(_value).encode()
    return draw(
        st.sampled_from(
            [
                b":" + value,  # a comment
                draw(st.sampled_from(OTHER_FIELDS)).encode() + b": " + value,
                draw(st.sampled_from(OTHER_FIELDS)).encode(),
            ]
        )
    )


@st.composite
def events(draw: st.DrawFn) -> tuple[Event, list[bytes]]:
    """One event and its lines (without line endings), in a random but valid order."""
    name = draw(st.none() | _value)
    data = draw(st.lists(_value, max_size=3))
    noise = draw(st.lists(_noise_line(), max_size=2))
    lines = [draw(_data_line(value)) for value in data]
    for line in noise:
        lines.insert(draw(st.integers(0, len(lines))), line)
    if name is not None:
        # The name line may come before or after the data lines of its event.
        lines.insert(draw(st.sampled_from([0, len(lines)])), b"event: " + name.encode())
    return Event(name, data), lines


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """A valid stream and the events it must decode to.

    Every line gets its own ending (LF, CRLF or CR); an optional BOM starts it; the last event
    may lack its blank line, or even its last line ending (``flush`` completes both).
    """
    generated = draw(st.lists(events(), max_size=5))
    lines: list[bytes] = []
    for _, event_lines in generated:
        lines.extend(event_lines)
        lines.append(b"")  # the blank line that dispatches the event
    ending = draw(st.sampled_from(["whole", "no blank line", "no line ending"]))
    if lines and ending != "whole":
        lines.pop()
    out = bytearray(BOM if draw(st.booleans()) else b"")
    previous = b""
    for i, line in enumerate(lines):
        eol = draw(st.sampled_from(EOLS))
        if previous == b"\r" and not line and eol == b"\n":
            eol = b"\r\n"  # "\r" then a blank "\n" line would read as one CRLF line end
        out += line
        if i < len(lines) - 1 or ending != "no line ending":
            out += eol
        previous = eol
    expected = [e for event, _ in generated if (e := event.expected()) is not None]
    return bytes(out), expected


CUTS = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


@settings(max_examples=300, deadline=None)
@given(generated=streams(), cuts=CUTS)
def test_any_split_of_a_valid_stream_gives_the_generated_events(
    generated: tuple[bytes, list[ServerSentEvent]], cuts: list[int]
) -> None:
    stream, expected = generated
    whole = decode([stream])
    assert whole == expected
    assert decode(split(stream, cuts)) == whole
    # One byte at a time: every cut there is, inside UTF-8 characters and between \r and \n.
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == whole
    assert reference(stream) == whole


# Garbage: raw bytes, or lines built from what the decoder cares about (field names with and
# without a colon and space, a BOM anywhere, truncated and invalid UTF-8) with any line ending.
_NOISE = [
    b":",
    b" ",
    b"x",
    b"\r",
    BOM,
    b"\xef\xbb",
    b"\xe2\x82",
    b"\xf0\x9f\x9a",
    b"\xf0\x9f\x9a\x80",
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",  # an encoded surrogate: invalid UTF-8
    b"\x00",
]
_FIELDS = [b"", b"data", b"data:", b"data: ", b"event", b"event:", b"event: ", b":", b"id: ", BOM]
_garbage_line = st.tuples(
    st.sampled_from(_FIELDS),
    st.lists(st.sampled_from(_NOISE), max_size=6).map(b"".join) | st.binary(max_size=8),
    st.sampled_from([*EOLS, b"", b"\n\n", b"\r\r"]),
).map(b"".join)
GARBAGE = st.binary(max_size=200) | st.lists(_garbage_line, max_size=12).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(stream=GARBAGE, cuts=CUTS)
def test_arbitrary_bytes_decode_like_the_reference_and_never_raise(
    stream: bytes, cuts: list[int]
) -> None:
    expected = reference(stream)
    assert decode([stream]) == expected
    assert decode(split(stream, cuts)) == expected
    assert decode([stream[i : i + 1] for i in range(len(stream))]) == expected
    # Invalid UTF-8 is replaced, never raised: every value is a valid str.
    for event in expected:
        event.data.encode()
        (event.event or "").encode()


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events = decode([b"event: \xff\ndata: a\xe2\x82", b"\n\n"])
    assert events == [ServerSentEvent("\ufffd", "a\ufffd")]
