"""Client connections the gateway is willing to hold: bounded heads, deadlines, a cap.

uvicorn's httptools protocol trusts its clients: llhttp buffers a header line of any size, and
the only timeout is the keep-alive one between requests, so a slow (or never finished) request
head or body holds a connection forever, and a client that stops reading a stream blocks the
response's ``send`` forever, with its upstream request and its concurrency slot. This module
subclasses that protocol (rather than adding middleware: the problems lie below ASGI) with:

- ``max_header_bytes``: a request head (request line and headers) larger than this is answered
  with 431 and the connection closed. A head still incomplete is measured by the bytes received
  for it; a complete one exactly, by its URL and header fields.
- ``header_timeout_s``: a head must arrive within this many seconds of the connection opening
  (or of its first byte, on a kept-alive connection), else 408 and close.
- ``body_timeout_s``: the body must be complete this many seconds after its head; else the
  connection is dropped and the application sees a disconnect.
- ``send_timeout_s``: a client that has accepted no data for this long while the gateway has a
  response to write (the transport's buffer is full) is dropped; the application sees a
  disconnect, which cancels the upstream request and releases its slot.
- ``max_connections``: connections beyond this are answered with 503 and closed at once.

It also tells each request when its client is gone (:class:`Disconnect`, offered in the ASGI
scope), so that the app needs no task per request waiting on ``receive()`` for it.

Deadlines are not timers per request: one sweep per server per ``sweep_interval_s`` checks the
timestamps each connection keeps, so a request pays two clock reads and a few attribute writes,
and a deadline fires up to one sweep interval late.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aigw.errors import GatewayError, InvalidRequestError, ServiceUnavailableError

__all__ = ["DISCONNECT_EXTENSION", "ConnectionGuard", "ConnectionLimits", "Disconnect"]

log = logging.getLogger("aigw.connections")


# After refusing a head over the limit: how long to read and discard what the client still
# sends, so that it reads the 431 rather than a reset (see GuardedHttpToolsProtocol.refuse).
LINGER_S = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 2048
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    send_timeout_s: float = 30.0
    sweep_interval_s: float = 1.0


DISCONNECT_EXTENSION = "aigw.disconnect"
"""A request's :class:`Disconnect` is ``scope["extensions"][DISCONNECT_EXTENSION]["signal"]``
(ASGI extensions are dicts)."""


class Disconnect:
    """Cancels a request's task when its client's connection is lost.

    An ASGI app otherwise learns of a lost client by awaiting ``receive()`` until it returns
    ``http.disconnect``: one more task per request, created, woken and cancelled, only to
    wait. The protocol sees the loss itself (``connection_lost``), so it offers each request
    one of these in the scope (:data:`DISCONNECT_EXTENSION`): the app arms it with its task
    while the client matters and disarms it after; a loss while armed cancels the task
    (``cut`` then tells that cancellation from any other), a loss before is only noted
    (``lost``). The same losses as ``http.disconnect``: the connection closed or reset before
    the response was complete.
    """

    __slots__ = ("_resume_reading", "_task", "cut", "lost")

    def __init__(self, resume_reading: Callable[[], None] | None = None) -> None:
        self._resume_reading = resume_reading
        self._task: asyncio.Task[Any] | None = None
        self.lost = False  # the connection went before the response was complete
        self.cut = False  # the armed task was cancelled for it

    def arm(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        if self._resume_reading is not None:
            # uvicorn stops reading while more than 64 KiB of body is unread and resumes
            # in receive(), which the app no longer calls after the body: a closed
            # connection is only seen while reading.
            self._resume_reading()

    def disarm(self) -> None:
        self._task = None

    def connection_lost(self) -> None:
        self.lost = True
        task = self._task
        if task is not None:
            self._task = None
            self.cut = True
            task.cancel()


class _HeadTooLarge(Exception):
    """Raised inside the parser's callback to stop parsing a head over the limit."""


