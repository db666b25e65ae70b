"""Minimal ASGI plumbing for the hot path: read a bounded body, send JSON, send errors.

The proxy endpoints are plain ASGI callables rather than Starlette request/response
functions: they pay for nothing they do not use, and they own streaming and disconnect
handling end to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import orjson

from aigw.connections import DISCONNECT_EXTENSION, Disconnect
from aigw.errors import GatewayError, PayloadTooLargeError

__all__ = [
    "ClientDisconnect",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "read_body",
    "run_until_disconnect",
    "send_error",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("aigw.api")
_JSON = (b"content-type", b"application/json")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, or PayloadTooLargeError as soon as it exceeds ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise _too_large(limit)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect while uploading
            raise ClientDisconnect("client disconnected while sending the body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ClientDisconnect(Exception):
    """The client went away before the request was read in full."""


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"Request body is larger than this gateway's limit of {limit} bytes.",
        code="request_too_large",
    )


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw = [_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_json(send, error.status, orjson.dumps(error.to_dict()), extra + (headers or []))


async def run_until_disconnect(
    scope: Scope, receive: Receive, work: Coroutine[Any, Any, None]
) -> bool:
    """Await ``work``; cancel it at once if the client disconnects. True if it was cancelled
    (or, the client being gone already, never started).

    ``work`` runs in the calling task (no extra task, no asyncio.wait on the hot path). Under
    the gateway's own protocol the connection cancels it (:class:`~aigw.connections.Disconnect`
    in the scope's extensions); under any other ASGI server one small watcher task waits for
    ``http.disconnect`` and cancels the caller. Only call after the request body has been
    read: from then on the next ASGI message can only be ``http.disconnect``.
    """
    task = asyncio.current_task()
    assert task is not None
    extensions = scope.get("extensions")
    offered = extensions.get(DISCONNECT_EXTENSION) if extensions else None
    if offered is None:
        return await _watching_receive(receive, work, task)
    return await _armed(offered["signal"], work, task)


async def _armed(
    disconnect: Disconnect, work: Coroutine[Any, Any, None], task: asyncio.Task[Any]
) -> bool:
    if disconnect.lost:  # gone while its body was read or checked: nothing to start
        work.close()
        return True
    disconnect.arm(task)
    try:
        await work
    except asyncio.CancelledError:
        if disconnect.cut:
            task.uncancel()
            return True
        raise
    finally:
        disconnect.disarm()
    return False


async def _watching_receive(
    receive: Receive, work: Coroutine[Any, Any, None], task: asyncio.Task[Any]
) -> bool:
    finished = False
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        if not finished:
            disconnected = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if disconnected:
            task.uncancel()
            return True
        raise
    finally:
        finished = True
        watcher.cancel()
    return False
