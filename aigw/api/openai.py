"""The OpenAI-compatible proxy endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings.

Each is a plain ASGI callable (see :mod:`aigw.api.asgi` for why). After the body is read, the
rest of the request runs under :func:`run_until_disconnect`, so a client that goes away
cancels the upstream request at once, whether it was waiting for a reply or streaming one.

A request still working when a shutdown's drain deadline passes is cancelled the same way,
by :meth:`~aigw.serving.Lifecycle.cut` (no per-chunk check on the hot path); it then gets a
503 ``gateway_shutting_down``, or, if its stream had started, that error as a last SSE event
and a clean end of the response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

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
from aigw.errors import GatewayError, ServiceUnavailableError
from aigw.serving import SHUTDOWN_CUT
from aigw.telemetry.records import CLIENT_CLOSED, RequestRecord
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
        loop = asyncio.get_running_loop()
        record = RequestRecord(self.endpoint.value, loop.time())
        if state.tracing is not None:
            state.tracing.start_request(record, scope["headers"])
        response_started = False
        settle: list[Callable[[], Awaitable[None]]] = []  # accounting left to do

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            response_started = True
            await send(message)

        task = asyncio.current_task()
        assert task is not None
        lifecycle = state.lifecycle
        lifecycle.track(task)
        try:
            meta = RequestMeta.from_scope(scope)
            record.request_id = meta.request_id
            principal = state.gateway.authenticate(meta)  # before reading a byte of the body
            record.key = principal.name
            if meta.invalid is not None:  # a malformed x-aigw-* header, said after the key
                raise meta.invalid
            raw = await read_body(scope, receive, state.config.server.max_body_bytes)
            body = parse_body(raw)
            self._validate(body)
            if body["model"] in state.gateway.router.models:  # never a client-chosen label
                record.model = body["model"]
            if body.get("stream"):
                record.stream = True
                work = self._stream(principal, body, meta, state, tracked_send, record)
            else:
                work = self._complete(principal, body, meta, state, tracked_send, settle, record)
            if await run_until_disconnect(scope, receive, work):
                record.status = CLIENT_CLOSED if not response_started else record.status
        except GatewayError as exc:
            record.error_code = exc.code
            if not response_started:
                record.status = exc.status
                record.limit = (exc.limit or exc.code) if exc.status == 429 else None
                await send_error(send, exc)
            else:
                log.warning("error after the response started: %s", exc.message)
        except ClientDisconnect:
            record.status = CLIENT_CLOSED  # gone while sending its body: nothing to answer
        except asyncio.CancelledError:
            if not lifecycle.was_cut(task):
                raise
            task.uncancel()
            await _shutting_down(send, record, response_started)
        finally:
            lifecycle.untrack(task)
            # After the disconnect watcher has stopped: a client that closes the connection
            # once it has its reply cannot cut the accounting short.
            for account in settle:
                await account()
            record.finished_at = loop.time()
            state.requests.on_request(record)

    async def _complete(
        self,
        principal: Principal,
        body: dict[str, Any],
        meta: RequestMeta,
        state: AppState,
        send: Send,
        settle: list[Callable[[], Awaitable[None]]],
        record: RequestRecord,
    ) -> None:
        reply = await state.gateway.complete(principal, self.endpoint, body, meta)
        record.attempt = reply.attempt
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
        record: RequestRecord,
    ) -> None:
        stream = await state.gateway.open_stream(principal, self.endpoint, body, meta)
        record.attempt = stream.attempt
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

        try:
            record.error_code = await stream.relay(send_chunk)
        finally:
            # A continuation (stream_resume) replaced the attempt: the record keeps the last.
            record.attempt = stream.attempt
            record.resumes = stream.resumes
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _shutting_down(send: Send, record: RequestRecord, response_started: bool) -> None:
    """Answer a request cut at the drain deadline: a 503, or (a stream that had started) the
    error as the last event and a clean end of the chunked body. No ``[DONE]`` follows, as
    after any error event: clients (the OpenAI SDKs) raise on the event itself."""
    error = ServiceUnavailableError(
        "The gateway is shutting down; retry on another instance.",
        code="gateway_shutting_down",
    )
    record.error_code = error.code
    if not response_started:
        record.status = error.status
        await send_error(send, error)
    elif record.stream:
        event = b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:  # a JSON reply half sent: nothing sound to add; the connection closes
        raise asyncio.CancelledError(SHUTDOWN_CUT)