def _raw_response(status: int, reason: str, error: GatewayError, *extra: bytes) -> bytes:
    """A complete HTTP/1.1 response with an OpenAI-shaped error body that closes the connection."""
    body = orjson.dumps(error.to_dict())
    head = [
        f"HTTP/1.1 {status} {reason}".encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ConnectionGuard:
    """The limits of one server and the sweep that enforces its deadlines.

    :meth:`protocol_class` gives the ``http`` protocol to hand to ``uvicorn.Config``; each
    server needs a guard of its own (the sweep walks that server's connections).
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._connections: set[Any] | None = None
        self._sweep_armed = False
        self.header_too_large = _raw_response(
            431,
            "Request Header Fields Too Large",
            InvalidRequestError(
                f"The request head exceeds {limits.max_header_bytes} bytes.",
                code="request_header_too_large",
            ),
        )
        self.header_timeout = _raw_response(
            408,
            "Request Timeout",
            InvalidRequestError(
                f"The request head did not arrive within {limits.header_timeout_s:g} s.",
                code="request_timeout",
            ),
        )
        self.too_many_connections = _raw_response(
            503,
            "Service Unavailable",
            ServiceUnavailableError(
                f"The gateway holds its maximum of {limits.max_connections} connections; "
                "retry shortly.",
                code="too_many_connections",
            ),
            b"retry-after: 1",
        )

    def protocol_class(self) -> type[HttpToolsProtocol]:
        return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": self})

    def admit(self, connection: GuardedHttpToolsProtocol) -> bool:
        """Whether a new connection may stay; arms the sweep while there are connections."""
        connections = connection.connections
        self._connections = connections
        if not self._sweep_armed:
            self._sweep_armed = True
            connection.loop.call_later(self.limits.sweep_interval_s, self._sweep, connection.loop)
        return len(connections) <= self.limits.max_connections

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        limits = self.limits
        closed: Counter[str] = Counter()
        connections = self._connections or set()
        for connection in list(connections):
            if not isinstance(connection, GuardedHttpToolsProtocol) or connection.refused:
                continue
            if (
                connection.head_since is not None
                and now - connection.head_since > limits.header_timeout_s
            ):
                if connection.cycle is None or connection.cycle.response_complete:
                    connection.refuse(self.header_timeout)
                else:  # a pipelined head behind a response still being written
                    connection.drop()
                closed["slow request head"] += 1
            elif (
                connection.body_since is not None
                and now - connection.body_since > limits.body_timeout_s
            ):
                connection.drop()
                closed["slow request body"] += 1
            elif (
                connection.stalled_since is not None
                and now - connection.stalled_since > limits.send_timeout_s
            ):
                connection.drop()
                closed["client not reading the response"] += 1
        if closed:
            # One line per sweep, however many connections it closed: a flood cannot flood logs.
            log.warning(
                "closed %s",
                ", ".join(f"{count} connection(s): {why}" for why, count in closed.items()),
            )
        if connections:
            loop.call_later(limits.sweep_interval_s, self._sweep, loop)
        else:
            self._sweep_armed = False


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of its class's :class:`ConnectionGuard`."""

    guard: ConnectionGuard

    # Whether the connection has been refused (its answer written, the transport closing).
    refused = False
    # Since when a request head is awaited (None: not waiting for one, or not started yet).
    head_since: float | None = None
    # Bytes received of an unfinished head; -1 between a finished request and the next head.
    head_bytes = 0
    # Since when the body of a request whose head is complete is awaited.
    body_since: float | None = None
    # Since when the transport's write buffer has been full (the client is not reading).
    stalled_since: float | None = None
    # The latest request's (the one of self.cycle).
    disconnect: Disconnect

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_since = self.loop.time()
        if not self.guard.admit(self):
            self.refuse(self.guard.too_many_connections)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received with the head accounting around the parser; its own 400
        # path would otherwise answer a head over the limit as a malformed request.
        if self.refused:
            return
        self._unset_keepalive_if_required()
        if self.head_bytes < 0:  # the first bytes after a finished request: a new head
            self.head_bytes = 0
            self.head_since = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self.refuse(self.guard.header_too_large, linger=True)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.head_since is not None:  # the head is still unfinished after this chunk
            self.head_bytes += len(data)
            if self.head_bytes > self.guard.limits.max_header_bytes:
                self.refuse(self.guard.header_too_large, linger=True)

    def on_headers_complete(self) -> None:
        size = len(self.url)
        for name, value in self.headers:
            size += len(name) + len(value)
        if size > self.guard.limits.max_header_bytes:
            raise _HeadTooLarge
        self.head_since = None
        self.body_since = self.loop.time()
        self.disconnect = Disconnect(self.flow.resume_reading)
        extensions = self.scope.setdefault("extensions", {})
        extensions[DISCONNECT_EXTENSION] = {"signal": self.disconnect}
        super().on_headers_complete()  # the request's cycle, with this scope

    def on_message_complete(self) -> None:
        self.body_since = None
        self.head_bytes = -1
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The latest request's cycle, as self.disconnect is: like uvicorn's http.disconnect,
        # an earlier request still working while a pipelined one waits is not cut.
        cycle = self.cycle
        if cycle is not None and cycle.disconnected:  # as uvicorn: not after the response
            self.disconnect.connection_lost()

    def pause_writing(self) -> None:
        self.stalled_since = self.loop.time()
        super().pause_writing()

    def resume_writing(self) -> None:
        self.stalled_since = None
        super().resume_writing()

    def refuse(self, response: bytes, *, linger: bool = False) -> None:
        """Answer with a complete canned response and close (nothing was handed to the app).

        ``linger``: the client may still be sending (a head over the limit): closing with its
        bytes unread would make the kernel answer them with a reset, which can destroy the
        response before the client reads it. So, like nginx's lingering close, send the
        response and a FIN, then read and discard what still comes (``data_received`` drops
        it) until the client closes or :data:`LINGER_S` passes."""
        self.refused = True
        self.head_since = self.body_since = self.stalled_since = None
        self.transport.write(response)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def drop(self) -> None:
        """Cut the connection now, unsent data and all; the app sees a disconnect."""
        self.refused = True
        self.head_since = self.body_since = self.stalled_since = None
        self.transport.abort()
