"""How a request travels. Read this file to follow one request from its key to its bill.

``Gateway.complete`` serves a non-streamed request and ``Gateway.open_stream`` a streamed one.
Both run the same stages, in order:

1. **authenticate**: the API key becomes a :class:`~aigw.types.Principal` (401/403);
2. **rate-limit**: its RPM/TPM quotas (and the model's) are charged up front with the prompt's
   tokens plus ``max_tokens`` (429 with ``Retry-After``);
3. **admit**: the router's policy picks a deployment among the candidates, and admission leases
   a slot on it (or on another candidate) or queues the request until a slot frees;
4. **attempt with failover**: send; a failure that happened before the client got a byte counts
   against the deployment, releases its slot, and the request moves on: another deployment of
   the model, then the model's fallbacks;
5. **relay**: the reply, or the stream chunk by chunk (``UpstreamStream.relay``);
6. **account**: observers learn the outcome (signals, outlier detection), the slot is released
   and the charged tokens are reconciled with the usage the upstream reported; a request
   rejected downstream of the rate limits, or abandoned before an upstream answered, is
   refunded in full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aigw.admission import Admission
from aigw.auth import Authenticator
from aigw.config import ModelConfig, ServerConfig
from aigw.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from aigw.fleet.attempt import Attempt, Observers
from aigw.fleet.deployment import Deployment
from aigw.limits import Booking, DeploymentQuotaSpent, RateLimits
from aigw.providers.continuation import continuation_body
from aigw.redaction import Redactor
from aigw.relay import Opened, UpstreamStream
from aigw.resume import Transcript, prefix
from aigw.routing.context import ContextBuilder
from aigw.routing.retries import Failover, RetryPolicy, exhausted_error
from aigw.routing.router import ModelRoute, Router, Selection
from aigw.sender import Sender
from aigw.state.base import Lease, Ticket
from aigw.state.sessions import MemorySessionStore, SessionStore
from aigw.types import Endpoint, Principal, RequestMeta, RouteContext
from aigw.upstream import Transport

__all__ = ["Gateway", "Reply", "UpstreamStream"]

log = logging.getLogger("aigw.gateway")
DEFAULT_MAX_REPLY_BYTES: int = ServerConfig.model_fields["max_upstream_reply_bytes"].default

T = TypeVar("T")
Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete, OpenAI-shaped JSON reply, the deployment that produced it, extra headers.

    The caller must await ``account()`` once the reply is sent (or could not be): the slot is
    released and the usage reconciled after the client has its answer, so shared state's
    round trips add no latency.
    """

    deployment: Deployment
    body: bytes
    headers: list[tuple[bytes, bytes]]
    account: Callable[[], Awaitable[None]]
    attempt: Attempt  # the try that answered


class _Request:
    """One request's passage through the stages; what ``account`` needs at the end."""

    __slots__ = ("booking", "chain", "ctx", "id", "principal", "route", "session", "ticket")

    def __init__(
        self, request_id: str, principal: Principal, route: ModelRoute, ctx: RouteContext
    ) -> None:
        self.id = request_id  # unique per gateway process and request (x-request-id may not be)
        self.principal = principal
        self.route = route
        self.ctx = ctx
        # The models that may serve it, in order: the requested one and its fallbacks, or
        # (too long for it) its first context fallback that fits and that one's fallbacks.
        self.chain: tuple[ModelRoute, ...] = ()
        self.ticket: Ticket | None = None
        self.booking: Booking | None = None
        self.session: str | None = None  # its sticky session's store key

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.booking.headers if self.booking is not None else []


class _Dispatch:
    """An attempt that holds a slot (and maybe an upstream quota), until settled once."""

    __slots__ = ("attempt", "lease", "quota", "settled")

    def __init__(self, attempt: Attempt, lease: Lease, quota: Booking | None) -> None:
        self.attempt = attempt
        self.lease = lease
        self.quota = quota
        self.settled = False


class _Live:
    """A streamed request of a ``stream_resume`` model: its current dispatch (a continuation
    replaces it), what its client was sent, and how many continuations it has had."""

    __slots__ = ("dispatch", "resumes", "transcript")

    def __init__(self, dispatch: _Dispatch, transcript: Transcript) -> None:
        self.dispatch = dispatch
        self.transcript = transcript
        self.resumes = 0


