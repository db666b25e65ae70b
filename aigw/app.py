"""Build the gateway's Starlette app from a config, and own its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aigw.admission import Admission
from aigw.api import admin, routes
from aigw.api.dashboard import dashboard_routes
from aigw.api.middleware import EdgeMiddleware
from aigw.api.openai import ProxyEndpoint
from aigw.api.openapi import openapi_route
from aigw.api.state import AppState
from aigw.auth import Authenticator
from aigw.config import GatewayConfig
from aigw.fleet.attempt import AttemptObserver, Observers
from aigw.gateway import Gateway
from aigw.limits import RateLimits, counts_prompt_tokens
from aigw.policies.filters import MODEL_AWARE_FILTERS
from aigw.redaction import redactor_for
from aigw.reload import LiveParts, Reloader, start_monitor
from aigw.routing.context import ContextBuilder
from aigw.routing.history import FleetHistory
from aigw.routing.recorder import SignalRecorder
from aigw.routing.retries import RetryPolicy
from aigw.routing.router import Router
from aigw.routing.scraper import MetricsScraper
from aigw.serving import Lifecycle
from aigw.state import SharedState, open_state
from aigw.telemetry.logs import AccessLog
from aigw.telemetry.metrics import SYNC_S, GatewayMetrics
from aigw.telemetry.otel_env import traces_exporter
from aigw.telemetry.records import RequestObservers
from aigw.tokens import load_counter_async
from aigw.types import Endpoint
from aigw.upstream import Transport, UpstreamPool

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from aigw.telemetry.tracing import Tracing

__all__ = ["build_gateway", "create_app"]

log = logging.getLogger("aigw")


def build_gateway(
    config: GatewayConfig,
    router: Router,
    shared: SharedState,
    transport: Transport,
    contexts: ContextBuilder,
    observers: Sequence[AttemptObserver] = (),
    rng: random.Random | None = None,
) -> Gateway:
    """The request pipeline from its parts (the tests build it too, with a mock transport).

    ``observers`` listen to every attempt after the routing signals and health do; ``rng``
    draws the retries' backoff jitter."""
    return Gateway(
        auth=Authenticator.from_config(config.auth),
        limits=RateLimits(shared.limiter, config),
        admission=Admission(shared.admission, config),
        router=router,
        transport=transport,
        contexts=contexts,
        observers=Observers([SignalRecorder(), router.health, *observers]),
        retry=RetryPolicy(
            config.retry, [m.name for m in config.models], time.monotonic, rng or random.Random()
        ),
        max_reply_bytes=config.server.max_upstream_reply_bytes,
        redactor=redactor_for(config),
        sessions=shared.sessions,
        models=config.models,
    )


