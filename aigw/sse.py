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

    __slots__ = ("_at_start", "_data", "_event", "_pending", "_skip_lf")

    def __init__(self) -> None:
        # Pieces of the current, unterminated line; joined once its end arrives, so a long
        # line fed in many small chunks costs linear, not quadratic, copying.
        self._pending: list[bytes] = []
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
            self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        return self._process(lines)

    def flush(self) -> list[ServerSentEvent]:
        lines = [b"".join(self._pending)] if self._pending else []
        lines.append(b"")  # the blank line the stream never sent
        self._pending = []
        events = self._process(lines)
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
            # Fast paths for the canonical forms every server we talk to writes.
            if line.startswith(b"data: "):
                data.append(line[6:].decode("utf-8", "replace"))
                continue
            if line.startswith(b"event: "):
                self._event = line[7:].decode("utf-8", "replace") or None
                continue
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
                start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
                value = line[start:]
            if name == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace") or None
        return events
