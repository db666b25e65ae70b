"""Run several ASGI apps in one process and one event loop (the demo, benchmarks)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["EmbeddedServer", "bind", "serve_together"]


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free one (read it with getsockname)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
    apps: Sequence[tuple[Any, socket.socket]],
    on_started: Callable[[], None] | None = None,
    **config: Any,
) -> None:
    """Serve every (app, socket) until SIGINT/SIGTERM, then shut all down gracefully.

    ``on_started`` runs once every server has finished its startup (lifespans included).
    """
    servers = [
        EmbeddedServer(uvicorn.Config(app, log_level="warning", access_log=False, **config))
        for app, _ in apps
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
            *(s.serve(sockets=[sock]) for s, (_, sock) in zip(servers, apps, strict=True))
        )
    finally:
        announcer.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
