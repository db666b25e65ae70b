"""Run ASGI apps on real sockets for end-to-end tests.

Each server runs uvicorn in its own thread with its own event loop, so tests can use the
synchronous OpenAI SDK (which would block a shared loop) as well as the async one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["ThreadedServer", "free_port", "serve_in_thread"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread; ``url`` once started."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        # TCP by name so that asyncio sets TCP_NODELAY (see aigw.serving.bind).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, **options
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"server:{self.port}")
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def start(self) -> ThreadedServer:
        self._thread.start()
        # uvicorn sets `started` once the lifespan ran and the socket is listening.
        for _ in range(1000):
            if self.server.started:
                return self
            if not self._thread.is_alive():
                self.sock.close()
                raise RuntimeError("server thread died during startup")
            self._thread.join(0.01)
        raise RuntimeError("server did not start within 10 s")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.sock.close()


@contextmanager
def serve_in_thread(app: Any, port: int | None = None, **options: Any) -> Iterator[ThreadedServer]:
    """``options`` go to ``uvicorn.Config`` (e.g. ``http=`` a protocol class)."""
    server = ThreadedServer(app, port, **options).start()
    try:
        yield server
    finally:
        server.stop()
