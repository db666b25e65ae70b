"""One Redis connection shared by every concurrent script call of a process (pipelining).

Why not redis-py for these: the hot path calls two to four Lua scripts per proxied request
(rate limit, admission slot, its release, the TPM reconcile). Through redis-py's asyncio
client each call checks a connection out of the pool and back (a lock and a condition),
builds its command through several layers and reads the reply through a stream reader:
~80 CPU-us per call with 64 in flight on this machine, ~500 per request with every feature
on — three times the whole bare proxy. Here a call encodes its command, appends a future to
a FIFO and writes; replies, which Redis sends in the order the commands came, are parsed by
hiredis (redis-py's own C parser) and resolve the futures in order: ~23 CPU-us per call
(measured with 64 in flight, uvloop, this machine; the figures and the benchmark are in
docs/benchmarks.md, "Redis state").

Only ``EVALSHA``/``SCRIPT LOAD`` go through here; everything else (pub/sub, health pings,
reads for the dashboard) stays on redis-py. TLS (``rediss://``) stays on redis-py entirely:
:func:`multiplexer_for` returns None for it.

Failure semantics, as with redis-py: a call that does not get its reply within
``state.timeout_s``, or whose connection breaks, fails (the caller raises
``StateUnavailableError``). One timer per connection, not one per call, watches the oldest
call waiting (replies come in order: when it is late, Redis is not answering); it then closes
the connection, every call still waiting on it fails at once (Redis is treated as down, as
the resilient wrappers do), and the next call connects again.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["Multiplexer", "encode_command", "multiplexer_for"]

Arg = str | int | float | bytes
_INCOMPLETE = object()  # what hiredis returns while a reply is not complete


def encode_command(args: Sequence[Arg]) -> bytes:
    """A command in RESP (an array of bulk strings), as redis-py encodes it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def multiplexer_for(
    connection_class: type, kwargs: Mapping[str, Any], timeout_s: float
) -> Multiplexer | None:
    """A multiplexer for a redis-py pool's connections (its class and keyword arguments),
    or None where this module does not speak the transport (TLS)."""
    if connection_class is UnixDomainSocketConnection:
        address: tuple[str, ...] = (kwargs["path"],)
    elif connection_class is Connection:
        address = (kwargs.get("host", "localhost"), str(kwargs.get("port", 6379)))
    else:
        return None
    return Multiplexer(
        address,
        timeout_s,
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        db=int(kwargs.get("db") or 0),
    )


class Multiplexer:
    """Sends commands on one connection, many in flight; connects on first use and again
    after a failure."""

    def __init__(
        self,
        address: tuple[str, ...],
        timeout_s: float,
        *,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
    ) -> None:
        """``address``: (host, port) or (unix socket path,)."""
        self._address = address
        self._timeout_s = timeout_s
        self._hello: list[bytes] = []  # sent first on every new connection
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._hello.append(encode_command(auth))
        if db:
            self._hello.append(encode_command(("SELECT", db)))
        self._protocol: _Replies | None = None
        self._connecting: asyncio.Task[_Replies] | None = None

    async def call(self, command: bytes) -> Any:
        """Send one encoded command and wait for its reply, at most ``timeout_s`` (plus as
        long again to connect first). Raises ``TimeoutError``, ``ConnectionError`` or
        ``OSError`` (no connection, no answer), ``ResponseError`` (Redis answered with an
        error)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.send(command)

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connect(self) -> _Replies:
        # One connection attempt at a time; the calls that arrive meanwhile wait for it.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self) -> _Replies:
        loop = asyncio.get_running_loop()

        def replies() -> _Replies:
            return _Replies(self._timeout_s)

        async with asyncio.timeout(self._timeout_s):
            if len(self._address) == 1:
                _, protocol = await loop.create_unix_connection(replies, self._address[0])
            else:
                host, port = self._address
                _, protocol = await loop.create_connection(replies, host, int(port))
            try:
                for hello in self._hello:
                    await protocol.send(hello)  # AUTH, SELECT: an error reply raises
            except BaseException:
                protocol.close()
                raise
        self._protocol = protocol
        return protocol


class _Replies(asyncio.Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(encoding="utf-8", notEnoughData=_INCOMPLETE)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._deadlines: collections.deque[float] = collections.deque()  # one per waiting
        self._watch: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._unsent: list[bytes] = []  # written together at the end of this loop iteration
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.closed or self._transport is None:
            raise ConnectionError("redis connection closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = loop.time() + self._timeout_s
        self._waiting.append(future)
        self._deadlines.append(deadline)
        if self._watch is None:
            self._watch = loop.call_at(deadline, self._check)
        if not self._unsent:
            loop.call_soon(self._flush)
        self._unsent.append(command)
        return future

    def _check(self) -> None:
        """The watchdog: fail everything when the oldest call is past its deadline."""
        self._watch = None
        if not self._deadlines:
            return
        oldest = self._deadlines[0]
        loop = asyncio.get_running_loop()
        if loop.time() >= oldest:
            self._fail(TimeoutError("redis did not answer in time"))
        else:
            self._watch = loop.call_at(oldest, self._check)

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is _INCOMPLETE:
                return
            if not waiting:  # a reply nobody asked for: the stream cannot be trusted
                self._fail(ConnectionError("redis sent an unexpected reply"))
                return
            future = waiting.popleft()
            self._deadlines.popleft()
            if future.done():  # its caller gave up (timeout, cancelled)
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error = NoScriptError if message.startswith("NOSCRIPT") else ResponseError
                future.set_exception(error(message))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def close(self) -> None:
        self._fail(ConnectionError("redis connection closed"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._deadlines.clear()
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.close()