def create_app(
    config: GatewayConfig,
    *,
    seed: int | None = None,
    access_log: bool = False,
    tracer_provider: TracerProvider | None = None,
    lifecycle: Lifecycle | None = None,
    load: Callable[[], GatewayConfig] | None = None,
) -> Starlette:
    """The gateway as an ASGI app; nothing runs until its lifespan starts.

    ``access_log``: log one line per proxied request (``aigw.access``). ``tracer_provider``:
    where spans go (tests); by default OpenTelemetry's environment decides, off if unset.
    ``lifecycle``: shared with the server that drains it (:class:`~aigw.serving.GatewayServer`).
    ``load``: reads the config file again, for a reload (SIGHUP, ``POST /admin/reload``; see
    :mod:`aigw.reload`); None: reloads are refused.
    """
    lifecycle = lifecycle or Lifecycle()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        if not config.auth.keys:
            log.warning("auth.keys is empty: this gateway serves anyone who can reach it")
        router = Router(config, loop.time, rng, MODEL_AWARE_FILTERS)
        policies = {m.name: m.policy_name for m in config.models}
        tracing = _tracing(tracer_provider, loop.time, policies)
        pool = UpstreamPool(tracing.inject if tracing is not None else None)
        pool.open(router.deployments.values())
        # The encoding (~40 MB) loads now when every request counts, else on the first count.
        counter = await load_counter_async(config.tokens, eager=counts_prompt_tokens(config))
        contexts = ContextBuilder(counter, config.routing.prefix_block_chars)
        scrape_client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64))
        scraper = MetricsScraper(
            router.deployments.values(),
            scrape_client,
            config.routing.scrape_interval,
            rng,
            loop.time,
        )
        shared = await open_state(config.state, loop.time)
        scraper.start()
        deployments = list(router.deployments.values())
        metrics = GatewayMetrics(
            deployments,
            policies,
            shared.admission.depth,
            loop.time,
            shared.redis,
            tasks=lambda: len(asyncio.all_tasks(loop)),
        )
        syncing = _sync_every(metrics) if metrics.shared else None  # several workers
        history = FleetHistory(deployments, loop.time)  # for /dashboard
        traced = [tracing] if tracing is not None else []

        def make_gateway(cfg: GatewayConfig, router: Router, contexts: ContextBuilder) -> Gateway:
            gateway = build_gateway(
                cfg, router, shared, pool, contexts, [metrics, history, *traced]
            )
            metrics.watch_retries(gateway.retries.exhausted)  # a reload swaps it in at once
            return gateway

        gateway = make_gateway(config, router, contexts)
        logged = [AccessLog()] if access_log else []
        parts = LiveParts(
            loop.time,
            rng,
            pool,
            counter,
            scrape_client,
            metrics,
            history,
            tracing,
            shared.ejections,
        )
        monitor = start_monitor(router, config, parts)  # probes, demotion, shared ejections
        reloader = Reloader(app, parts, scraper, load, make_gateway, monitor)
        app.state.aigw = AppState(
            config=config,
            gateway=gateway,
            started_at=int(time.time()),
            requests=RequestObservers([metrics, *logged, *traced]),
            metrics=metrics,
            history=history,
            tracing=tracing,
            lifecycle=lifecycle,
            reload=reloader.reload if reloader.available else None,
        )
        lifecycle.reload = reloader.reload_logged if reloader.available else None
        log.info(
            "aigw ready: %d models, %d deployments, %s state",
            len(router.models),
            len(router.deployments),
            config.state.backend,
        )
        try:
            yield
        finally:
            lifecycle.reload = None
            if syncing is not None:
                syncing.cancel()
            await reloader.scraper.stop()
            if reloader.monitor is not None:
                await reloader.monitor.stop()
            await scrape_client.aclose()
            await shared.aclose()
            await counter.aclose()
            await pool.close()
            if tracing is not None and tracer_provider is None:
                tracing.shutdown()  # flush the spans the exporter still holds

    proxy = {f"/v1/{endpoint.value}": ProxyEndpoint(endpoint) for endpoint in Endpoint}
    return GatewayApp(
        proxy,
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in proxy.items()),
            Route("/v1/models", routes.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.retrieve_model, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/readyz", routes.readyz, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
            openapi_route(),  # the document is built here, once
            Route("/admin/deployments", admin.list_deployments, methods=["GET"]),
            Route(
                "/admin/deployments/{deployment}/{action}",
                admin.set_draining,
                methods=["POST"],
            ),
            Route("/admin/reload", admin.reload_config, methods=["POST"]),
            *dashboard_routes(),  # GET /dashboard and /admin/dashboard.json; page built once
        ],
        exception_handlers={HTTPException: routes.http_exception},
        lifespan=lifespan,
    )


class GatewayApp(Starlette):
    """Starlette, with a short way in for the proxy endpoints.

    Every request enters through :class:`EdgeMiddleware` (request id, last-resort errors).
    ``POST`` to a proxy path then goes straight to its endpoint; everything else (and those
    paths with other methods) goes through Starlette's usual stack, which never redirects.
    Measured with loadtests/proxy_cpu.py: Starlette's error/exception middleware and router
    cost the hot path tens of CPU-us per request that it does not need.
    """

    def __init__(self, proxy: Mapping[str, ASGIApp], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Starlette answers `/path/` with a 307 to `/path` built from the client's Host
        # header (an open redirect); an API has no use for it: an unknown path is a 404.
        self.router.redirect_slashes = False
        self._proxy = proxy
        self._entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if self._entry is None:
            self._entry = EdgeMiddleware(self._dispatch)
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._proxy.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _sync_every(metrics: GatewayMetrics) -> asyncio.Task[None]:
    async def sync() -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            metrics.sync()

    return asyncio.ensure_future(sync())


def _tracing(
    given: TracerProvider | None, clock: Callable[[], float], policies: Mapping[str, str]
) -> Tracing | None:
    """Tracing with ``given``, or as OpenTelemetry's environment asks; None when off. The SDK
    is imported only when tracing is on."""
    if given is None and traces_exporter() is None:
        return None
    from aigw.telemetry.tracing import Tracing, provider_from_env

    provider = given or provider_from_env()
    return Tracing(provider, clock, policies) if provider is not None else None