class Gateway:
    def __init__(
        self,
        auth: Authenticator,
        limits: RateLimits,
        admission: Admission,
        router: Router,
        transport: Transport,
        contexts: ContextBuilder,
        observers: Observers,
        retry: RetryPolicy,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        redactor: Redactor | None = None,
        sessions: SessionStore | None = None,
        models: Sequence[ModelConfig] = (),
    ) -> None:
        """``models``: the configured models, read for ``context_fallbacks`` and
        ``stream_resume`` (both off for a model not given)."""
        self.auth = auth
        self.limits = limits
        self.admission = admission
        self.router = router
        self._transport = transport
        self._contexts = contexts
        self._observers = observers
        self._retry = retry
        self._sessions = sessions if sessions is not None else MemorySessionStore(time.monotonic)
        # Internal request ids: unique across processes without a uuid per request.
        self._id_prefix = uuid.uuid4().hex[:12] + "-"
        self._ids = itertools.count(1)
        self._context_fallbacks = {m.name: tuple(m.context_fallbacks) for m in models}
        # model -> continuations allowed per request, for the models with stream_resume
        self._resumes = {m.name: m.max_stream_resumes for m in models if m.stream_resume}
        self._send = Sender(
            transport, observers, redactor or Redactor(), max_reply_bytes, self._resumes
        )

    @property
    def retries(self) -> RetryPolicy:
        """The retry settings and the models' retry budgets (read by ``/metrics``)."""
        return self._retry

    # --- the journey ---------------------------------------------------------------------

    def authenticate(self, meta: RequestMeta) -> Principal:
        """Stage 1, run before the body is even read: who is calling (401 if nobody known)."""
        return self.auth.authenticate(meta.authorization)

    async def complete(
        self, principal: Principal, endpoint: Endpoint, body: dict[str, Any], meta: RequestMeta
    ) -> Reply:
        request = await self._accept(principal, endpoint, body, meta)  # model, rate-limit
        try:
            dispatch, data = await self._attempt_with_failover(request, self._send.reply)
        except BaseException:
            await self._refund(request)
            raise

        async def account() -> None:
            await self._account(request, dispatch, None)

        attempt = dispatch.attempt
        if request.session is not None:
            try:
                await self._bind_session(request, attempt)
            except BaseException:  # the client went away: the reply is done all the same
                await account()
                raise
        return Reply(attempt.deployment, data, request.headers, account, attempt)

    async def open_stream(
        self, principal: Principal, endpoint: Endpoint, body: dict[str, Any], meta: RequestMeta
    ) -> UpstreamStream:
        """Connect and wait for the first output bytes; the caller must ``relay`` the result."""
        request = await self._accept(principal, endpoint, body, meta)  # model, rate-limit
        try:
            dispatch, opened = await self._attempt_with_failover(request, self._send.open_stream)
        except BaseException:
            await self._refund(request)
            raise

        translator = opened.translator
        live = _Live(dispatch, translator) if isinstance(translator, Transcript) else None

        async def account(error: GatewayError | None) -> None:
            await self._account(request, live.dispatch if live else dispatch, error)

        stream = UpstreamStream(
            dispatch.attempt,
            opened,
            self._transport,
            self._observers,
            account,
            request.headers,
            functools.partial(self._resume, request, live) if live is not None else None,
        )
        if request.session is not None:
            try:
                await self._bind_session(request, dispatch.attempt)
            except BaseException:  # the client went away before the relay began
                await stream.close()
                raise
        return stream

    # --- 2: the model, then rate limits -----------------------------------------------------

    async def _accept(
        self, principal: Principal, endpoint: Endpoint, body: dict[str, Any], meta: RequestMeta
    ) -> _Request:
        model = body["model"]
        route = self.router.models.get(model)
        if route is None:
            raise NotFoundError(
                f"The model `{model}` does not exist or is not served by this gateway.",
                param="model",
                code="model_not_found",
            )
        self.auth.authorize_model(principal, model)
        if not route.supports(endpoint):
            raise InvalidRequestError(
                f"The model `{model}` does not support /v1/{endpoint.value}.",
                param="model",
                code="unsupported_endpoint",
            )
        session = bound = None
        if route.sticky is not None:  # the only cost of sticky sessions to other models
            session = route.sticky.session_key(principal.name, body, meta)
            if session is not None:
                bound = await self._sessions.lookup(session, route.sticky.ttl_s)
        now = asyncio.get_running_loop().time()
        ctx = await self._contexts.build(
            endpoint, body, meta, now, route.smallest_context_window, route.adapter, bound
        )
        request = _Request(f"{self._id_prefix}{next(self._ids)}", principal, route, ctx)
        request.chain = self._chain(route, ctx)
        request.session = session
        request.ticket = self.admission.ticket(request.id, principal, model, meta)
        # The key's quotas, and the quotas of the model that will serve (a context fallback
        # is known now, unlike a failover's fallback, which is charged to the requested one).
        plan = self.limits.plan(principal, request.chain[0].name)
        if plan is not None:
            prompt_tokens = ctx.prompt_tokens
            if plan.counts_tokens:
                prompt_tokens = await self._contexts.count_prompt(endpoint, body)
            tokens = self.limits.estimate(prompt_tokens, ctx.max_tokens)
            request.booking = await self.limits.reserve(request.id, plan, tokens)
        return request

    def _chain(self, route: ModelRoute, ctx: RouteContext) -> tuple[ModelRoute, ...]:
        """The models that may serve the request: ``route`` and its fallbacks, unless no
        deployment of ``route`` has a context window that holds it; then its first context
        fallback that has one, and that model's fallbacks (none fits: ``route``'s chain,
        which answers 400 as before). ``ctx.prompt_tokens`` is an exact count whenever the
        request could exceed ``route``'s smallest window (:class:`ContextBuilder`)."""
        fallbacks = self._context_fallbacks.get(route.name)
        if fallbacks and not _fits(route, ctx):
            for name in fallbacks:
                fallback = self.router.models.get(name)
                if fallback is not None and _fits(fallback, ctx):
                    return tuple(self.router.chain(name))
        return tuple(self.router.chain(route.name))

    # --- 3-4: admit, attempt with failover ---------------------------------------------------

    async def _attempt_with_failover(
        self, request: _Request, send: Callable[[Attempt], Awaitable[T]]
    ) -> tuple[_Dispatch, T]:
        """Try deployments until one succeeds; its dispatch stays open for ``_account``.

        All of it, queue waits and backoff included, runs within the request's deadline
        (``retry.deadline_s``); past it the attempt in progress is abandoned and the client
        gets 504 ``request_deadline_exceeded``.
        """
        retry = self._retry
        failover = Failover(retry, request.ctx.model)
        deadline = asyncio.timeout(retry.deadline_s)
        try:
            async with deadline:
                return await self._failover(
                    request, send, failover, deadline, request.chain, request.ctx
                )
        except TimeoutError:
            if not deadline.expired():
                raise
            raise DeadlineExceededError(
                f"The request did not complete within its deadline of {retry.deadline_s:g} "
                f"seconds ({failover.attempts} attempts made).",
                code="request_deadline_exceeded",
            ) from None
        finally:
            failover.close()

    async def _failover(
        self,
        request: _Request,
        send: Callable[[Attempt], Awaitable[T]],
        failover: Failover,
        deadline: asyncio.Timeout,
        chain: Iterable[ModelRoute],
        ctx: RouteContext,
        exclude: frozenset[str] = frozenset(),
    ) -> tuple[_Dispatch, T]:
        """The failover loop over the models of ``chain``, never sending to ``exclude``.
        A retry (any try after the first) goes to a deployment in rotation only (no panic
        mode), must fit the model's retry budget and waits its backoff; a deployment waiting
        out an upstream's Retry-After is never sent to."""
        failures = failover.failures
        loop = asyncio.get_running_loop()
        ticket = request.ticket
        assert ticket is not None
        for route in chain:
            tried: set[str] = set(exclude)
            for _ in range(self._retry.max_attempts):
                selection = self.router.select(route, ctx, tried)
                if selection is None:
                    break
                if _held_back(selection.chosen, loop.time(), tried, failures):
                    continue
                if failover.attempts:
                    if not self._in_rotation(selection, loop.time()):
                        break  # the rest are ejected: no retry there (fallbacks may be fine)
                    delay = failover.retry_delay(loop.time(), deadline.when())
                    if delay is None:  # retry budget spent, or no time left to wait
                        raise self._exhausted(request, failures)
                    if delay:
                        await asyncio.sleep(delay)
                lease = await self.admission.lease(ticket, selection.chosen, selection.candidates)
                deployment = route.deployment(lease.pool.id) or selection.chosen
                assert deployment is not None
                if deployment is not selection.chosen and _held_back(
                    deployment, loop.time(), tried, failures
                ):
                    await lease.release()
                    continue
                tried.add(deployment.id)
                try:
                    quota = await self._charge_upstream_quota(request, deployment)
                except DeploymentQuotaSpent as spent:
                    await lease.release()
                    failures.append((deployment.id, _quota_spent(spent)))
                    continue
                except BaseException:  # shared state failed, or the client went away
                    await lease.release()
                    raise
                failover.attempts += 1
                attempt = Attempt(
                    deployment,
                    ctx,
                    failover.attempts,
                    loop.time(),
                    queued_s=lease.waited_s,
                )
                dispatch = _Dispatch(attempt, lease, quota)
                self._observers.on_dispatch(attempt)
                try:
                    result = await send(attempt)
                except GatewayError as exc:
                    await self._settle(dispatch, exc)
                    if not exc.retryable:
                        raise
                    log.warning("deployment %s failed: %s", deployment.id, exc.message)
                    failures.append((deployment.id, exc))
                    continue
                except BaseException:  # cancelled: the client went away, or the deadline
                    attempt.abandoned = True
                    await self._settle(dispatch, None)
                    raise
                return dispatch, result
        raise self._exhausted(request, failures)

    async def _resume(
        self, request: _Request, live: _Live, error: GatewayError
    ) -> tuple[Attempt, Opened] | Literal["failed", "not_resumable"] | None:
        """Continuation failover (:mod:`aigw.resume`): after ``error`` broke the stream of
        ``live``, continue it on another deployment of the same model; the next attempt and
        its opened stream, or why not: "not_resumable" when it may not be continued,
        "failed" when no deployment could continue it, None when ``error`` is not retryable
        (the upstream's own answer, not a break). The caller then sends the error. A resume
        is a retry (retry budget, rotation, backoff) bounded by ``max_stream_resumes`` and
        the request's deadline."""
        if not error.retryable:
            return None
        broken = live.dispatch.attempt
        model = broken.deployment.model
        transcript = live.transcript
        if not transcript.can_resume or live.resumes >= self._resumes.get(model, 0):
            return "not_resumable"
        ctx = request.ctx
        body = continuation_body(ctx.endpoint, ctx.body, prefix(transcript.text), transcript.pieces)
        if body is None:
            return "not_resumable"
        await self._settle(live.dispatch, error)  # counts against it; frees its slot
        live.resumes += 1
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        continued = dataclasses.replace(
            ctx, body=body, max_tokens=max_tokens if isinstance(max_tokens, int) else None
        )
        failover = Failover(self._retry, ctx.model, count_request=False)
        failover.attempts = broken.number
        send = functools.partial(self._send.open_stream, continuing=transcript)
        deadline = asyncio.timeout_at(ctx.now + self._retry.deadline_s)
        route = self.router.models[model]
        try:
            async with deadline:
                dispatch, opened = await self._failover(
                    request,
                    send,
                    failover,
                    deadline,
                    (route,),
                    continued,
                    frozenset({broken.deployment.id}),
                )
        except (GatewayError, TimeoutError) as exc:
            log.warning("stream of %s could not be resumed: %s", request.id, exc)
            return "failed"
        finally:
            failover.close()
        log.info(
            "stream of %s resumed on %s after %d chunks (%s)",
            request.id,
            dispatch.attempt.deployment.id,
            transcript.pieces,
            error.code,
        )
        live.dispatch = dispatch
        return dispatch.attempt, opened

    def _in_rotation(self, selection: Selection, now: float) -> bool:
        """Whether the selection's candidates are in rotation (not all ejected: panic)."""
        first = selection.chosen or selection.candidates[0]
        return self.router.health.is_available(first.state, now)

    def _exhausted(
        self, request: _Request, failures: list[tuple[str, GatewayError]]
    ) -> GatewayError:
        """The request's error once it may try no more; 503s say when to come back."""
        now = asyncio.get_running_loop().time()
        wait = min(
            max(0.0, d.state.ejected_until - now)
            for route in request.chain
            for d in route.deployments
        )
        return exhausted_error(request.ctx.model, failures, wait)

    async def _charge_upstream_quota(
        self, request: _Request, deployment: Deployment
    ) -> Booking | None:
        if not self.limits.has_deployment_quota(deployment.id):
            return None
        tokens = self.limits.estimate(request.ctx.prompt_tokens, request.ctx.max_tokens)
        return await self.limits.reserve_deployment(request.id, deployment.id, tokens)

    # --- 6: account ----------------------------------------------------------------------

    async def _account(
        self, request: _Request, dispatch: _Dispatch, error: GatewayError | None
    ) -> None:
        """The request is over: settle its attempt, then reconcile what it was charged."""
        await self._settle(
            dispatch, error, success=error is None and not dispatch.attempt.abandoned
        )
        usage = dispatch.attempt.usage
        if request.booking is not None:
            await request.booking.reconcile(usage)

    async def _bind_session(self, request: _Request, attempt: Attempt) -> None:
        """Bind the request's sticky session to the deployment that answered it, when that
        is not already its binding (the lookup renewed an unchanged one).

        Before the client has the answer (for a stream: its first bytes), not when the
        request is accounted: a client sends its next turn as soon as it has this one, and
        that turn must find the binding. Only a changed binding costs this wait.
        """
        sticky = request.route.sticky
        deployment_id = attempt.deployment.id
        if (
            request.session is not None
            and sticky is not None
            and attempt.last_byte_at is not None  # it answered: it holds the KV cache now
            and deployment_id != request.ctx.bound_deployment
            and attempt.deployment.model == request.route.name  # not a fallback model's
        ):
            await self._sessions.bind(request.session, deployment_id, sticky.ttl_s)

    async def _settle(
        self, dispatch: _Dispatch, error: GatewayError | None, success: bool = False
    ) -> None:
        """Close one attempt: tell the observers, release its slot, settle its upstream quota.

        Called exactly once per attempt, on every path. An attempt its client abandoned gets
        neither ``on_success`` nor ``on_failure`` (it says nothing of the deployment's health).
        """
        if dispatch.settled:
            return
        dispatch.settled = True
        attempt = dispatch.attempt
        observers = self._observers
        try:
            if error is not None:
                observers.on_failure(attempt, error)
            elif success:
                observers.on_success(attempt)
        finally:
            try:
                observers.on_finish(attempt)
            finally:
                await dispatch.lease.release()
                quota = dispatch.quota
                if quota is not None:
                    # The upstream's own quota: charged for what it served, nothing if it
                    # sent nothing back (unreachable, or the client left first).
                    if attempt.first_byte_at is None and attempt.last_byte_at is None:
                        await quota.refund()
                    else:
                        await quota.reconcile(attempt.usage)

    async def _refund(self, request: _Request) -> None:
        if request.booking is not None:
            await request.booking.refund()


