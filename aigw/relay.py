"""Moving an upstream's answer to the client: a bounded non-streamed reply, or a stream.

:func:`read_reply` reads a non-streamed reply, refused past a size cap; :func:`first_output`
waits for a stream's first translated bytes (until then the attempt may still fail over);
:class:`UpstreamStream` relays the rest chunk by chunk and settles the attempt once, however
the stream ends. :class:`Redacting` wraps a stream translator so that configured secrets never
reach the client (:mod:`aigw.redaction`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from aigw.errors import GatewayError, UpstreamConnectionError
from aigw.fleet.attempt import Attempt, Observers
from aigw.fleet.deployment import Deployment
from aigw.providers import StreamTranslator
from aigw.redaction import Redactor
from aigw.types import Usage
from aigw.upstream import Transport, UpstreamResponse

__all__ = [
    "Opened",
    "Redacting",
    "Resume",
    "ResumeOutcome",
    "UpstreamStream",
    "first_output",
    "read_reply",
    "scrub",
]

log = logging.getLogger("aigw.gateway")
Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Opened:
    """A stream whose first translated bytes exist (so the attempt can no longer fail over)."""

    response: UpstreamResponse
    translator: StreamTranslator
    first: bytes


async def read_reply(response: UpstreamResponse, limit: int, deployment: Deployment) -> bytes:
    """The whole body of a non-streamed reply, refused once over ``limit`` bytes.

    Counted as read: the transport decompresses (aiohttp's auto_decompress), so the limit
    holds for what a small gzip body expands to, and nothing over it is ever buffered.
    """
    content = response.content
    parts: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise UpstreamConnectionError(
                f"deployment {deployment.id} sent a reply over {limit} bytes",
                code="upstream_reply_too_large",
            )
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def first_output(
    response: UpstreamResponse, translator: StreamTranslator, deployment: Deployment
) -> bytes:
    content = response.content
    while True:
        chunk = await content.readany()
        if not chunk:
            tail = translator.finish()
            if tail:
                return tail
            raise UpstreamConnectionError(
                f"deployment {deployment.id} closed the stream before sending any data",
                code="upstream_error",
            )
        out = translator.feed(chunk)
        if out:
            return out


# Why a broken stream was not continued: "failed" (no deployment could open a continuation
# in time), "not_resumable" (it may not be continued: a tool call or a finish reason relayed,
# its max_stream_resumes reached). "resumed" is what the relay notes when one was opened.
ResumeOutcome = Literal["resumed", "failed", "not_resumable"]
Resume = Callable[
    [GatewayError], Awaitable[tuple[Attempt, Opened] | Literal["failed", "not_resumable"] | None]
]


class UpstreamStream:
    """An upstream stream whose first output is ready; ``relay`` sends it all to the client.

    ``resume`` (continuation failover, :mod:`aigw.resume`; None when the model has it off) is
    asked, when the upstream breaks mid-stream, for a continuation: it settles the broken
    attempt and returns the next attempt with its opened stream; else why not (a
    :data:`ResumeOutcome`), or None for an error that is not a break to continue (an
    upstream's own refusal); then the client gets the error event as without it.
    ``resumes``: the outcome of each break, in order (read by the request's record).
    """

    def __init__(
        self,
        attempt: Attempt,
        opened: Opened,
        transport: Transport,
        observers: Observers,
        account: Callable[[GatewayError | None], Awaitable[None]],
        headers: list[tuple[bytes, bytes]],
        resume: Resume | None = None,
    ) -> None:
        self.deployment = attempt.deployment
        self.headers = headers
        self.attempt = attempt
        self._opened = opened
        self._transport = transport
        self._account = account
        self._accounted = False
        self._resume = resume
        self.resumes: tuple[ResumeOutcome, ...] = ()

    async def relay(self, send: Send) -> str | None:
        """Send every chunk as it arrives; end with an error event if the upstream breaks
        (its error code is returned; None when the stream ended well).

        Always accounts for the request (slot released, usage reconciled), also when cancelled
        (client disconnect): closing the response aborts the upstream request at once.
        """
        error: GatewayError | None = None
        try:
            await send(self._opened.first)
            error = await self._pump(send)
            while error is not None and self._resume is not None:
                resumed = await self._resume(error)
                if resumed is None:
                    break
                if isinstance(resumed, str):
                    self.resumes = (*self.resumes, resumed)
                    break
                self.resumes = (*self.resumes, "resumed")
                self.attempt, self._opened = resumed
                await send(self._opened.first)
                error = await self._pump(send)
            if error is not None:
                await send(b"data: " + orjson.dumps(error.to_dict()) + b"\n\n")
        finally:
            await self._settle(error)
        return error.code if error is not None else None

    async def _pump(self, send: Send) -> GatewayError | None:
        """Relay the current attempt's stream to its end: None when it ended well, else the
        error it broke with. Its response is released (finished) or closed either way."""
        attempt = self.attempt
        deployment = attempt.deployment
        idle = deployment.config.timeouts.idle
        loop = asyncio.get_running_loop()
        response = self._opened.response
        content = response.content
        translator = self._opened.translator
        finished = broke = False
        events = attempt.relayed_events
        try:
            with self._transport.errors(deployment, "streaming"):
                async with asyncio.timeout(None) as deadline:
                    while True:
                        # The idle deadline covers the upstream only: a slow client is
                        # not the deployment's fault.
                        deadline.reschedule(loop.time() + idle)
                        chunk = await content.readany()
                        deadline.reschedule(None)
                        if not chunk:
                            break
                        out = translator.feed(chunk)
                        if out:
                            events += out.count(b"data:")
                            attempt.last_byte_at = loop.time()
                            await send(out)
                tail = translator.finish()
                if tail:
                    await send(tail)
                finished = True
        except GatewayError as exc:
            broke = True
            log.warning("stream from %s broke: %s", deployment.id, exc.message)
            return exc
        finally:
            # A finished response goes back to the keep-alive pool; anything else (client
            # gone, upstream broken) closes the connection, which aborts the upstream request.
            attempt.relayed_events = events
            if finished:
                response.release()
                attempt.usage = translator.usage
            else:
                response.close()
            attempt.abandoned = not (finished or broke)  # cancelled: the client went away
        return None

    async def _settle(self, error: GatewayError | None) -> None:
        if not self._accounted:
            self._accounted = True
            await self._account(error)

    async def close(self) -> None:
        """Give up on a stream that will not be relayed."""
        self._opened.response.close()
        self.attempt.abandoned = True
        await self._settle(None)


def scrub(error: GatewayError, redact: Redactor) -> None:
    """Scrub the upstream-supplied parts of ``error`` in place."""
    error.message = redact.text(error.message)
    if error.param is not None:
        error.param = redact.text(error.param)
    if error.code is not None:
        error.code = redact.text(error.code)


class Redacting:
    """A stream translator whose output and in-stream errors pass through a Redactor."""

    __slots__ = ("_inner", "_redact")

    def __init__(self, inner: StreamTranslator, redact: Redactor) -> None:
        self._inner = inner
        self._redact = redact

    def feed(self, chunk: bytes) -> bytes:
        try:
            return self._redact.data(self._inner.feed(chunk))
        except GatewayError as exc:
            scrub(exc, self._redact)
            raise

    def finish(self) -> bytes:
        try:
            return self._redact.data(self._inner.finish())
        except GatewayError as exc:
            scrub(exc, self._redact)
            raise

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage
