"""``aigw fake-backend``: a simulated vLLM instance as a Starlette app.

HTTP surface (vLLM's, plus test-only ``/sim/*`` endpoints)::

    GET  /v1/models              served model, vLLM's shape (max_model_len, owned_by "vllm")
    POST /v1/chat/completions    streaming or not, n, forced tool calls, response_format,
                                 stop, logprobs, usage (aigw.sim.generation, aigw.sim.choices)
    POST /v1/completions         the same (prompts as text or token ids; logprobs: k)
    POST /v1/embeddings          dimensions, encoding_format (aigw.sim.embeddings)
    GET  /health                 200 empty; 503 while slow_start lasts
    GET  /metrics                Prometheus text, vLLM V1 names (aigw.sim.metrics)
    GET  /sim/stats              request counters (below) and engine state
    GET  /sim/requests           the last 50 JSON bodies received, newest last
    POST /sim/faults             change fault knobs at runtime (JSON object of Faults fields)
    POST /sim/reset              zero the counters and the request log

Request counters count *HTTP requests* to the three inference endpoints: ``received`` all of
them; then exactly one of ``completed`` (answered in full), ``aborted`` (the client went away
first, whether queued, in prefill, decoding or hung) or ``failed`` (answered with an error
status, or dropped by a fault); ``running``/``waiting``/``preemptions``/``prefix_cache_*``
are engine figures counted in sequences and tokens, as vLLM counts them.

Order of checks per inference request: slow start (503) → API key (401) → body (400 when not a
JSON object) → request log → injected error → injected hang → validation (400) → engine.

Each app owns its engine, RNG, metrics registry and counters, so several can share a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aigw.sim import wire
from aigw.sim.asgi import Receive, Scope, Send, read_body, send_json, wait_disconnect
from aigw.sim.embeddings import embedding_response, embedding_seconds
from aigw.sim.engine import Engine, EngineConfig
from aigw.sim.generation import Generator, Outcome
from aigw.sim.metrics import EngineMetrics, VllmCollector, render
from aigw.sim.params import BadRequest, parse_chat, parse_completion, parse_embedding
from aigw.sim.profiles import get_profile
from aigw.sim.settings import (
    BackendSettings,
    Faults,
    add_arguments,
    faults_with,
    settings_from_args,
)
from aigw.sim.text import Vocabulary

__all__ = [
    "BackendSettings",
    "Faults",
    "SimServer",
    "add_arguments",
    "create_app",
    "settings_from_args",
]

REQUEST_LOG_SIZE = 50
_CHAT, _COMPLETIONS, _EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def engine_config(settings: BackendSettings) -> EngineConfig:
    """The engine's capacities: the profile's defaults unless the settings override them."""
    profile = get_profile(settings.profile)
    return EngineConfig(
        profile=profile,
        max_num_seqs=settings.max_num_seqs or profile.max_num_seqs,
        num_gpu_blocks=settings.num_gpu_blocks or profile.num_gpu_blocks,
        max_num_batched_tokens=profile.max_num_batched_tokens,
        time_scale=settings.time_scale,
    )


class SimServer:
    """The state of one simulated backend and its request handling (``app.state.sim``)."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.metrics = EngineMetrics()
        self.engine = Engine(engine_config(settings), self.metrics)
        self.rng = random.Random(settings.seed)
        self.generator = Generator(
            self.engine, self.rng, Vocabulary(settings.seed), settings.max_model_len
        )
        self.registry = CollectorRegistry()
        self.registry.register(VllmCollector(settings.model, self.metrics, self._gauges))
        self.request_log: deque[Any] = deque(maxlen=REQUEST_LOG_SIZE)
        self.counts: dict[str, int] = {}
        self.by_endpoint: dict[str, int] = {}
        self._baseline = (0, 0, 0)  # engine preemptions, prefix queries, hits at last reset
        self._auth = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self.started_at = time.monotonic()
        self.set_faults(settings.faults)
        self.reset()

    # -- state ---------------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.engine.slowdown = faults.slowdown

    def reset(self) -> None:
        self.counts = dict.fromkeys(("received", "completed", "aborted", "failed"), 0)
        self.by_endpoint = dict.fromkeys((_CHAT, _COMPLETIONS, _EMBEDDINGS), 0)
        self.request_log.clear()
        m = self.metrics
        self._baseline = (m.preemptions, m.prefix_queries, m.prefix_hits)

    def stats(self) -> dict[str, Any]:
        m = self.metrics
        preemptions, queries, hits = self._baseline
        return {
            **self.counts,
            "running": len(self.engine.running),
            "waiting": len(self.engine.waiting),
            "kv_cache_usage": self.engine.kv.usage,
            "preemptions": m.preemptions - preemptions,
            "prefix_cache_queries": m.prefix_queries - queries,
            "prefix_cache_hits": m.prefix_hits - hits,
            "by_endpoint": dict(self.by_endpoint),
        }

    def _gauges(self) -> tuple[int, int, float]:
        return len(self.engine.running), len(self.engine.waiting), self.engine.kv.usage

    @property
    def loading(self) -> bool:
        return time.monotonic() - self.started_at < self.faults.slow_start

    def _authorized(self, scope: Scope) -> bool:
        if self._auth is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._auth)
        return False

    def _gate(self, scope: Scope) -> tuple[int, str] | None:
        """The (status, message) refusing an API call before its body is read, or None."""
        if self.loading:
            return 503, "The model is loading; try again later."
        if not self._authorized(scope):
            return 401, "Unauthorized: missing or invalid API key."
        return None

    # -- API -----------------------------------------------------------------------------

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._gate(scope)
        if refusal is not None:
            await send_json(send, refusal[0], wire.error_body(*refusal))
            return
        model = self.settings.model
        card = {
            "id": model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": self.settings.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{self.rng.getrandbits(64):016x}",
                    "object": "model_permission",
                    "created": int(time.time()),
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        await send_json(send, 200, {"object": "list", "data": [card]})

    async def inference(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Entry point of the three inference endpoints; counts exactly one outcome."""
        path = scope["path"]
        self.counts["received"] += 1
        self.by_endpoint[path] = self.by_endpoint.get(path, 0) + 1
        outcome = await self._inference(path, scope, receive, send)
        self.counts[outcome.value] += 1

    async def _fail(
        self, send: Send, status: int, message: str, param: str | None = None
    ) -> Outcome:
        await send_json(send, status, wire.error_body(status, message, param))
        return Outcome.FAILED

    async def _inference(self, path: str, scope: Scope, receive: Receive, send: Send) -> Outcome:
        refusal = self._gate(scope)
        if refusal is not None:
            return await self._fail(send, *refusal)
        raw = await read_body(receive)
        if raw is None:
            return Outcome.ABORTED
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return await self._fail(send, 400, f"Invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return await self._fail(send, 400, "The request body must be a JSON object.")
        self.request_log.append(body)
        faults = self.faults
        if faults.error_rate and self.rng.random() < faults.error_rate:
            status = faults.error_status
            return await self._fail(send, status, f"Simulated failure (HTTP {status}).")
        if faults.hang_rate and self.rng.random() < faults.hang_rate:
            await wait_disconnect(receive)
            return Outcome.ABORTED
        try:
            if path == _EMBEDDINGS:
                return await self._embed(body, send)
            params = (parse_chat if path == _CHAT else parse_completion)(body, self.settings.model)
            die_after = None
            if params.stream and faults.die_mid_stream_rate:
                if self.rng.random() < faults.die_mid_stream_rate:
                    die_after = faults.die_after_tokens
            return await self.generator.run(params, receive, send, die_after)
        except BadRequest as exc:
            return await self._fail(send, 400, exc.message, exc.param)

    async def _embed(self, body: dict[str, Any], send: Send) -> Outcome:
        params = parse_embedding(body, self.settings.model)
        limit = self.settings.max_model_len
        for tokens in params.tokens:
            if tokens > limit:
                raise BadRequest(
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {tokens} tokens in the input for embedding generation. Please "
                    "reduce the length of the input.",
                    "input",
                )
        seconds = embedding_seconds(self.engine.config.profile, params)
        await asyncio.sleep(seconds * self.faults.slowdown * self.settings.time_scale)
        response = embedding_response(params, f"embd-{self.rng.getrandbits(128):032x}")
        await send_json(send, 200, response)
        return Outcome.COMPLETED

    # -- plain endpoints -----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.loading:
            return JSONResponse(wire.error_body(503, "The model is loading."), status_code=503)
        return Response(status_code=200)

    async def metrics_endpoint(self, request: Request) -> Response:
        body = render(self.registry)  # rendered first: a slow scrape also returns stale data
        if self.settings.scrape_delay:
            await asyncio.sleep(self.settings.scrape_delay)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def stats_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def requests_endpoint(self, request: Request) -> Response:
        return Response(orjson.dumps(list(self.request_log)), media_type="application/json")

    async def faults_endpoint(self, request: Request) -> Response:
        try:
            changes = orjson.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of Faults fields")
            self.set_faults(faults_with(self.faults, changes))
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            return JSONResponse(wire.error_body(400, str(exc)), status_code=400)
        return JSONResponse(asdict(self.faults))

    async def reset_endpoint(self, request: Request) -> Response:
        self.reset()
        return JSONResponse(self.stats())

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Runs the engine's step loop for the app's lifetime; slow start counts from here."""
        self.started_at = time.monotonic()
        task = asyncio.create_task(self.engine.run(), name=f"sim-engine:{self.settings.model}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.engine.abort_all()


class _Asgi:
    """Adapts a ``SimServer`` method to a raw ASGI endpoint (Starlette routes instances of
    classes as ASGI apps, but bound methods as request/response functions)."""

    __slots__ = ("_handler",)

    def __init__(self, handler: Any) -> None:
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(scope, receive, send)


def create_app(settings: BackendSettings) -> Starlette:
    """A simulated vLLM backend; its lifespan starts and stops the engine's step loop."""
    sim = SimServer(settings)
    inference = _Asgi(sim.inference)
    routes = [
        Route("/v1/models", _Asgi(sim.models), methods=["GET"]),
        Route(_CHAT, inference, methods=["POST"]),
        Route(_COMPLETIONS, inference, methods=["POST"]),
        Route(_EMBEDDINGS, inference, methods=["POST"]),
        Route("/health", sim.health, methods=["GET"]),
        Route("/metrics", sim.metrics_endpoint, methods=["GET"]),
        Route("/sim/stats", sim.stats_endpoint, methods=["GET"]),
        Route("/sim/requests", sim.requests_endpoint, methods=["GET"]),
        Route("/sim/faults", sim.faults_endpoint, methods=["POST"]),
        Route("/sim/reset", sim.reset_endpoint, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=sim.lifespan)
    app.state.sim = sim
    return app
