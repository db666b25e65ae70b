"""Deployments and their live state, read by policies and written by the gateway.

A :class:`Deployment` is built once at startup from its config; its :class:`DeploymentState`
is the one mutable object per deployment (in-flight count, latency EWMAs, failure streak,
ejection). Everything here runs on the event loop thread, so plain attributes need no locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from aigw.config import DeploymentConfig
from aigw.fleet.prefix import PrefixLRU
from aigw.fleet.signals import EngineSnapshot, Ewma, PeakEwma, RatioEwma
from aigw.providers.base import Provider

__all__ = ["Deployment", "DeploymentState"]


@dataclass(slots=True)
class DeploymentState:
    """Gateway-local signals of one deployment, plus its last engine scrape.

    Written by the gateway (dispatch, completion, failure) and the metrics scraper; read by
    policies. ``dispatched`` counts every dispatch; the scraper records it with each
    snapshot so that policies can add the gateway's own dispatches since the last scrape.
    """

    in_flight: int = 0
    # Prompt tokens of this gateway's streams sent here that have no first token yet: the
    # prefill the engine still has to do for them, ahead of the next request.
    prefill_backlog: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    ejections: int = 0  # ejections in the current failure streak (drives back-off)
    ejected_total: int = 0  # ejections ever (for /metrics)
    ejected_until: float = 0.0  # loop time; 0 = not ejected
    retry_after_until: float = 0.0  # loop time the upstream's Retry-After asked us to wait to
    last_error: str | None = None
    draining: bool = False
    probe_up: bool | None = None  # the active probe's verdict; None: not probed (yet)
    probe_streak: int = 0  # consecutive probe results contrary to probe_up (towards rise/fall)
    slow_start_from: float = 0.0  # loop time it re-entered rotation; its share ramps from there
    demotion: float = 1.0  # share multiplier from predictive demotion (aigw.routing.health)
    ttft_baseline: float | None = None  # demotion's reference: its lowest ttft EWMA, relaxing
    ttft: Ewma = field(default_factory=Ewma)  # seconds to the first streamed byte
    tpot: Ewma = field(default_factory=Ewma)  # seconds per output token after the first
    latency: PeakEwma = field(default_factory=PeakEwma)  # time to first byte, peak-EWMA
    errors: Ewma = field(default_factory=lambda: Ewma(alpha=0.1))  # 1 per failure, 0 per success
    output_tokens: Ewma = field(default_factory=Ewma)  # completion tokens per request
    # (TTFT - one step) / prompt tokens of unqueued first bytes, as a ratio of EWMAs
    prefill_per_token: RatioEwma = field(default_factory=RatioEwma)
    engine: EngineSnapshot | None = None
    batch_limit: float | None = None  # most requests the engine was seen running with a queue
    completion_rate: Ewma = field(default_factory=lambda: Ewma(alpha=0.3))  # engine, requests/s
    engine_stale: bool = True  # no snapshot, or older than routing.stale_after_intervals
    dispatched: int = 0  # requests sent, ever
    prefixes: PrefixLRU = field(default_factory=lambda: PrefixLRU(16384))
    last_scores: dict[str, float] = field(default_factory=dict)  # last decision, for /admin

    def observe_first_byte(self, seconds: float, now: float) -> None:
        self.ttft.add(seconds)
        self.latency.add(seconds, now)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream serving one public model, with everything fixed built once."""

    id: str
    model: str  # the public model name clients send
    config: DeploymentConfig
    provider: Provider
    timeout: aiohttp.ClientTimeout  # connect + total; first-byte and idle are enforced per read
    state: DeploymentState = field(default_factory=DeploymentState)

    @property
    def at_capacity(self) -> bool:
        limit = self.config.max_concurrency
        return limit is not None and self.state.in_flight >= limit
