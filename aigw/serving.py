"""Serving ASGI apps: the gateway's guarded HTTP protocol, and several apps in one event loop
(the demo, benchmarks)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

from aigw.config import ServerConfig
from aigw.connections import ConnectionGuard, ConnectionLimits

__all__ = ["EmbeddedServer", "bind", "gateway_protocol", "serve_together"]

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
