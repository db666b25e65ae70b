"""A transport without sockets, for fast tests of the pipeline (failover, leases, accounting).

``MockTransport(handler)`` calls ``handler(deployment, request)`` for every upstream request;
the handler returns a :class:`FakeResponse` (or raises ``ConnectionError``/``TimeoutError``,
which the transport's ``errors`` translates like the real one does). Everything sent is kept
in ``sent``; every response remembers whether it was released or closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from aigw.fleet.deployment import Deployment
from aigw.types import UpstreamRequest
from aigw.upstream import transport_errors

__all__ = ["FakeResponse", "MockTransport", "chat_reply", "sse"]


class _Body:
    def __init__(self, chunks: Iterable[bytes] | AsyncIterator[bytes]) -> None:
        self._sync = iter(chunks) if not hasattr(chunks, "__anext__") else None
        self._async = chunks if self._sync is None else None

    async def readany(self) -> bytes:
        if self._sync is not None:
            return next(self._sync, b"")
        assert self._async is not None
        try:
            return await self._async.__anext__()  # type: ignore[union-attr]
        except StopAsyncIteration:
            return b""


class FakeResponse:
    def __init__(
        self,
        status: int = 200,
        chunks: Iterable[bytes] | AsyncIterator[bytes] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.content = _Body(chunks)
        self.headers = CIMultiDictProxy(CIMultiDict(headers or {}))  # like aiohttp's
        self.released = False
        self.closed = False

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.content.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


Handler = Callable[[Deployment, UpstreamRequest], Awaitable[FakeResponse] | FakeResponse]


class MockTransport:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.responses: list[FakeResponse] = []

    async def post(
        self, deployment: Deployment, request: UpstreamRequest, request_id: str | None
    ) -> FakeResponse:
        self.sent.append((deployment.id, orjson.loads(request.body)))
        result = self._handler(deployment, request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, FakeResponse)
        self.responses.append(result)
        return result

    def errors(self, deployment: Deployment, phase: str) -> AbstractContextManager[None]:
        return transport_errors(deployment, phase)


def chat_reply(text: str = "hi", prompt_tokens: int = 10, completion_tokens: int = 2) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    """SSE chunks, one per event; a str event is sent as is (e.g. "[DONE]")."""
    return [
        b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n"
        for e in events
    ]
