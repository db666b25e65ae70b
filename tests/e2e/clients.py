"""What the end-to-end tests send, and what they measure about each request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import UPSTREAM_MODEL
from tests.servers import serve_in_thread

__all__ = [
    "HELLO",
    "MODEL",
    "ConcurrencyProbe",
    "Result",
    "chat",
    "config",
    "deployment",
    "gather_bounded",
    "probed_backend",
    "until",
]

MODEL = "e2e-model"
HELLO: list[dict[str, str]] = [{"role": "user", "content": "Hello there"}]

Scope = dict[str, Any]


@dataclass(slots=True)
class Result:
    """One request's outcome and timing (monotonic seconds)."""

    status: int
    headers: httpx.Headers
    body: dict[str, Any]
    started: float
    ended: float
    gateway: str = ""
    tag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


async def chat(
    client: httpx.AsyncClient,
    gateway_url: str,
    key: str,
    *,
    tag: str = "",
    **body: Any,
) -> Result:
    """POST /v1/chat/completions (not streamed); a transport error becomes status 0."""
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **body}
    started = time.monotonic()
    try:
        response = await client.post(
            f"{gateway_url}/v1/chat/completions",
            json=payload,
            headers={"authorization": f"Bearer {key}"},
        )
    except httpx.TransportError as exc:
        return Result(
            0,
            httpx.Headers(),
            {"error": {"code": repr(exc)}},
            started,
            time.monotonic(),
            gateway_url,
            tag,
        )
    ended = time.monotonic()
    try:
        data = response.json()
    except ValueError:
        data = {"raw": response.text}
    return Result(response.status_code, response.headers, data, started, ended, gateway_url, tag)


def deployment(backend_url: str, id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "provider": "openai",
        "base_url": f"{backend_url}/v1",
        "model": UPSTREAM_MODEL,
        **extra,
    }


def config(
    redis_url: str,
    backend_url: str,
    keys: list[dict[str, Any]],
    *,
    state: dict[str, Any] | None = None,
    dep: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A gateway config: one model on one simulated deployment, state in Redis."""
    model: dict[str, Any] = {
        "name": MODEL,
        "deployments": [deployment(backend_url, "sim-a", **(dep or {}))],
    }
    if queue is not None:
        model["queue"] = queue
    return {
        "state": {"backend": "redis", "url": redis_url, **(state or {})},
        "models": [model],
        "auth": {"keys": keys},
        "tokens": {"offline": True},
        # No metrics_url: routing needs no scrape; a killed instance must not linger.
        "server": {"drain_seconds": 0},
    }


class ConcurrencyProbe:
    """Pure ASGI middleware: how many inference requests the upstream serves at once.

    The wrapped app runs on one event loop (its own thread), so plain integers suffice; the
    test thread only reads them. ``max`` is the most ever in flight together.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now = 0
        self.max = 0
        self.total = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        self.now += 1
        self.total += 1
        self.max = max(self.max, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


def probed_backend(**settings: Any) -> tuple[Any, ConcurrencyProbe]:
    """A simulated backend app wrapped in a probe; serve it with ``serve_in_thread``."""
    from aigw.sim.server import BackendSettings
    from aigw.sim.server import create_app as create_backend

    settings.setdefault("model", UPSTREAM_MODEL)
    probe = ConcurrencyProbe(create_backend(BackendSettings(**settings)))
    return serve_in_thread(probe), probe


async def gather_bounded(coros: list[Any], limit: int) -> list[Any]:
    """Run the coroutines with at most ``limit`` in flight; results in the given order."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def until(predicate: Any, deadline_s: float, what: str, interval_s: float = 0.02) -> float:
    """Poll ``predicate`` (sync or async) until true; the seconds it took, or fail naming what."""
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)
