"""Reading an OpenAI chat-completions stream (SSE) chunk by chunk, timing its first token.

Pure: it takes the body as an iterable of byte chunks and a clock, so the tests can feed it
canned chunks without a server or Locust. The locustfile passes the socket's chunks as they
arrive (``raw_chunks``) and ``time.perf_counter``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["StreamOutcome", "raw_chunks", "read_chat_stream"]

READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """What one stream delivered.

    ``first_token_at``: the clock when the chunk holding the first non-empty ``delta.content``
    arrived (a role-only opening chunk does not count), None when no content came.
    ``error``: why the stream failed (an error event, a data line that is not JSON, no
    ``[DONE]``, a transport error), None when it ended properly.
    """

    first_token_at: float | None
    text: str
    length: int
    error: str | None


class _Readable(Protocol):
    def read1(self, amt: int, decode_content: bool = ...) -> bytes: ...


def raw_chunks(raw: _Readable) -> Iterator[bytes]:
    """The body of a ``requests`` response opened with ``stream=True`` (pass ``response.raw``),
    as the bytes come off the socket. ``read1`` returns what is available instead of waiting
    for a full buffer, whether the body is chunked or close-delimited."""
    while chunk := raw.read1(READ_SIZE, decode_content=True):
        yield chunk


def read_chat_stream(
    chunks: Iterable[bytes],
    clock: Callable[[], float],
    transport_errors: tuple[type[Exception], ...] = (),
) -> StreamOutcome:
    """Read SSE ``data:`` lines until the body ends; the clock is read once per chunk.

    An exception of ``transport_errors`` raised by ``chunks`` (a reset, a read timeout) ends
    the stream as a failure that keeps what arrived before it, the first token's time too."""
    reader = _Reader()
    try:
        for chunk in chunks:
            if reader.feed(chunk, clock()):
                break
    except transport_errors as exc:
        reader.error = f"{type(exc).__name__}: {exc}"[:200]
    if reader.error is None and not reader.done:
        reader.error = "stream ended without [DONE]"
    return StreamOutcome(reader.first, "".join(reader.parts), reader.length, reader.error)


class _Reader:
    """The state of one stream being read."""

    __slots__ = ("done", "error", "first", "length", "parts", "pending")

    def __init__(self) -> None:
        self.pending = b""
        self.first: float | None = None
        self.parts: list[str] = []
        self.length = 0
        self.done = False
        self.error: str | None = None

    def feed(self, chunk: bytes, now: float) -> bool:
        """Take one chunk that arrived at ``now``; True once an error ends the stream."""
        self.length += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            payload = _data(line)
            if payload is None:
                continue
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                self.error = f"not JSON: {payload[:80]!r}"
                return True
            if isinstance(event, dict) and "error" in event:
                self.error = _error_text(event["error"])
                return True
            content = _content(event)
            if content:
                if self.first is None:
                    self.first = now
                self.parts.append(content)
        return False


def _data(line: bytes) -> bytes | None:
    line = line.rstrip(b"\r")
    if not line.startswith(b"data:"):
        return None  # blank separators, comments, event:/id:/retry: fields
    return line[5:].strip()


def _content(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    text = []
    for choice in event.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            text.append(content)
    return "".join(text)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"error event: {error.get('code') or error.get('type')}: {error.get('message')}"[
            :200
        ]
    return f"error event: {error}"[:200]
