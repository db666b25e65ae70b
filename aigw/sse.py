"""Server-Sent Events: an incremental decoder and the two encodings the gateway writes.

:class:`SSEDecoder` follows the WHATWG ``text/event-stream`` parsing rules for the fields the
gateway needs (``event`` and ``data``): lines end with ``\\n``, ``\\r\\n`` or ``\\r``; a blank
line dispatches an event; ``data`` lines of one event are joined with ``\\n``; lines starting
with ``:`` are comments; one space after the colon is optional; ``id``, ``retry`` and unknown
fields are ignored; a leading UTF-8 byte order mark is skipped. Bytes may be fed split at any
position, including inside a multi-byte UTF-8 character or between ``\\r`` and ``\\n``.

It sits on the streaming hot path, so it works on bytes, splits whole buffers with C-level
``bytes`` methods and decodes only complete ``data``/``event`` values (a line ending never
falls inside a UTF-8 sequence, so complete lines always decode cleanly).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DONE", "SSEDecoder", "ServerSentEvent", "encode_data"]

DONE = b"data: [DONE]\n\n"
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its ``event:`` name (``None`` when absent) and joined data."""

    event: str | None
    data: str


def encode_data(payload: bytes) -> bytes:
    """Frame an already-serialised payload as one ``data:`` event."""
    return b"data: " + payload + b"\n\n"


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder; one instance per stream, not thread-safe.

    ``feed`` returns the events completed by the bytes given so far (often none). ``flush``
    ends the stream: it treats any unterminated last line as complete and dispatches a
    pending event that lacked its closing blank line, then resets the decoder.
    """

    __slots__ = ("_at_start", "_buffer", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the current line, not yet terminated
        self._event: str | None = None
        self._data: list[str] = []
        # A chunk ended with "\r": if the next one starts with "\n" it is the same line end.
        self._skip_lf = False
        self._at_start = True  # a byte order mark may only appear before the first line

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk[-1] == 0x0D
            # Normalise once per chunk; the rest of the decoder only knows "\n".
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._buffer += chunk
            return []
        if self._buffer:
            self._buffer += chunk
            data = bytes(self._buffer)
        else:
            data = chunk
        lines = data.split(b"\n")
        self._buffer = bytearray(lines.pop())
        return self._process(lines)

    def flush(self) -> list[ServerSentEvent]:
        lines = [bytes(self._buffer)] if self._buffer else []
        lines.append(b"")  # the blank line the stream never sent
        events = self._process(lines)
        self._buffer = bytearray()
        self._skip_lf = False
        self._at_start = True
        return events

    def _process(self, lines: list[bytes]) -> list[ServerSentEvent]:
        if self._at_start:
            self._at_start = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][len(_BOM) :]
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(ServerSentEvent(self._event, "\n".join(data)))
                    data = self._data = []
                self._event = None
                continue
            colon = line.find(b":")
            if colon == 0:
                continue  # comment (servers send these as keep-alives)
            if colon < 0:
                name, value = line, b""
            else:
                name = line[:colon]
                value = (
                    line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
                )
            if name == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace") or None
        return events
