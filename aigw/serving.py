"""Serving ASGI apps: the gateway's guarded HTTP protocol and its graceful lifecycle (drain on
SIGTERM, reload on SIGHUP), and several apps in one event loop (the demo, benchmarks)."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

from aigw.config import ServerConfig
from aigw.connections import ConnectionGuard, ConnectionLimits

__all__ = [
    "SHUTDOWN_CUT",
    "EmbeddedServer",
    "GatewayServer",
    "Lifecycle",
    "bind",
    "gateway_protocol",
    "serve_together",
    "settle_heap",
]

log = logging.getLogger("aigw")

# The cancel message of a request cut at the drain deadline (the API layer answers it).
SHUTDOWN_CUT = "aigw: drain deadline passed"
# Seconds uvicorn waits after our cut before it cancels what is left (its last resort).
_CUT_GRACE_S = 5.0

# (app, listening socket) or (app, socket, uvicorn.Config options for that server alone)
ServedApp = tuple[Any, socket.socket] | tuple[Any, socket.socket, Mapping[str, Any]]


def gateway_protocol(server: ServerConfig) -> type[asyncio.Protocol]:
    """The HTTP protocol for one gateway server: httptools with the config's connection limits."""
    limits = ConnectionLimits(
        max_connections=server.max_connections,
        max_header_bytes=server.max_header_bytes,
        header_timeout_s=server.header_timeout_s,
        body_timeout_s=server.body_timeout_s,
        send_timeout_s=server.send_timeout_s,
    )
    return ConnectionGuard(limits).protocol_class()


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free one (read it with getsockname)."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for sockets
    # that say they are TCP; without it every kept-alive response waits ~40 ms for a delayed
    # ACK (Nagle). Accepted sockets inherit the option from the listening one on Linux too.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class Lifecycle:
    """Where a serving process is in its life, shared by the server and the app.

    The server (signals) sets ``draining`` and calls :meth:`cut`; the app reads ``draining``
    (``/readyz``), registers each proxied request's task while it works (:meth:`track`), and
    sets ``reload`` in its lifespan (SIGHUP calls it). Everything runs on the event loop.
    ``supervisor``: the supervisor's pid when this process is one of several workers
    (:mod:`aigw.workers`), else None.
    """

    def __init__(self, supervisor: int | None = None) -> None:
        self.supervisor = supervisor
        self.draining = False
        self.reload: Callable[[], Awaitable[None]] | None = None
        self._working: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self._reloads: set[asyncio.Future[None]] = set()  # a reference keeps each running

    def track(self, task: asyncio.Task[object]) -> None:
        self._working.add(task)

    def untrack(self, task: asyncio.Task[object]) -> None:
        self._working.discard(task)

    def was_cut(self, task: asyncio.Task[object]) -> bool:
        """Whether ``task``'s cancellation came from :meth:`cut` (not a client leaving)."""
        return task in self._cut

    def cut(self) -> int:
        """Cancel every request still working, with :data:`SHUTDOWN_CUT`; how many."""
        tasks = list(self._working)
        self._working.clear()
        for task in tasks:
            self._cut.add(task)
            task.cancel(SHUTDOWN_CUT)
        if tasks:
            log.warning("drain deadline passed: ending %d request(s) with an error", len(tasks))
        return len(tasks)

    def request_reload(self) -> None:
        """SIGHUP: run ``reload`` in the background (it logs its own outcome)."""
        if self.reload is None:
            log.warning("SIGHUP: this server has no config file to reload")
            return
        task = asyncio.ensure_future(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)


def settle_heap() -> None:
    """Once serving, end what ``aigw serve`` began by turning the cyclic garbage collector off
    for its start-up: move everything alive now out of the collector's reach, turn it on.

    Start-up creates tens of thousands of objects (modules, classes, pydantic schemas, the
    app) that live as long as the process; the collector ran ~140 times over them during the
    imports alone, ~40 ms of a ~600 ms start.

    Frozen objects are never traversed again, so a full collection while serving walks only
    what requests allocated since, not the whole start-up heap (a shorter pause on the event
    loop). Nothing is collected first: what start-up leaves unreachable stays (measured in
    docs/benchmarks.md, "Start-up and idle memory"). A no-op where the collector is on.
    """
    if gc.isenabled():
        return
    gc.freeze()
    gc.enable()


class GatewayServer(uvicorn.Server):
    """uvicorn for ``aigw serve``: a drain on SIGTERM/SIGINT that ends in exit status 0.

    The order: ``/readyz`` answers 503 ``draining`` at once (load balancers stop sending);
    after ``shutdown_delay_s`` the listener closes (uvicorn's shutdown: idle keep-alive
    connections close, busy ones close after their response); requests and streams still
    running ``drain_s`` later are cut (:meth:`Lifecycle.cut`: a stream ends with an error
    event, a request not yet answered gets a 503). A second signal skips the waiting.
    SIGHUP reloads the config. uvicorn's own handlers re-raise the signal once served (the
    process then dies by it); these do not.
    """

    def __init__(
        self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float, delay_s: float
    ) -> None:
        # uvicorn's own deadline is the last resort, after ours.
        config.timeout_graceful_shutdown = math.ceil(drain_s + _CUT_GRACE_S)
        super().__init__(config)
        self.lifecycle = lifecycle
        self._drain_s = drain_s
        self._delay_s = delay_s

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.lifecycle.request_reload)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self.lifecycle.draining:  # the second signal: stop waiting
            log.warning("%s again: closing now", sig.name)
            self.should_exit = True
            self.lifecycle.cut()
            return
        self.lifecycle.draining = True
        log.info(
            "%s: draining (readyz 503 now; listener closes in %gs; requests get %gs more)",
            sig.name,
            self._delay_s,
            self._drain_s,
        )
        asyncio.get_running_loop().call_later(self._delay_s, self._stop_listening)

    def _stop_listening(self) -> None:
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.lifecycle.draining = True  # also when stopped by other means
        cutter = asyncio.get_running_loop().call_later(self._drain_s, self.lifecycle.cut)
        try:
            await super().shutdown(sockets)
        finally:
            cutter.cancel()


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner.

    uvicorn installs its own SIGINT/SIGTERM handlers per server; with several servers in one
    loop only the last would stop. The owner stops them all instead.
    """

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_together(
    apps: Sequence[ServedApp],
    on_started: Callable[[], None] | None = None,
    **config: Any,
) -> None:
    """Serve every (app, socket) until SIGINT/SIGTERM, then shut all down gracefully.

    ``on_started`` runs once every server has finished its startup (lifespans included).
    """
    servers = [
        EmbeddedServer(
            uvicorn.Config(
                app[0], log_level="warning", access_log=False, **{**config, **_own_options(app)}
            )
        )
        for app in apps
    ]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)

    async def announce() -> None:
        # uvicorn exposes startup only as a flag; a CLI banner can afford to poll it.
        while not all(s.started for s in servers):
            if any(s.should_exit for s in servers):
                return
            await asyncio.sleep(0.02)
        if on_started is not None:
            on_started()

    announcer = asyncio.ensure_future(announce())
    try:
        await asyncio.gather(
            *(s.serve(sockets=[app[1]]) for s, app in zip(servers, apps, strict=True))
        )
    finally:
        announcer.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _own_options(app: ServedApp) -> Mapping[str, Any]:
    return app[2] if len(app) == 3 else {}
