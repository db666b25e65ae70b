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
"""

from __future__ import annotations

import re

import orjson

from aigw.errors import UpstreamConnectionError
from aigw.types import Usage

__all__ = ["OpenAIStream", "openai_usage", "usage_in_reply"]

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


class OpenAIStream:
    """Relays one OpenAI-compatible stream; records its usage; may drop the usage-only event.

    With ``strip_usage_chunk`` False the output of every ``feed`` is its input, unchanged. With
    it True, complete events are returned as soon as they are complete (an event split across
    chunks waits for its end, which no SSE client could use earlier anyway) and the events
    that carry a usage object with no (or empty) ``choices`` are left out; all other bytes are
    returned exactly as received. An event carrying usage *and* choices (some servers put usage
    on the finishing chunk) is kept. ``usage`` is the last usage object seen, None until then.
    Never raises: errors inside the stream are the client's to read.
    """

    __slots__ = ("_pending", "_strip", "_usage")

    def __init__(self, *, strip_usage_chunk: bool = False) -> None:
        self._strip = strip_usage_chunk
        # Bytes of the unfinished last event, as received; joined once the event completes,
        # so a long event arriving in many pieces costs linear copying.
        self._pending: list[bytes] = []
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and chunk.endswith(b"\n\n"):
            # The usual case: the upstream wrote whole events and nothing is pending.
            if _find_usage(chunk) is None:
                return chunk
            out = self._scan(chunk)
            return out if self._strip else chunk
        return self._feed_partial(chunk)

    def _feed_partial(self, chunk: bytes) -> bytes:
        pending = self._pending
        if pending:
            pending.append(chunk)
            # An event boundary ends with \n or \r: without one, nothing completed here.
            if b"\n" not in chunk and b"\r" not in chunk:
                return b"" if self._strip else chunk
            data = b"".join(pending)
            pending.clear()
        else:
            data = chunk
        end = _events_end(data)
        if end < len(data):
            pending.append(data[end:])
            complete = data[:end]
        else:
            complete = data
        if _find_usage(complete) is None:
            return complete if self._strip else chunk
        out = self._scan(complete)
        return out if self._strip else chunk

    def finish(self) -> bytes:
        """Whatever the upstream left unterminated (returned when stripping); no ``[DONE]``,
        since OpenAI-compatible upstreams send it themselves."""
        rest = b"".join(self._pending)
        self._pending.clear()
        if rest and _find_usage(rest):
            rest = self._scan(rest)
        return rest if self._strip else b""

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
