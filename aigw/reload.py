"""Config reload (SIGHUP, ``POST /admin/reload``): swap models, deployments and policies live.

A reload reads the config file again and validates it: a bad file changes nothing. Sections
that cannot change in a running process (:data:`FROZEN_SECTIONS`: the listener and its limits,
shared state, token counting) are compared and any change is refused, naming the fields,
never applied halfway. Then the config-derived objects are built anew (router, policies, the
gateway's stages) and one reference is swapped: ``app.state.aigw``. A request reads it once,
on arrival, so requests in flight finish on the objects they started with: a removed
deployment gets no new traffic and its in-flight requests finish (it drains).

A deployment that stays (same id, ``base_url``, ``model`` and ``provider``) keeps its live
state: latency EWMAs, ejection, prefix memory, the admin's draining flag. Its other settings
(``max_concurrency``, timeouts, weight, keys) take the new values. Process-lifetime parts
follow the new fleet: the upstream pool opens sessions for new origins (an origin no longer
used keeps its idle session until shutdown), the engine-metrics scraper restarts on the new
set, the metrics gauges, dashboard history and trace attributes follow it. So does the
health task (active probes, demotion, shared ejections): a new one starts on the new fleet,
and a deployment that stays keeps its probe verdict (it lives in its state).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import httpx
from pydantic import BaseModel
from starlette.applications import Starlette

from aigw.api.state import AppState, ReloadReport
from aigw.config import GatewayConfig
from aigw.errors import ConfigError
from aigw.fleet.deployment import DeploymentState
from aigw.gateway import Gateway
from aigw.limits import counts_prompt_tokens
from aigw.policies.filters import MODEL_AWARE_FILTERS
from aigw.routing.context import ContextBuilder
from aigw.routing.history import FleetHistory
from aigw.routing.probes import HealthMonitor, SharedEjections
from aigw.routing.router import Router
from aigw.routing.scraper import MetricsScraper
from aigw.telemetry.metrics import GatewayMetrics
from aigw.tokens import TokenCounter
from aigw.upstream import UpstreamPool

if TYPE_CHECKING:
    from aigw.telemetry.tracing import Tracing

__all__ = [
    "FROZEN_SECTIONS",
    "LiveParts",
    "Reloader",
    "frozen_changes",
    "kept_states",
    "start_monitor",
]

log = logging.getLogger("aigw")

FROZEN_SECTIONS = ("server", "state", "tokens")


def frozen_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """One problem per field of :data:`FROZEN_SECTIONS` that differs (values not shown:
    they may be secrets, e.g. ``state.url``)."""
    problems: list[str] = []
    for section in FROZEN_SECTIONS:
        before: BaseModel = getattr(old, section)
        after: BaseModel = getattr(new, section)
        for name in type(before).model_fields:
            if getattr(before, name) != getattr(after, name):
                problems.append(
                    f"{section}.{name}: cannot change while the gateway runs (restart it to "
                    "apply this change; nothing was reloaded)"
                )
    return problems


def kept_states(router: Router, new: GatewayConfig) -> dict[str, DeploymentState]:
    """The live state of each deployment that stays: same id, base_url, model and provider."""
    kept: dict[str, DeploymentState] = {}
    for model in new.models:
        for dep in model.deployments:
            old = router.deployments.get(dep.id)
            if old is not None and _same_upstream(old.config, dep):
                kept[dep.id] = old.state
    return kept


def _same_upstream(a: object, b: object) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in ("base_url", "model", "provider"))


@dataclass(frozen=True, slots=True)
class LiveParts:
    """What lives as long as the process, built once in the lifespan, told of new fleets."""

    clock: Callable[[], float]
    rng: random.Random
    pool: UpstreamPool
    counter: TokenCounter
    scrape_client: httpx.AsyncClient
    metrics: GatewayMetrics
    history: FleetHistory
    tracing: Tracing | None
    ejections: SharedEjections | None = None  # where the health task shares ejections


class Reloader:
    """Builds the config-derived objects anew and swaps them in; one reload at a time.

    ``load`` reads and validates the config file (raises ConfigError); ``build`` makes the
    gateway from a config, router and context builder (the lifespan's own recipe).
    """

    def __init__(
        self,
        app: Starlette,
        parts: LiveParts,
        scraper: MetricsScraper,
        load: Callable[[], GatewayConfig] | None,
        build: Callable[[GatewayConfig, Router, ContextBuilder], Gateway],
        monitor: HealthMonitor | None = None,
    ) -> None:
        self.scraper = scraper  # the running one; the lifespan stops it at shutdown
        self.monitor = monitor  # likewise, the running health task
        self._app = app
        self._parts = parts
        self._load = load
        self._build = build
        self._lock = asyncio.Lock()

    @property
    def available(self) -> bool:
        return self._load is not None

    async def reload(self) -> ReloadReport:
        """Re-read the config and swap it in; ConfigError (nothing changed) if it is bad."""
        if self._load is None:
            raise ConfigError(["this gateway was not started from a config file"])
        async with self._lock:
            new = self._load()
            current: AppState = self._app.state.aigw
            problems = frozen_changes(current.config, new)
            if problems:
                raise ConfigError(problems)
            return await self._swap(current, new)

    async def reload_logged(self) -> None:
        """For SIGHUP: reload, and log the outcome (a bad file: every problem, at ERROR)."""
        try:
            report = await self.reload()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload refused: %s", problem)
            return
        log.info("config reloaded: %s", report.summary())

    async def _swap(self, current: AppState, new: GatewayConfig) -> ReloadReport:
        parts = self._parts
        old_router = current.gateway.router
        keep = kept_states(old_router, new)
        router = Router(new, parts.clock, parts.rng, MODEL_AWARE_FILTERS, keep)
        deployments = list(router.deployments.values())
        contexts = ContextBuilder(parts.counter, new.routing.prefix_block_chars)
        if counts_prompt_tokens(new):  # a TPM quota added: load the encoding before it counts
            parts.counter.start_loading()
        gateway = self._build(new, router, contexts)
        scraper = MetricsScraper(
            deployments, parts.scrape_client, new.routing.scrape_interval, parts.rng, parts.clock
        )
        policies = {m.name: m.policy_name for m in new.models}
        # Everything is built: from here to the swap nothing awaits, so no request sees half.
        parts.pool.open(deployments)
        parts.metrics.set_fleet(deployments, policies)
        parts.history.retain(deployments)
        if parts.tracing is not None:
            parts.tracing.set_policies(policies)
        self._app.state.aigw = replace(current, config=new, gateway=gateway)
        old_scraper, self.scraper = self.scraper, scraper
        scraper.start()
        await old_scraper.stop()
        old_monitor, self.monitor = self.monitor, start_monitor(router, new, parts)
        if old_monitor is not None:
            await old_monitor.stop()
        old_ids, new_ids = set(old_router.deployments), set(router.deployments)
        return ReloadReport(
            models=tuple(router.models),
            added=tuple(sorted(new_ids - old_ids)),
            removed=tuple(sorted(old_ids - new_ids)),
            kept=tuple(sorted(keep)),
            replaced=tuple(sorted((new_ids & old_ids) - set(keep))),
        )


def start_monitor(router: Router, config: GatewayConfig, parts: LiveParts) -> HealthMonitor:
    """The health task of ``router``'s fleet, started (the lifespan's and a reload's)."""
    monitor = HealthMonitor(
        router, config.health, parts.scrape_client, parts.ejections, parts.rng, parts.clock
    )
    monitor.start()
    return monitor
