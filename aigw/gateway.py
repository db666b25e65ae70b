"""How a request travels: route, send, fail over, relay. Read this file to follow one request.

``Gateway.complete`` serves a non-streamed request and ``Gateway.open_stream`` a streamed one.
Both build the request's routing context once, then walk the model's deployments, then its
fallbacks' deployments, until one answers; a failure counts against a deployment and moves on
only while nothing has reached the client (for streams: until the first translated byte
exists). Afterwards ``UpstreamStream.relay`` forwards the rest chunk by chunk and reports a
broken upstream as an in-stream error event. Every outcome feeds the deployment's signals
(latency EWMAs, error rate, outlier detection) that the routing policies read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from aigw.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamConnectionError,
    UpstreamStatusError,
)
from aigw.fleet.deployment import Deployment
from aigw.providers import StreamTranslator
from aigw.routing.context import ContextBuilder
from aigw.routing.router import Router
from aigw.types import Endpoint, RequestMeta, RouteContext
from aigw.upstream import UpstreamPool, transport_errors

__all__ = ["Gateway", "Reply", "UpstreamStream"]

log = logging.getLogger("aigw.gateway")
T = TypeVar("T")
Send = Callable[[bytes], Awaitable[None]]
_NO_META = RequestMeta()


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete, OpenAI-shaped JSON reply and the deployment that produced it."""

    deployment: Deployment
    body: bytes


class Gateway:
    def __init__(
        self, router: Router, pool: UpstreamPool, contexts: ContextBuilder, max_attempts: int
    ) -> None:
        self.router = router
        self._pool = pool
        self._contexts = contexts
        self._max_attempts = max_attempts

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], meta: RequestMeta = _NO_META
    ) -> Reply:
        ctx = await self._context(endpoint, body, meta)
        deployment, reply = await self._with_failover(ctx, self._exchange)
        self._release(deployment)
        return reply

    async def open_stream(
        self, endpoint: Endpoint, body: dict[str, Any], meta: RequestMeta = _NO_META
    ) -> UpstreamStream:
        """Connect and wait for the first output bytes; the caller must ``relay`` the result."""
        ctx = await self._context(endpoint, body, meta)
        _, stream = await self._with_failover(ctx, self._open_stream)
        return stream

    async def _context(
        self, endpoint: Endpoint, body: dict[str, Any], meta: RequestMeta
    ) -> RouteContext:
        model = body["model"]
        route = self.router.models.get(model)
        if route is None:
            raise NotFoundError(
                f"The model `{model}` does not exist or is not served by this gateway.",
                param="model",
                code="model_not_found",
            )
        if not route.supports(endpoint):
            raise InvalidRequestError(
                f"The model `{model}` does not support /v1/{endpoint.value}.",
                param="model",
                code="unsupported_endpoint",
            )
        now = asyncio.get_running_loop().time()
        return await self._contexts.build(
            endpoint, body, meta, now, route.smallest_context_window, route.adapter
        )

    async def _with_failover(
        self,
        ctx: RouteContext,
        attempt: Callable[[Deployment, RouteContext], Awaitable[T]],
    ) -> tuple[Deployment, T]:
        """Try deployments until one succeeds; its in-flight slot stays held for the caller."""
        failures: list[tuple[str, GatewayError]] = []
        loop = asyncio.get_running_loop()
        for route in self.router.chain(ctx.model):
            tried: set[str] = set()
            for _ in range(self._max_attempts):
                deployment = self.router.pick(route, ctx, tried)
                if deployment is None:
                    break
                tried.add(deployment.id)
                self.router.record_dispatch(deployment, ctx)
                state = deployment.state
                try:
                    result = await attempt(deployment, ctx)
                except GatewayError as exc:
                    state.in_flight -= 1
                    if not exc.retryable:
                        # The request's own fault (e.g. context too long): the upstream is fine.
                        self.router.health.record_success(state)
                        raise
                    if not (isinstance(exc, UpstreamStatusError) and exc.status == 429):
                        self.router.health.record_failure(state, exc.message, loop.time())
                    log.warning("deployment %s failed: %s", deployment.id, exc.message)
                    failures.append((deployment.id, exc))
                    continue
                except BaseException:
                    state.in_flight -= 1
                    raise
                self.router.health.record_success(state)
                return deployment, result
        raise _exhausted(ctx.model, failures)

    def _release(self, deployment: Deployment) -> None:
        deployment.state.in_flight -= 1

    async def _exchange(self, deployment: Deployment, ctx: RouteContext) -> Reply:
        provider = deployment.provider
        upstream = provider.build_request(ctx.endpoint, ctx.body)
        session = self._pool.session(deployment)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with transport_errors(deployment, "waiting for the reply"):
            async with session.post(
                upstream.url,
                data=upstream.body,
                headers=_with_request_id(upstream.headers, ctx.request_id),
                timeout=deployment.timeout,
            ) as response:
                status = response.status
                data = await response.read()
        if status >= 400:
            raise provider.parse_error(status, data)
        now = loop.time()
        deployment.state.latency.add(now - started, now)
        return Reply(deployment, provider.parse_response(ctx.endpoint, status, data))

    async def _open_stream(self, deployment: Deployment, ctx: RouteContext) -> UpstreamStream:
        provider = deployment.provider
        upstream = provider.build_request(ctx.endpoint, ctx.body)
        translator = provider.stream_translator(ctx.endpoint, ctx.body)
        session = self._pool.session(deployment)
        loop = asyncio.get_running_loop()
        started = loop.time()
        queued = _engine_queue(deployment)
        with transport_errors(deployment, "waiting for the first byte"):
            async with asyncio.timeout(deployment.config.timeouts.first_byte):
                response = await session.post(
                    upstream.url,
                    data=upstream.body,
                    headers=_with_request_id(upstream.headers, ctx.request_id),
                    timeout=deployment.timeout,
                )
                try:
                    if response.status >= 400:
                        raise provider.parse_error(response.status, await response.read())
                    first = await _first_output(response, translator, deployment)
                except BaseException:
                    response.close()
                    raise
        now = loop.time()
        state = deployment.state
        state.observe_first_byte(now - started, now)
        if not queued and ctx.prompt_tokens > 0:
            state.prefill_per_token.add((now - started) / ctx.prompt_tokens)
        return UpstreamStream(self, deployment, response, translator, first, now)


