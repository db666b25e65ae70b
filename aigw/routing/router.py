"""Which deployments may serve a request, in which order of models, and which one now.

The router owns the per-model policies and the health view; it never does I/O. The gateway
asks it for a deployment, excluding those already tried for this request.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from aigw.config import GatewayConfig, ModelConfig
from aigw.policies import Policy, RouteContext, make_policy
from aigw.providers import Endpoint, make_provider
from aigw.routing.deployment import Deployment, OutlierDetector

__all__ = ["ModelRoute", "Router"]


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A public model: its deployments, its policy, and the models to fall back to."""

    name: str
    deployments: tuple[Deployment, ...]
    policy: Policy
    fallbacks: tuple[str, ...]

    def supports(self, endpoint: Endpoint) -> bool:
        return any(d.provider.supports(endpoint) for d in self.deployments)


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.health = OutlierDetector(config.health)
        self._clock = clock
        self.models: dict[str, ModelRoute] = {m.name: _build_route(m, rng) for m in config.models}
        self.deployments: dict[str, Deployment] = {
            d.id: d for route in self.models.values() for d in route.deployments
        }

    def chain(self, model: str) -> Iterator[ModelRoute]:
        """The requested model's route, then its fallbacks' routes, in order."""
        route = self.models[model]
        yield route
        for name in route.fallbacks:
            yield self.models[name]

    def pick(self, route: ModelRoute, request: RouteContext, tried: set[str]) -> Deployment | None:
        """A deployment of ``route`` not yet ``tried`` for this request, or None.

        Filters: the provider serves the endpoint, and the deployment is below its
        ``max_concurrency``. Ejected deployments are left out unless every remaining candidate
        is ejected (Envoy's "panic" mode: better to try a maybe-recovered upstream than to
        fail without trying).
        """
        now = self._clock()
        candidates = [
            d
            for d in route.deployments
            if d.id not in tried and d.provider.supports(request.endpoint) and not d.at_capacity
        ]
        if not candidates:
            return None
        healthy = [d for d in candidates if self.health.is_available(d.state, now)]
        return route.policy.pick(healthy or candidates, request)

    def ready_models(self) -> dict[str, bool]:
        """Per model: whether at least one deployment is believed healthy right now."""
        now = self._clock()
        return {
            name: any(self.health.is_available(d.state, now) for d in route.deployments)
            for name, route in self.models.items()
        }


def _build_route(model: ModelConfig, rng: random.Random) -> ModelRoute:
    deployments = tuple(
        Deployment(
            id=dep.id,
            model=model.name,
            config=dep,
            provider=make_provider(dep),
            # sock_read stays unset: first-byte and idle gaps are enforced by the gateway,
            # because a non-streamed reply legitimately sends nothing until generation ends.
            timeout=aiohttp.ClientTimeout(
                total=dep.timeouts.total, sock_connect=dep.timeouts.connect
            ),
        )
        for dep in model.deployments
    )
    return ModelRoute(
        name=model.name,
        deployments=deployments,
        policy=make_policy(model.policy, random.Random(rng.random())),
        fallbacks=tuple(model.fallbacks),
    )
