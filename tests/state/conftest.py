"""Both implementations behind one fixture, and throwaway redis-servers on free ports.

The contract tests take ``backend`` (memory, then redis); tests that need Redis alone take
``redis_server`` (one per session) or ``own_redis`` (one per test, to stop or kill).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from aigw.config import StateConfig
from aigw.state.base import AdmissionQueue, Pool, RateLimiter, Ticket
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from aigw.state.redis import RedisAdmissionQueue, RedisRateLimiter
from aigw.state.scripts import connect


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server of our own on 127.0.0.1 (never 6379), killed by its PID."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a stopped process dies all the same
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


def state_config(url: str, **extra: Any) -> StateConfig:
    """Redis settings with a key prefix of this test's own."""
    settings: dict[str, Any] = {
        "backend": "redis",
        "url": url,
        "timeout_s": 0.5,
        "lease_ttl_s": 1.0,
        "key_prefix": f"t-{uuid.uuid4().hex[:8]}:",
        **extra,
    }
    return StateConfig(**settings)


class Backend:
    """One implementation: its rate limiter, and admission queues (Redis: one per instance,
    all on the same Redis, as if each were another gateway process)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.limiter: RateLimiter
        self._make_admission: Callable[[], Any]
        self._closers: list[Callable[[], Any]] = []

    async def admission(self) -> AdmissionQueue:
        queue: AdmissionQueue = await self._make_admission()
        return queue

    async def aclose(self) -> None:
        for close in reversed(self._closers):
            await close()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    built = Backend(request.param)
    if request.param == "memory":
        clock = asyncio.get_running_loop().time
        built.limiter = MemoryRateLimiter(clock)
        shared = MemoryAdmissionQueue(clock)  # one process: every "instance" is the same

        async def memory_admission() -> AdmissionQueue:
            return shared

        built._make_admission = memory_admission
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        config = state_config(server.url)
        client = connect(config)
        built._closers.append(client.aclose)
        built.limiter = RedisRateLimiter(client, config)

        async def redis_admission() -> AdmissionQueue:
            queue = RedisAdmissionQueue(client, config, uuid.uuid4().hex[:8])
            await queue.start()
            built._closers.append(queue.close)
            return queue

        built._make_admission = redis_admission
    yield built
    await built.aclose()


def ticket(
    id: str = "r",
    *,
    queue: str = "m",
    tenant: str = "team-a",
    priority: int = 0,
    timeout_s: float = 5.0,
    max_queue: int = 100,
    tenant_pool: Pool | None = None,
) -> Ticket:
    return Ticket(id, queue, tenant, priority, timeout_s, max_queue, tenant_pool)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` to hold (it changes as another task or process moves on)."""
    # Polling: the state lives in another process (Redis) as often as in this one.
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
