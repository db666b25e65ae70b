"""OpenAI-compatible SSE relayed byte for byte, with the usage the upstream reports read off it.

To learn what a stream cost, :class:`~aigw.providers.openai.OpenAIProvider` asks the upstream
for ``stream_options.include_usage`` even when the client did not. The upstream then ends the
stream with one extra event (``"choices": []`` and a ``usage`` object) before ``[DONE]``, and
puts ``"usage": null`` into every other chunk. :class:`OpenAIStream` records the usage and,
when the option was the gateway's, drops that extra event so the client sees the stream it
asked for. The ``"usage": null`` fields are left in place: OpenAI's own schema allows them
(its SDK parses them as ``usage=None``), and removing them would mean rewriting every chunk.

Hot path: events are never decoded one by one. Per chunk the translator finds the last event
boundary (``\\n\\n`` or ``\\r\\n\\r\\n``, C-level ``bytes`` searches) and looks for
``"usage":{`` in the complete part; only an event holding that is parsed. JSON escapes every
quote inside a string, so the marker cannot be faked by generated text.

Safety (both checks are cheap and never parse JSON): an event may hold at most
:data:`MAX_EVENT_BYTES` (counted since the last event boundary, so an endless event without a
blank line is cut off), and every line must be one SSE allows: blank, a ``:`` comment,
``event:``/``id:``/``retry:``, or ``data:`` whose first bytes are ``{`` or ``[DONE]`` (for the
first data line of an event). Anything else (an HTML error page sent as ``text/event-stream``,
``data: Internal error``) raises :class:`~aigw.errors.UpstreamConnectionError`, which the
gateway turns into one error event, closing the upstream. (A field name without a colon,
legal SSE but written by no such server, is refused too.) A chunk holding one single-line JSON
event, the usual case, is checked by its start and two byte searches; any other complete
events are checked line by line; of an unfinished event only its first bytes are checked
before its end arrives (the rest is checked when it completes). An unfinished event is held
back until its end arrives (no SSE client can use part of one), so an event refused at its
end never reaches the client in part, and the gateway's error event is an event of its own.
A byte order mark is allowed only before the stream's first line.
"""

from __future__ import annotations

import re

import orjson

from aigw.errors import UpstreamConnectionError
from aigw.types import Usage

__all__ = ["MAX_EVENT_BYTES", "OpenAIStream", "openai_usage", "usage_in_reply"]

# The largest event accepted from an upstream. Real chunks are a few hundred bytes; the
# largest legitimate ones (a tool call's arguments or logprobs in one chunk) stay far below.
# A constant rather than ``server.max_upstream_reply_bytes`` (a whole-reply cap, usually
# much larger) so the provider interface need not change.
MAX_EVENT_BYTES = 1 << 20

# How a valid line may start. The first data line of an event must look like JSON or be
# [DONE]; a further data line of the same event continues it and is not checked.
_JSON_STARTS = (b"data: {", b"data:{")
_DATA_STARTS = (*_JSON_STARTS, b"data: [DONE]", b"data:[DONE]")
_OTHER_FIELDS = (b":", b"event:", b"id:", b"retry:")
_BARE_FIELDS = (b"event", b"id", b"retry")
_LINE_STARTS = (*_DATA_STARTS, *_OTHER_FIELDS)
_BOM = b"\xef\xbb\xbf"
# Bytes after which an unfinished line's start can be judged (len(b"data: [DONE]")).
_JUDGE_BYTES = 12

# A usage *object* (not ``null``), compact as vLLM, SGLang, TGI, Ollama and OpenAI write it,
# or with the space Python's json.dumps puts after the colon. One regex pass per chunk costs
# about what one ``in`` does, and half of testing both spellings with ``in``.
_find_usage = re.compile(rb'"usage": ?\{').search
# Any blank line ends an event (lines end with \r\n, \n or \r). Used only to split a region
# holding a usage event into its events, and only when that region contains a \r.
_BOUNDARY = re.compile(rb"\r\n\r\n|\r\n\n|\n\r\n|\n\n|\r\r")


def openai_usage(usage: object) -> Usage | None:
    """OpenAI's ``usage`` object as :class:`Usage`; None when it is not an object.

    Embeddings report only ``prompt_tokens``: their completion count is 0.
    """
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return Usage(
        prompt if type(prompt) is int else 0,
        completion if type(completion) is int else 0,
    )