def _with_request_id(headers: Mapping[str, str], request_id: str | None) -> Mapping[str, str]:
    """The provider's fixed headers plus this request's id (vLLM and most proxies log it)."""
    if request_id is None:
        return headers
    return {**headers, "x-request-id": request_id}


def _engine_queue(deployment: Deployment) -> bool:
    """Whether the engine had a queue when this request was sent (then TTFT is not prefill)."""
    engine = deployment.state.engine
    if engine is None or deployment.state.engine_stale:
        return deployment.state.in_flight > 1
    return engine.waiting + max(0, deployment.state.in_flight - engine.in_flight_at_scrape) > 1


async def _first_output(
    response: aiohttp.ClientResponse, translator: StreamTranslator, deployment: Deployment
) -> bytes:
    while True:
        chunk: bytes = await response.content.readany()
        if not chunk:
            tail: bytes = translator.finish()
            if tail:
                return tail
            raise UpstreamConnectionError(
                f"deployment {deployment.id} closed the stream before sending any data",
                code="upstream_error",
            )
        out: bytes = translator.feed(chunk)
        if out:
            return out


class UpstreamStream:
    """An upstream stream whose first output is ready; ``relay`` sends it all to the client."""

    def __init__(
        self,
        gateway: Gateway,
        deployment: Deployment,
        response: aiohttp.ClientResponse,
        translator: StreamTranslator,
        first: bytes,
        first_at: float,
    ) -> None:
        self.deployment = deployment
        self._gateway = gateway
        self._response = response
        self._translator = translator
        self._first = first
        self._first_at = first_at

    async def relay(self, send: Send) -> None:
        """Send every chunk as it arrives; end with an error event if the upstream breaks.

        Always releases the upstream connection and the in-flight slot, also when cancelled
        (client disconnect): closing the response aborts the upstream request at once.
        Time per output token is estimated from the SSE events relayed (one per token for
        OpenAI-style streams, a handful of framing events aside).
        """
        deployment = self.deployment
        idle = deployment.config.timeouts.idle
        loop = asyncio.get_running_loop()
        content = self._response.content
        translator = self._translator
        finished = False
        events = self._first.count(b"data:")
        last_at = self._first_at
        try:
            await send(self._first)
            try:
                with transport_errors(deployment, "streaming"):
                    async with asyncio.timeout(None) as deadline:
                        while True:
                            deadline.reschedule(loop.time() + idle)
                            chunk = await content.readany()
                            if not chunk:
                                break
                            out = translator.feed(chunk)
                            if out:
                                events += out.count(b"data:")
                                last_at = loop.time()
                                await send(out)
                    tail = translator.finish()
                    if tail:
                        await send(tail)
                    finished = True
            except GatewayError as exc:
                if exc.retryable:
                    self._gateway.router.health.record_failure(
                        deployment.state, exc.message, loop.time()
                    )
                log.warning("stream from %s broke: %s", deployment.id, exc.message)
                await send(b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n")
        finally:
            # A finished response goes back to the keep-alive pool; anything else (client
            # gone, upstream broken) closes the connection, which aborts the upstream request.
            if finished:
                self._response.release()
                tokens = max(1, events - 2)  # minus the role chunk and [DONE]
                state = deployment.state
                state.output_tokens.add(tokens)
                if tokens > 1:
                    state.tpot.add((last_at - self._first_at) / (tokens - 1))
            else:
                self._response.close()
            self._gateway._release(deployment)

    def close(self) -> None:
        """Give up on a stream that will not be relayed."""
        self._response.close()
        self._gateway._release(self.deployment)


def _exhausted(model: str, failures: list[tuple[str, GatewayError]]) -> GatewayError:
    if len(failures) == 1:
        return failures[0][1]
    if not failures:
        return ServiceUnavailableError(
            f"No deployment of model `{model}` can take the request now (all at capacity).",
            code="no_capacity",
        )
    detail = "; ".join(f"{dep}: {exc.message}" for dep, exc in failures)
    return ServiceUnavailableError(
        f"All {len(failures)} deployments tried for model `{model}` failed: {detail}",
        code="all_deployments_failed",
    )
