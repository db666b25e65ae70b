"""Builders for policy tests: deployments from a config mapping, engine scrapes, contexts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from aigw.config import ModelConfig
from aigw.configfile import parse_config
from aigw.fleet.deployment import Deployment
from aigw.fleet.signals import EngineSnapshot
from aigw.policies import Policy, make_policy
from aigw.routing.router import build_deployment
from aigw.types import Endpoint, RouteContext


def gpu(id: str, **extra: Any) -> dict[str, Any]:
    """A self-hosted deployment (it has a metrics_url)."""
    return {"id": id, "metrics_url": f"http://{id}.internal/metrics", **extra}


def cloud(id: str, **extra: Any) -> dict[str, Any]:
    """A provider API deployment (no metrics_url)."""
    return {"id": id, **extra}


def fleet(*specs: dict[str, Any], **model: Any) -> tuple[ModelConfig, list[Deployment]]:
    """Validate one model with these deployments and build its Deployments like the router."""
    deployments = [
        {"base_url": f"http://127.0.0.1:{9000 + i}/v1", "model": "upstream", **spec}
        for i, spec in enumerate(specs)
    ]
    config = parse_config({"models": [{"name": "m", "deployments": deployments, **model}]})
    model_config = config.models[0]
    built = [build_deployment(dep, model_config.name) for dep in model_config.deployments]
    return model_config, built


def gpus(count: int, **extra: Any) -> tuple[ModelConfig, list[Deployment]]:
    return fleet(*(gpu(f"g{i}", **extra) for i in range(count)))


def scrape(
    deployment: Deployment,
    waiting: float = 0,
    running: float = 0,
    kv: float | None = None,
    adapters: frozenset[str] = frozenset(),
    now: float = 0.0,
) -> None:
    """Record an engine scrape taken now (fresh, at the current in-flight count)."""
    state = deployment.state
    state.engine = EngineSnapshot(
        scraped_at=now,
        waiting=waiting,
        running=running,
        kv_usage=kv,
        adapters=adapters,
        in_flight_at_scrape=state.in_flight,
    )
    state.engine_stale = False


def dispatch(deployment: Deployment, ctx: RouteContext) -> None:
    """What the router records after choosing a deployment."""
    state = deployment.state
    state.in_flight += 1
    state.requests += 1
    state.dispatched += 1
    state.prefixes.add(ctx.prefix_blocks)


def request(**fields: Any) -> RouteContext:
    return RouteContext(Endpoint.CHAT, "m", {}, **fields)


def policy(spec: str | dict[str, Any], model: ModelConfig, seed: int = 0) -> Policy:
    return make_policy(spec, model, random.Random(seed))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)