def _fits(route: ModelRoute, ctx: RouteContext) -> bool:
    """Whether a deployment of ``route`` serving the endpoint has a context window (or none
    declared) that holds the request's prompt plus its ``max_tokens``."""
    needed = ctx.prompt_tokens + (ctx.max_tokens or 0)
    return any(
        (d.config.context_window is None or needed <= d.config.context_window)
        and d.provider.supports(ctx.endpoint)
        for d in route.deployments
    )


def _quota_spent(spent: DeploymentQuotaSpent) -> RateLimitError:
    retry = max(1, int((spent.retry_after_s or 60) + 0.999))
    return RateLimitError(
        f"deployment {spent.deployment_id} has used its configured rpm/tpm quota for now",
        code="upstream_quota_exhausted",
        headers={"Retry-After": str(retry)},
    )


def _held_back(
    deployment: Deployment | None,
    now: float,
    tried: set[str],
    failures: list[tuple[str, GatewayError]],
) -> bool:
    """Whether ``deployment`` is waiting out its upstream's Retry-After (it is then noted as
    tried, with a 503 that says how long). Outlier detection ejects such a deployment too,
    so the router offers it only when every candidate is ejected (panic mode)."""
    if deployment is None:
        return False
    wait = deployment.state.retry_after_until - now
    if wait <= 0:
        return False
    tried.add(deployment.id)
    failures.append(
        (
            deployment.id,
            ServiceUnavailableError(
                f"deployment {deployment.id} asked for no requests for {wait:.1f} s more "
                "(its Retry-After)",
                code="upstream_retry_after",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            ),
        )
    )
    return True
