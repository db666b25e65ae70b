"""Continuation failover: a stream that breaks mid-way goes on on another deployment.

Opt-in per model (``stream_resume: true``). While such a model's stream is relayed,
:class:`Transcript` wraps its translator and keeps the assistant text the client has been sent
(and the stream's ``id``/``created``/``model``). When the upstream breaks with a retryable
error (connection cut, idle timeout, malformed event, an upstream error event with a 5xx/429
status; not an upstream's own refusal such as a content-policy 400), the gateway sends the
conversation plus that text as a prefix to continue (:mod:`aigw.providers.continuation`) to
another deployment of the same model, and relays the new stream through
:class:`Continuation`, which makes it read as the rest of the first one:

* the new stream's role-only opening chunk is dropped (the client has had one);
* every chunk's ``id``, ``created`` and ``model`` are the first stream's (clients key on id);
* its usage (when the client asked for ``include_usage``, and for accounting) counts the whole
  answer: completion tokens already sent plus the continuation's, and the continuation's prompt
  tokens less the prefix it was given (that prefix is the client's answer, not its prompt);
* one ``[DONE]``: the broken stream never sent its own.

Not resumable: a stream that has relayed a tool call (arguments cannot be continued reliably),
more than one choice (``n > 1``, or a choice index other than 0), a stream that already sent its
finish reason, and completions whose prompt is not one string.

Cost: nothing for models without ``stream_resume`` (the relay is untouched: no wrapper is
built). With it, each relayed chunk's events are parsed once more (orjson) to collect the
text; the README gives the measured cost.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from aigw.providers import StreamTranslator
from aigw.types import Usage

__all__ = ["Continuation", "Transcript", "prefix"]

_DONE = b"[DONE]"
# The hot path's one regex: a content string (its JSON-escaped body captured), or a marker
# that sends the chunk to the slow path (captured as b""). JSON escapes every quote inside a
# string, so generated text can never fake one (as in aigw.providers.openai_stream).
_MARKERS = rb'|finish_reason": ?"|tool_calls"|function_call")'
_scan_chat = re.compile(rb'"(?:content": ?"((?:[^"\\]|\\.)*)"' + _MARKERS).findall
_scan_completion = re.compile(rb'"(?:text": ?"((?:[^"\\]|\\.)*)"' + _MARKERS).findall


class Transcript:
    """A stream translator that records what its client was sent: the assistant text of
    choice 0, how many content chunks carried it (``pieces``: tokens, for engines that send
    one token per chunk as vLLM and SGLang do by default) and the stream's identity.

    ``inner`` may be replaced (:meth:`follow`) by a continuation's translator: the text then
    accumulates across attempts."""

    __slots__ = (
        "_chat",
        "_inner",
        "_raw",
        "_scan",
        "created",
        "finished",
        "id",
        "model",
        "pieces",
        "resumable",
    )

    def __init__(self, inner: StreamTranslator, chat: bool) -> None:
        self._inner = inner
        self._chat = chat
        self._raw: list[bytes] = []  # the text's pieces, as JSON string contents
        self._scan = _scan_chat if chat else _scan_completion
        self.pieces = 0
        self.id: object = None
        self.created: object = None
        self.model: object = None
        self.resumable = True  # False once a tool call or a second choice was relayed
        self.finished = False  # a finish reason was relayed: nothing left to continue

    @property
    def text(self) -> str:
        """The assistant text sent so far (decoded here: only a resume asks for it)."""
        text = orjson.loads(b'"' + b"".join(self._raw) + b'"')
        assert isinstance(text, str)
        return text

    @property
    def can_resume(self) -> bool:
        return self.resumable and not self.finished

    def follow(self, inner: StreamTranslator) -> None:
        """Go on recording from a continuation's (rewritten) stream."""
        self._inner = inner

    def feed(self, chunk: bytes) -> bytes:
        out = self._inner.feed(chunk)
        if out:
            self._note(out)
        return out

    def finish(self) -> bytes:
        out = self._inner.finish()
        if out:
            self._note(out)
        return out

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    def _note(self, out: bytes) -> None:
        """Collect the text of ``out``'s events. Hot path (every chunk of a stream_resume
        model): one regex pass finds the content strings; when it found only non-empty ones
        (no finish reason, no tool call, no empty content), they are kept as they are, JSON
        escapes and all (decoded once, by :attr:`text`). Anything else (the first event, a
        tool call, a finish reason) is parsed event by event."""
        if self.id is not None:
            found = self._scan(out)
            if b"" not in found:
                self._raw.extend(found)
                self.pieces += len(found)
                return
        for line in out.split(b"\n"):
            if line.startswith(b"data:"):
                self._note_event(line)

    def _note_event(self, line: bytes) -> None:
        payload = line[5:].strip()
        if not payload or payload == _DONE:
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if self.id is None:
            self.id = event.get("id")
            self.created = event.get("created")
            self.model = event.get("model")
        choices = event.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self.resumable = False
                continue
            if self._chat:
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.resumable = False
                content = delta.get("content")
            else:
                content = choice.get("text")
            if isinstance(content, str) and content:
                self._raw.append(orjson.dumps(content)[1:-1])
                self.pieces += 1
            if choice.get("finish_reason"):
                self.finished = True


