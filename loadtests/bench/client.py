"""The open-loop load generator: streamed chat completions over raw keep-alive connections.

Each request is started at its planned time whether or not earlier ones finished (open
loop), on an idle keep-alive connection or a new one. Responses are parsed by httptools'
C parser in ``data_received`` callbacks: no task wakes up per streamed chunk, so the
generator's CPU per output token is a ``bytes.count`` and two attribute writes. This matters
because every output token is one SSE event through the gateway and this process.

Token accounting on the SSE stream (vLLM's shape, relayed by the gateway): the first event of a
choice is a role-only delta (the simulator sends it before prefill, so it says nothing about
TTFT), then one ``data: {...}`` event per token, then ``data: [DONE]``. So output tokens =
``data: {`` events - 1, the first token arrives with the second such event, and TTFT and time
per output token are measured here, on the client side, from those arrival times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

__all__ = ["HttpTarget", "Outcome", "StreamClient"]

_EVENT = b"data: {"
_ERROR = b'"error"'
_DEPLOYMENT = b"x-aigw-deployment"


@dataclass(frozen=True, slots=True)
class HttpTarget:
    host: str
    port: int
    path: str = "/v1/chat/completions"

    def head(self, length: int) -> bytes:
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        ).encode("latin-1")


class Outcome:
    """What the client saw of one request; times are event-loop seconds (wall clock)."""

    __slots__ = (
        "deployment",
        "done_at",
        "error",
        "events",
        "first_token_at",
        "index",
        "last_token_at",
        "sent_at",
        "status",
    )

    def __init__(self, index: int, sent_at: float) -> None:
        self.index = index
        self.sent_at = sent_at
        self.status = 0
        self.deployment: str | None = None
        self.events = 0  # "data: {" events seen (role chunk + tokens)
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.done_at: float | None = None
        self.error: str | None = None  # None: completed normally

    @property
    def tokens(self) -> int:
        return max(0, self.events - 1)

    @property
    def ok(self) -> bool:
        return self.error is None and self.done_at is not None


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, client: StreamClient) -> None:
        self._client = client
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._current: Outcome | None = None
        self._body_head = b""  # start of a non-200 body, for the error message
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self.closed = False

    # -- driving ----------------------------------------------------------------------------

    def send(self, outcome: Outcome, payload: bytes, deadlines: tuple[float, float]) -> None:
        """Send one request; ``deadlines`` = (first token, whole response), loop time."""
        assert self._transport is not None and self._current is None
        self._current = outcome
        self._body_head = b""
        self._deadline = deadlines[1]
        self._timer = self._client.loop.call_at(min(deadlines), self._timeout)
        self._transport.write(payload)

    def _finish(self, error: str | None, reusable: bool = False) -> None:
        outcome = self._current
        if outcome is None:
            return
        self._current = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        outcome.done_at = self._client.loop.time()
        outcome.error = error
        self._client.finished(outcome, self if reusable and not self.closed else None)

    def _timeout(self) -> None:
        self._timer = None
        outcome = self._current
        if outcome is None:
            return
        if outcome.first_token_at is not None and self._client.loop.time() < self._deadline:
            self._timer = self._client.loop.call_at(self._deadline, self._timeout)
            return
        self._finish("timeout" if outcome.first_token_at is not None else "first-token timeout")
        self._close()

    def cut(self) -> None:
        """End the run: whatever is in flight ends with error ``"cut"``; the socket closes."""
        self._finish("cut")
        self._close()

    def _close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()  # the gateway sees a disconnect and cancels upstream

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"protocol: {exc}")
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish("connection lost")
        self._client.forget(self)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._current is not None and name.lower() == _DEPLOYMENT:
            self._current.deployment = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._current is not None:
            self._current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        outcome = self._current
        if outcome is None:
            return
        if outcome.status != 200:
            if len(self._body_head) < 300:
                self._body_head += body
            return
        count = body.count(_EVENT)
        if count:
            if _ERROR in body:
                outcome.error = "stream error"
            now = self._client.loop.time()
            self._client.tokens += count - (outcome.events == 0)  # not the role chunk
            outcome.events += count
            if outcome.events >= 2:
                if outcome.first_token_at is None:
                    outcome.first_token_at = now
                outcome.last_token_at = now

    def on_message_complete(self) -> None:
        outcome = self._current
        if outcome is None:
            return
        keep = self._parser.should_keep_alive()
        if outcome.status != 200:
            text = self._body_head[:200].decode("utf-8", "replace")
            self._finish(f"HTTP {outcome.status}: {text}", keep)
        else:
            self._finish(outcome.error, keep)
        if not keep:
            self._close()


class StreamClient:
    """Sends requests to one target; calls ``on_done(outcome)`` as each one ends.

    ``start`` never blocks: it takes an idle connection or opens a new one. ``close`` aborts
    every connection (the gateway then cancels what was still in flight).
    """

    def __init__(self, target: HttpTarget, on_done: Callable[[Outcome], None]) -> None:
        self.target = target
        self.loop = asyncio.get_running_loop()
        self._on_done = on_done
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.tokens = 0  # output tokens received so far, all requests

    def start(self, index: int, body: bytes, first_token_timeout: float, timeout: float) -> Outcome:
        """Send ``body`` now; give up without a first token after ``first_token_timeout``
        seconds, or after ``timeout`` seconds in all."""
        outcome = Outcome(index, self.loop.time())
        payload = self.target.head(len(body)) + body
        deadline = (outcome.sent_at + first_token_timeout, outcome.sent_at + timeout)
        self.in_flight += 1
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                connection.send(outcome, payload, deadline)
                return outcome
        task = self.loop.create_task(self._connect_and_send(outcome, payload, deadline))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return outcome

    async def _connect_and_send(
        self, outcome: Outcome, payload: bytes, deadline: tuple[float, float]
    ) -> None:
        try:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), self.target.host, self.target.port
            )
        except (OSError, asyncio.CancelledError) as exc:
            cut = isinstance(exc, asyncio.CancelledError)
            outcome.error = "cut" if cut else f"connect: {exc}"
            outcome.done_at = self.loop.time()
            self.in_flight -= 1
            self._on_done(outcome)
            return
        self._all.add(connection)
        connection.send(outcome, payload, deadline)

    def finished(self, outcome: Outcome, reusable: _Connection | None) -> None:
        """Called by a connection when its request ended; ``reusable`` goes back to idle."""
        self.in_flight -= 1
        if reusable is not None:
            self._idle.append(reusable)
        self._on_done(outcome)

    def forget(self, connection: _Connection) -> None:
        self._all.discard(connection)

    def close(self) -> None:
        """Cut every request in flight (``on_done`` sees error ``"cut"``) and close sockets."""
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self._all):
            connection.cut()
        self._idle.clear()
        self._all.clear()
