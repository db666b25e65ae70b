"""Pure ASGI middleware (Starlette's BaseHTTPMiddleware would buffer and break streaming)."""

from __future__ import annotations

import logging
import os

import orjson

from aigw.api.asgi import Message, Receive, Scope, Send
from aigw.errors import GatewayError

__all__ = ["EdgeMiddleware"]

log = logging.getLogger("aigw.api")
_HEADER = b"x-request-id"
_MAX_LEN = 128
_INTERNAL = orjson.dumps(
    GatewayError("The gateway hit an internal error.", code="internal_error").to_dict()
)


class EdgeMiddleware:
    """The contract every HTTP response obeys, whatever produced it.

    - It carries ``x-request-id``: the client's own (if sane) or a new one; handlers find it in
      ``scope["aigw.request_id"]``.
    - An unexpected exception becomes a logged 500 with OpenAI's error JSON, never a stack
      trace (or, if the response had started, the connection is closed by the server).
    """

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                if 0 < len(value) <= _MAX_LEN and value.isascii() and value.decode().isprintable():
                    request_id = value
                break
        if request_id is None:
            request_id = os.urandom(12).hex().encode()
        scope["aigw.request_id"] = request_id.decode()
        header = (_HEADER, request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)  # type: ignore[operator]
        except Exception:
            log.exception("unhandled error in request %s", scope["aigw.request_id"])
            if started:
                raise
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send_with_id({"type": "http.response.body", "body": _INTERNAL})