class Continuation:
    """A continuation's stream translator whose output reads as the rest of the first
    stream's (see the module's docstring). ``prior_tokens``: completion tokens already sent."""

    __slots__ = ("_chat", "_first", "_inner", "_prior", "_trim")

    def __init__(
        self, inner: StreamTranslator, first: Transcript, prior_tokens: int, chat: bool
    ) -> None:
        self._inner = inner
        self._first = first
        self._prior = prior_tokens
        self._chat = chat
        # The prefix to continue is sent without its trailing whitespace (see prefix()); the
        # client has it, so the same whitespace opening the continuation is not sent again.
        text = first.text
        self._trim = text[len(text.rstrip()) :]

    def feed(self, chunk: bytes) -> bytes:
        out = self._inner.feed(chunk)
        return self._rewrite(out) if out else out

    def finish(self) -> bytes:
        out = self._inner.finish()
        return self._rewrite(out) if out else out

    @property
    def usage(self) -> Usage | None:
        usage = self._inner.usage
        return self._whole(usage) if usage is not None else None

    def _whole(self, usage: Usage) -> Usage:
        return Usage(
            max(0, usage.prompt_tokens - self._prior), usage.completion_tokens + self._prior
        )

    def _rewrite(self, out: bytes) -> bytes:
        parts: list[bytes] = []
        for raw in out.split(b"\n\n"):
            line = raw.strip()
            if not line:
                continue
            if not line.startswith(b"data:"):
                parts.append(line + b"\n\n")  # comments, event: lines: as they came
                continue
            payload = line[5:].strip()
            if payload == _DONE:
                parts.append(b"data: [DONE]\n\n")
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                parts.append(line + b"\n\n")
                continue
            if not isinstance(event, dict) or not self._keep(event):
                continue
            parts.append(b"data: " + orjson.dumps(event) + b"\n\n")
        return b"".join(parts)

    def _keep(self, event: dict[str, Any]) -> bool:
        """Rewrite ``event`` in place; False when it must not be sent at all."""
        first = self._first
        for name, value in (("id", first.id), ("created", first.created), ("model", first.model)):
            if value is not None and name in event:
                event[name] = value
        usage = event.get("usage")
        if isinstance(usage, dict):
            whole = self._whole(
                Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
            )
            event["usage"] = {
                **usage,
                "prompt_tokens": whole.prompt_tokens,
                "completion_tokens": whole.completion_tokens,
                "total_tokens": whole.total_tokens,
            }
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:
            return True
        kept = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            holder = choice.get("delta") if self._chat else choice
            if not isinstance(holder, dict):
                kept.append(choice)
                continue
            holder.pop("role", None)  # the client had the role from the first stream
            key = "content" if self._chat else "text"
            text = holder.get(key)
            if self._trim and isinstance(text, str) and text:
                holder[key] = text = self._trimmed(text)
            if not text and not choice.get("finish_reason") and not _other_fields(holder, key):
                continue  # the opening role-only chunk, or whitespace the client had
            kept.append(choice)
        if not kept and not isinstance(usage, dict):
            return False
        event["choices"] = kept
        return True

    def _trimmed(self, text: str) -> str:
        """``text`` less the leading whitespace the client already has (``_trim``)."""
        trim = self._trim
        n = 0
        while n < len(text) and n < len(trim) and text[n] == trim[n]:
            n += 1
        self._trim = trim[n:] if n == len(text) else ""
        return text[n:]


def prefix(text: str) -> str:
    """The prefix a continuation is asked to continue: the text sent, without trailing
    whitespace (Anthropic refuses a prefill that ends with whitespace, and a prefix that ends
    on a word lets the model write its next word whole); :class:`Continuation` drops that
    whitespace again from the continuation's opening."""
    return text.rstrip()


def _other_fields(holder: dict[str, Any], key: str) -> bool:
    """Whether a delta (or a completion choice) carries more than its text and index."""
    return any(k not in (key, "index", "finish_reason", "logprobs") for k in holder)


def _int(value: object) -> int:
    return value if type(value) is int else 0
