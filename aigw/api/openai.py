"""The OpenAI-compatible proxy endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings.

Each is a plain ASGI callable (see :mod:`aigw.api.asgi` for why). After the body is read, the
rest of the request runs under :func:`run_until_disconnect`, so a client that goes away
cancels the upstream request at once, whether it was waiting for a reply or streaming one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aigw.api.asgi import (
    ClientDisconnect,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    run_until_disconnect,
    send_error,
    send_json,
)
from aigw.api.validation import VALIDATORS, parse_body
from aigw.errors import GatewayError
from aigw.types import Endpoint, Principal, RequestMeta

if TYPE_CHECKING:
    from aigw.api.state import AppState

__all__ = ["ProxyEndpoint"]

log = logging.getLogger("aigw.api")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies in front of us not to buffer
]


class ProxyEndpoint:
    """ASGI app serving one OpenAI operation through the gateway."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._validate = VALIDATORS[endpoint]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState = scope["app"].state.aigw
        response_started = False
        settle: list[Callable[[], Awaitable[None]]] = []  # accounting left to do

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            response_started = True
            await send(message)

        try:
            meta = RequestMeta.from_scope(scope)
            principal = state.gateway.authenticate(meta)  # before reading a byte of the body
            if meta.invalid is not None:  # a malformed x-aigw-* header, said after the key
                raise meta.invalid
            raw = await read_body(scope, receive, state.config.server.max_body_bytes)
            body = parse_body(raw)
            self._validate(body)
            if body.get("stream"):
                work = self._stream(principal, body, meta, state, tracked_send)
            else:
                work = self._complete(principal, body, meta, state, tracked_send, settle)
            await run_until_disconnect(receive, work)
        except GatewayError as exc:
            if not response_started:
                await send_error(send, exc)
            else:
                log.warning("error after the response started: %s", exc.message)
        except ClientDisconnect:
            return  # gone while sending its body: nothing was started, nothing to answer
        finally:
            # After the disconnect watcher has stopped: a client that closes the connection
            # once it has its reply cannot cut the accounting short.
            for account in settle:
                await account()

    async def _complete(
        self,
        principal: Principal,
        body: dict[str, Any],
        meta: RequestMeta,
        state: AppState,
        send: Send,
        settle: list[Callable[[], Awaitable[None]]],
    ) -> None:
        reply = await state.gateway.complete(principal, self.endpoint, body, meta)
        settle.append(reply.account)
        await send_json(
            send,
            200,
            reply.body,
            [(b"x-aigw-deployment", reply.deployment.id.encode()), *reply.headers],
        )

    async def _stream(
        self,
        principal: Principal,
        body: dict[str, Any],
        meta: RequestMeta,
        state: AppState,
        send: Send,
    ) -> None:
        stream = await state.gateway.open_stream(principal, self.endpoint, body, meta)
        headers = [
            *_SSE_HEADERS,
            (b"x-aigw-deployment", stream.deployment.id.encode()),
            *stream.headers,
        ]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        except BaseException:
            await stream.close()
            raise

        async def send_chunk(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await stream.relay(send_chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
