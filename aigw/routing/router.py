"""Which deployments may serve a request, in which order of models, and which one now.

The router owns the per-model policies, the model-aware filters and the health view; it never
does I/O. The gateway asks it for a deployment, excluding those already tried for the request,
and tells it about each dispatch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from aigw.config import DeploymentConfig, GatewayConfig, ModelConfig, RoutingConfig
from aigw.errors import InvalidRequestError, ServiceUnavailableError
from aigw.fleet.deployment import Deployment, DeploymentState
from aigw.fleet.prefix import PrefixLRU
from aigw.policies import Policy, make_policy
from aigw.policies.base import Filter
from aigw.providers import make_provider
from aigw.routing.health import OutlierDetector, share
from aigw.routing.sticky import Stickiness, keep_bound
from aigw.types import Endpoint, RouteContext

__all__ = ["ModelRoute", "Router", "Selection", "build_deployment"]


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A public model: its deployments, its policy, and the models to fall back to."""

    name: str
    deployments: tuple[Deployment, ...]
    policy: Policy
    fallbacks: tuple[str, ...]
    adapter: str | None
    smallest_context_window: int | None  # None when no deployment declares one
    sticky: Stickiness | None = None  # sticky sessions (aigw.routing.sticky); None: off
    endpoints: frozenset[Endpoint] = frozenset()  # served by at least one deployment

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint in self.endpoints

    def deployment(self, deployment_id: str) -> Deployment | None:
        for d in self.deployments:
            if d.id == deployment_id:
                return d
        return None


@dataclass(frozen=True, slots=True)
class Selection:
    """The policy's choice (None: all at capacity) among the request's candidates."""

    chosen: Deployment | None
    candidates: list[Deployment]


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        clock: Callable[[], float],
        rng: random.Random,
        filters: Sequence[Filter] = (),
        keep: Mapping[str, DeploymentState] | None = None,
    ) -> None:
        """``keep``: live state to carry over, by deployment id (a config reload's
        deployments that stay); every other deployment starts with fresh state."""
        self._clock = clock
        self._filters = tuple(filters)
        routing = config.routing
        self._stale_after = routing.scrape_interval * routing.stale_after_intervals
        self.models: dict[str, ModelRoute] = {
            m.name: _build_route(m, routing, rng, keep or {}) for m in config.models
        }
        self.deployments: dict[str, Deployment] = {
            d.id: d for route in self.models.values() for d in route.deployments
        }
        peers = {name: tuple(d.state for d in r.deployments) for name, r in self.models.items()}
        self.health = OutlierDetector(config.health, clock, peers)
        self._slow_start_s = config.health.slow_start_s
        self._thin_rng = random.Random(rng.random())  # drawn last: policies' seeds unchanged

    def chain(self, model: str) -> Iterator[ModelRoute]:
        """The requested model's route, then its fallbacks' routes, in order."""
        route = self.models[model]
        yield route
        for name in route.fallbacks:
            yield self.models[name]

    def select(self, route: ModelRoute, ctx: RouteContext, tried: set[str]) -> Selection | None:
        """The deployments of ``route`` that may serve the request, and the policy's choice.

        Candidates: not yet ``tried`` for this request, the provider serves the endpoint, and
        every model-aware filter keeps them (a filter that leaves nothing, when nothing was
        tried yet, raises with its reason: 400 if that is the request's fault, 503 if it is
        the fleet's). Ejected deployments are left out unless every candidate is ejected
        (Envoy's "panic" mode: better to try a maybe-recovered upstream than to fail without
        trying). The policy chooses among the candidates below their ``max_concurrency``
        as this process sees them; ``chosen`` is None when all are at capacity (the request
        then queues for any of them). None when no candidate is left at all. A sticky
        session's bound deployment (``ctx.bound_deployment``) is chosen without asking the
        policy while :func:`~aigw.routing.sticky.keep_bound` keeps it and it is not ejected.
        """
        now = self._clock()
        candidates = [
            d for d in route.deployments if d.id not in tried and d.provider.supports(ctx.endpoint)
        ]
        for keep in self._filters:
            if not candidates:
                break
            kept = keep(candidates, ctx)
            if not kept and not tried:
                error = InvalidRequestError if keep.client_fault else ServiceUnavailableError
                raise error(keep.reason(ctx), code=f"no_deployment_{keep.name}")
            candidates = kept
        if not candidates:
            return None
        stale_before = now - self._stale_after
        for d in candidates:
            engine = d.state.engine
            d.state.engine_stale = engine is None or engine.scraped_at < stale_before
        healthy = [d for d in candidates if self.health.is_available(d.state, now)] or candidates
        if ctx.bound_deployment is not None:  # a sticky session's deployment, if it may stay
            bound = keep_bound(ctx.bound_deployment, healthy)
            if bound is not None and self.health.is_available(bound.state, now):
                return Selection(bound, healthy)
        free = [d for d in healthy if not d.at_capacity]
        if len(free) > 1:
            free = self._thin(free, now)
        chosen: Deployment | None = route.policy.pick(free, ctx) if free else None
        return Selection(chosen, healthy)

    def _thin(self, free: list[Deployment], now: float) -> list[Deployment]:
        """Each candidate stays with probability its :func:`~aigw.routing.health.share`
        (slow start, predictive demotion), so a policy that would pick it every time (the
        least loaded: a deployment just back is idle) gives it about that fraction of the
        traffic, and a round-robin about that fraction of its turn. Policies stay unaware of
        health. Nothing is left out when every candidate would be."""
        ramp_begun = now - self._slow_start_s  # a ramp that began before this has ended
        for d in free:  # the common case, cheaply: every share is 1 (no function calls)
            state = d.state
            if state.demotion < 1.0 or ramp_begun < state.slow_start_from <= now:
                break
        else:
            return free
        slow_start_s = self._slow_start_s
        draw = self._thin_rng.random
        kept = [d for d in free if (w := share(d.state, now, slow_start_s)) >= 1.0 or draw() < w]
        return kept or free

    def ready_models(self) -> dict[str, bool]:
        """Per model: whether at least one deployment can take new traffic right now (not
        draining, and believed healthy: not ejected, not probed down)."""
        now = self._clock()
        available = self.health.is_available
        return {
            name: any(not d.state.draining and available(d.state, now) for d in route.deployments)
            for name, route in self.models.items()
        }


