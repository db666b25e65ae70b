"""Plumbing for the raw-ASGI fake upstreams some tests write (they need control Starlette hides)."""

from __future__ import annotations

from typing import Any

__all__ = ["lifespan", "request_body"]


async def lifespan(receive: Any, send: Any) -> None:
    """Answer uvicorn's lifespan protocol until shutdown."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def request_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
