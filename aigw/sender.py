"""Sending one attempt upstream: a non-streamed exchange, or a stream opened up to its first
output (until then the attempt may still fail over; :class:`~aigw.relay.UpstreamStream`
relays the rest). The provider builds the request and translates the answer; upstream errors
become the client's error here, secrets scrubbed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aigw.errors import GatewayError, UpstreamConnectionError, UpstreamStatusError
from aigw.fleet.attempt import Attempt, Observers
from aigw.fleet.deployment import Deployment
from aigw.providers import StreamTranslator
from aigw.redaction import Redactor
from aigw.relay import Opened, Redacting, first_output, read_reply, scrub
from aigw.resume import Continuation, Transcript
from aigw.routing.retries import parse_retry_after
from aigw.types import Endpoint
from aigw.upstream import Transport, UpstreamResponse

__all__ = ["Sender", "engine_queue"]

log = logging.getLogger("aigw.gateway")


class Sender:
    """Sends attempts through ``transport``. ``resumes``: the models with ``stream_resume``
    (their streams' translators keep a :class:`~aigw.resume.Transcript`)."""

    def __init__(
        self,
        transport: Transport,
        observers: Observers,
        redactor: Redactor,
        max_reply_bytes: int,
        resumes: Mapping[str, int],
    ) -> None:
        self._transport = transport
        self._observers = observers
        self._redact = redactor
        self._max_reply_bytes = max_reply_bytes
        self._resumes = resumes

    async def reply(self, attempt: Attempt) -> bytes:
        """Send a non-streamed request; the OpenAI-shaped reply (redacted), usage on the
        attempt. Raises the upstream's error, or a transport's, as a GatewayError."""
        deployment = attempt.deployment
        provider = deployment.provider
        ctx = attempt.ctx
        upstream = provider.build_request(ctx.endpoint, ctx.body)
        with self._transport.errors(deployment, "waiting for the reply"):
            response = await self._transport.post(deployment, upstream, ctx.request_id)
            try:
                data = await read_reply(response, self._max_reply_bytes, deployment)
            except BaseException:
                response.close()  # a reply over the cap (or cut short): abort, never pool
                raise
            response.release()
        if response.status >= 400:
            error = provider.parse_error(response.status, data)
            raise self.upstream_error(deployment, error, response)
        attempt.last_byte_at = asyncio.get_running_loop().time()
        try:
            body, attempt.usage = provider.parse_response(ctx.endpoint, response.status, data)
        except UpstreamConnectionError as exc:  # the provider does not know the deployment
            raise UpstreamConnectionError(
                f"deployment {deployment.id}: {exc.message}", code=exc.code
            ) from exc
        return self._redact.data(body)

    async def open_stream(self, attempt: Attempt, continuing: Transcript | None = None) -> Opened:
        """Send a streamed request and wait for its first output. A ``stream_resume``
        model's translator records what is sent (:class:`Transcript`); ``continuing``: the
        transcript of the stream this attempt continues (its output is rewritten to read as
        that stream's)."""
        deployment = attempt.deployment
        provider = deployment.provider
        ctx = attempt.ctx
        upstream = provider.build_request(ctx.endpoint, ctx.body)
        translator: StreamTranslator = provider.stream_translator(ctx.endpoint, ctx.body)
        if self._redact:
            translator = Redacting(translator, self._redact)
        chat = ctx.endpoint is Endpoint.CHAT
        if continuing is not None:
            continuing.follow(Continuation(translator, continuing, continuing.pieces, chat))
            translator = continuing
        elif (
            deployment.model in self._resumes
            and ctx.endpoint is not Endpoint.EMBEDDINGS
            and ctx.body.get("n") in (None, 1)  # one choice: n > 1 streams are not resumed
        ):
            translator = Transcript(translator, chat)
        attempt.engine_queued = engine_queue(deployment)
        with self._transport.errors(deployment, "waiting for the first byte"):
            async with asyncio.timeout(deployment.config.timeouts.first_byte):
                response = await self._transport.post(deployment, upstream, ctx.request_id)
                try:
                    if response.status >= 400:
                        error = provider.parse_error(response.status, await response.read())
                        raise self.upstream_error(deployment, error, response)
                    first = await first_output(response, translator, deployment)
                except BaseException:
                    response.close()
                    raise
        attempt.first_byte_at = attempt.last_byte_at = asyncio.get_running_loop().time()
        attempt.relayed_events = first.count(b"data:")
        self._observers.on_first_byte(attempt)
        return Opened(response, translator, first)

    def upstream_error(
        self, deployment: Deployment, error: UpstreamStatusError, response: UpstreamResponse
    ) -> GatewayError:
        """The upstream's error as the client should see it: configured secrets and internal
        origins scrubbed from its text (an upstream may echo the request's headers), and the
        ``Retry-After`` of a 429/503 kept (outlier detection honours it too).

        A 401/403/407 from an upstream means the *gateway's* credentials for that deployment
        are wrong: not the client's fault, so it is a retryable 502 that counts against the
        deployment, and the upstream's message (which may quote the key) is not relayed.
        """
        if error.status in (401, 403, 407):
            log.error(
                "deployment %s rejected the gateway's credentials (HTTP %d)",
                deployment.id,
                error.status,
            )
            return UpstreamConnectionError(
                f"deployment {deployment.id} rejected the gateway's credentials "
                f"(HTTP {error.status}); check its api_key",
                code="upstream_auth_failed",
            )
        scrub(error, self._redact)
        if error.status in (429, 503):
            wait = parse_retry_after(response.headers, time.time())
            if wait is not None:
                error.set_retry_after(wait)
        return error


def engine_queue(deployment: Deployment) -> bool:
    """Whether the engine had a queue when this request was sent (then TTFT is not prefill)."""
    engine = deployment.state.engine
    if engine is None or deployment.state.engine_stale:
        return deployment.state.in_flight > 1
    return engine.waiting + max(0, deployment.state.in_flight - engine.in_flight_at_scrape) > 1