def usage_in_reply(body: bytes) -> Usage | None:
    """The ``usage`` of a non-streamed OpenAI reply; None when it has none.

    Raises UpstreamConnectionError (``upstream_bad_reply``, retryable) when the body is not a
    JSON object: it would otherwise be relayed to the client as ``application/json``.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamConnectionError(
            f"reply is not JSON ({exc})", code="upstream_bad_reply"
        ) from exc
    if not isinstance(data, dict):
        raise UpstreamConnectionError("reply is not a JSON object", code="upstream_bad_reply")
    return openai_usage(data.get("usage"))


def _events_end(data: bytes) -> int:
    """Offset just past the last complete event in ``data`` (0 when there is none)."""
    if data.endswith(b"\n\n") or data.endswith(b"\r\n\r\n"):
        return len(data)  # the usual case: the upstream writes whole events
    end = data.rfind(b"\n\n")
    end = end + 2 if end >= 0 else 0
    crlf = data.rfind(b"\r\n\r\n")
    return max(end, crlf + 4) if crlf >= 0 else end


def _split_events(region: bytes) -> list[bytes]:
    """``region`` cut after each blank line; the pieces join back to ``region`` exactly."""
    if b"\r" not in region:  # the usual case: C-level split, no regex
        parts = region.split(b"\n\n")
        last = parts.pop()
        events = [part + b"\n\n" for part in parts]
        if last:
            events.append(last)
        return events
    events = []
    start = 0
    for match in _BOUNDARY.finditer(region):
        events.append(region[start : match.end()])
        start = match.end()
    if start < len(region):
        events.append(region[start:])
    return events


def _completes_event(last: bytes, chunk: bytes) -> bool:
    """Whether ``chunk``, following pending bytes whose last three are ``last``, ends an
    event."""
    if b"\n" not in chunk:  # every boundary _events_end knows ends with \n
        return False
    return (
        chunk.find(b"\n\n") >= 0
        or chunk.find(b"\r\n\r\n") >= 0
        or _events_end(last[-3:] + chunk[:3]) > 0  # a boundary split between the two
    )


def _bad_line(region: bytes, at_start: bool) -> bool:
    """Whether ``region`` (whole events, or the unterminated end of a stream) holds a line an
    OpenAI-compatible upstream may not send; ``at_start``: it begins the stream."""
    if at_start and region.startswith(_BOM):  # allowed before the first line of a stream
        region = region[len(_BOM) :]
    first_data = True
    for line in region.splitlines():
        if not line:
            first_data = True
        elif line.startswith(b"data:"):
            if first_data and not line.startswith(_DATA_STARTS):
                return True
            first_data = False
        elif not line.startswith(_OTHER_FIELDS):
            return True
    return False


def _bad_start(tail: bytes, at_start: bool) -> bool:
    """Whether the start of an unfinished event already shows it is not a valid line;
    ``at_start``: the event begins the stream (a byte order mark may come first)."""
    if at_start:
        if tail.startswith(_BOM):
            tail = tail[len(_BOM) :]
        elif _BOM.startswith(tail):
            return False  # a stream starting with part of a byte order mark
    if tail.startswith(_LINE_STARTS) or tail.startswith((b"\n", b"\r")):
        return False
    # Too short to tell yet: valid while it is the start of some allowed line.
    return not any(start.startswith(tail) for start in _LINE_STARTS)


def _event_too_large(limit: int) -> UpstreamConnectionError:
    return UpstreamConnectionError(
        f"upstream sent a stream event over {limit} bytes", code="upstream_event_too_large"
    )


def _bad_event() -> UpstreamConnectionError:
    # The offending bytes are not quoted: they are the upstream's, possibly a whole page.
    return UpstreamConnectionError(
        "upstream sent a stream line that is not an OpenAI-compatible SSE event",
        code="upstream_bad_event",
    )


class OpenAIStream:
    """Relays one OpenAI-compatible stream; records its usage; may drop the usage-only event.

    Complete events are returned as soon as they are complete (an event split across chunks
    waits for its end, which no SSE client could use earlier anyway), exactly as received; with
    ``strip_usage_chunk`` the events that carry a usage object with no (or empty) ``choices``
    are left out. An event carrying usage *and* choices (some servers put usage
    on the finishing chunk) is kept. ``usage`` is the last usage object seen, None until then.
    Error events inside the stream are the client's to read and pass unchanged.

    ``feed`` and ``finish`` raise UpstreamConnectionError (502, retryable): code
    ``upstream_event_too_large`` once more than ``max_event_bytes`` arrive without an event
    boundary, and ``upstream_bad_event`` for a line that is not SSE an OpenAI-compatible
    server writes (see the module docstring). Nothing is returned for a chunk that raises.
    """

    __slots__ = (
        "_last3",
        "_max",
        "_pending",
        "_pending_first",
        "_size",
        "_started",
        "_strip",
        "_usage",
    )

    def __init__(
        self, *, strip_usage_chunk: bool = False, max_event_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        self._strip = strip_usage_chunk
        self._max = max_event_bytes
        self._size = 0  # bytes in _pending
        # Bytes of the unfinished last event, as received; joined once the event completes,
        # so a long event arriving in many pieces costs linear copying.
        self._pending: list[bytes] = []
        self._last3 = b""  # the last three pending bytes: a boundary may straddle pieces
        self._started = False  # whether any bytes came yet (a BOM may only come first)
        self._pending_first = False  # whether the pending bytes begin the stream
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and chunk.endswith(b"\n\n") and self._started:
            # The usual case: the upstream wrote whole events and nothing is pending. One
            # valid single-line event needs no more checking than its start and one newline.
            if not (
                chunk.startswith(_JSON_STARTS)
                and chunk.find(b"\n") == len(chunk) - 2
                and chunk.find(b"\r") < 0  # (`find` is twice as fast as `in` here)
                and len(chunk) <= self._max
            ):
                self._check_events(chunk)
            if _find_usage(chunk) is None:
                return chunk
            return self._scan(chunk)
        return self._feed_partial(chunk)

    def _feed_partial(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        pending = self._pending
        first = self._pending_first if pending else not self._started  # data begins the stream
        self._started = True
        if pending:
            completes = _completes_event(self._last3, chunk)
            pending.append(chunk)
            if not completes:
                # Nothing is joined until the event ends: an event sent a line per chunk
                # costs linear copying, not a rejoin of everything pending per line.
                size = self._size + len(chunk)
                if size > self._max:
                    raise _event_too_large(self._max)
                if self._size < _JUDGE_BYTES and _bad_start(b"".join(pending), first):
                    raise _bad_event()  # its start was too short to judge before
                self._size = size
                self._last3 = (self._last3 + chunk)[-3:]
                return b""
            data = b"".join(pending)
            pending.clear()
        else:
            data = chunk
        end = _events_end(data)
        if end < len(data):
            tail = data[end:]
            if len(tail) > self._max:
                raise _event_too_large(self._max)
            if _bad_start(tail, first and end == 0):
                raise _bad_event()
            pending.append(tail)
            self._pending_first = first and end == 0
            self._size = len(tail)
            self._last3 = tail[-3:]
            complete = data[:end]
        else:
            self._size = 0
            complete = data
        if complete:
            self._check_events(complete, first)
        if _find_usage(complete) is None:
            return complete
        return self._scan(complete)

    def finish(self) -> bytes:
        """Whatever the upstream left unterminated (returned when stripping); no ``[DONE]``,
        since OpenAI-compatible upstreams send it themselves."""
        rest = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        self._last3 = b""
        if rest and _bad_line(rest, self._pending_first):
            raise _bad_event()
        if rest and _find_usage(rest):
            rest = self._scan(rest)
        return rest

    def _check_events(self, region: bytes, at_start: bool = False) -> None:
        """Raise unless every event in ``region`` (whole events) is small and well formed."""
        if (
            region.startswith(_JSON_STARTS)
            and region.find(b"\n") == len(region) - 2
            and region.find(b"\r") < 0
            and len(region) <= self._max
        ):
            return  # one single-line JSON event, as in ``feed``'s fast path
        if len(region) > self._max and any(len(e) > self._max for e in _split_events(region)):
            raise _event_too_large(self._max)
        if _bad_line(region, at_start):
            raise _bad_event()

    def _scan(self, region: bytes) -> bytes:
        """Record the usage in ``region``'s events; return it without usage-only events if
        stripping (else unchanged)."""
        kept: list[bytes] = []
        dropped = False
        for event in _split_events(region):
            if _find_usage(event) and self._record(event) and self._strip:
                dropped = True
            else:
                kept.append(event)
        return b"".join(kept) if dropped else region

    def _record(self, event: bytes) -> bool:
        """Take the usage from one event; True when it is a usage-only event."""
        text = event.strip()
        if text.startswith(b"data:") and b"\n" not in text and b"\r" not in text:
            text = text[5:]  # one data line, as every server writes (orjson skips the space)
        else:
            text = b"\n".join(
                line[6:] if line.startswith(b"data: ") else line[5:]
                for line in text.splitlines()
                if line.startswith(b"data:")
            )
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(payload, dict):
            return False
        usage = openai_usage(payload.get("usage"))
        if usage is None:
            return False
        self._usage = usage
        return not payload.get("choices")
