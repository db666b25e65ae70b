"""The few raw-ASGI moves the simulator's API endpoints need.

The generation endpoints are plain ASGI callables (not Starlette request/response functions)
because they own the connection end to end: they stream without buffering, watch the receive
channel for ``http.disconnect`` (uvicorn speaks ASGI HTTP 2.3, where a disconnected client
is only reported there and ``send`` silently drops data), and can drop the connection abruptly
by returning before the response is complete (uvicorn then closes the transport).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

__all__ = ["Receive", "Scope", "Send", "read_body", "send_json", "wait_disconnect"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected while sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone (call only once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_json(
    send: Send, status: int, payload: Any, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