def build_deployment(
    config: DeploymentConfig,
    model: str,
    prefix_capacity: int = 16384,
    state: DeploymentState | None = None,
    latency_tau_s: float = 10.0,
) -> Deployment:
    """One deployment of public model ``model``, with everything fixed built once; ``state``
    (kept over a reload) or a fresh one, its latency peak-EWMA decaying with ``latency_tau_s``."""
    if state is None:
        state = DeploymentState(prefixes=PrefixLRU(prefix_capacity))
    state.latency.tau = latency_tau_s
    return Deployment(
        id=config.id,
        model=model,
        config=config,
        provider=make_provider(config),
        # sock_read stays unset: first-byte and idle gaps are enforced by the gateway,
        # because a non-streamed reply legitimately sends nothing until generation ends.
        timeout=aiohttp.ClientTimeout(
            total=config.timeouts.total, sock_connect=config.timeouts.connect
        ),
        state=state,
    )


def _build_route(
    model: ModelConfig,
    routing: RoutingConfig,
    rng: random.Random,
    keep: Mapping[str, DeploymentState],
) -> ModelRoute:
    deployments = tuple(
        build_deployment(
            dep,
            model.name,
            routing.prefix_blocks_per_deployment,
            keep.get(dep.id),
            routing.latency_tau_s,
        )
        for dep in model.deployments
    )
    windows = [d.context_window for d in model.deployments if d.context_window is not None]
    return ModelRoute(
        name=model.name,
        deployments=deployments,
        policy=make_policy(model.policy, model, random.Random(rng.random())),
        fallbacks=tuple(model.fallbacks),
        adapter=model.adapter,
        smallest_context_window=min(windows) if windows else None,
        sticky=Stickiness(model.sticky, model.name) if model.sticky is not None else None,
        endpoints=frozenset(
            e for e in Endpoint if any(d.provider.supports(e) for d in deployments)
        ),
    )
