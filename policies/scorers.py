"""Scorers: one signal each, turned into a score in [0, 1] per candidate (higher is better).

Each scorer sees the whole candidate list so that it can normalise across it (see
:func:`aigw.policies.kit.relative`); weights belong to the policy. Engine scorers read the
load estimates of :mod:`aigw.policies.load` (scrape + the gateway's dispatches since), which
fall back to the gateway-local in-flight count when the metrics are stale or absent.
:data:`SCORERS` is the name -> factory table the presets and ``weights:`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aigw.fleet.deployment import Deployment
from aigw.policies.affinity import PrefixAffinityScorer
from aigw.policies.base import Scorer
from aigw.policies.kit import ScorerKit, relative
from aigw.policies.load import LoadEstimator
from aigw.policies.predict import TtftScorer
from aigw.policies.throughput import ThroughputScorer
from aigw.policies.tuning import Tuning
from aigw.types import RouteContext

__all__ = [
    "SCORERS",
    "CostScorer",
    "ErrorRateScorer",
    "InFlightScorer",
    "KvCacheScorer",
    "PeakEwmaScorer",
    "QueueDepthScorer",
    "RunningBatchScorer",
    "request_price",
]


class InFlightScorer:
    """Least connections. Signal: ``state.in_flight`` (requests this gateway has open)."""

    __slots__ = ()
    name = "in-flight"

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        return relative([d.state.in_flight for d in candidates], 1.0)


class PeakEwmaScorer:
    """Finagle/Linkerd's peak-EWMA load: cost = latency x (in-flight + 1).

    Signals: ``state.latency`` (peak-EWMA of time to first byte) and ``state.in_flight``.
    Cold deployments (no sample yet) are explored: with nothing in flight their cost is 0,
    so the next request tries them; with requests in flight they are costed at the best
    observed latency, so they are probed one request at a time rather than flooded.
    """

    __slots__ = ()
    name = "latency"

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        latencies = [d.state.latency.value for d in candidates]
        warm = [v for v in latencies if v is not None]
        cold_latency = min(warm) if warm else 1.0
        costs = [
            (cold_latency if v is None else v) * (d.state.in_flight + 1)
            if v is not None or d.state.in_flight
            else 0.0
            for d, v in zip(candidates, latencies, strict=True)
        ]
        return relative(costs, 1e-4)


class QueueDepthScorer:
    """Shortest waiting queue. Signal: the engine's ``waiting`` requests, plus what the
    gateway sent since the scrape beyond the engine's free batch slots; with stale metrics,
    ``state.in_flight`` (pessimistic: counts running requests as queued)."""

    __slots__ = ("_loads",)
    name = "queue"

    def __init__(self, loads: LoadEstimator) -> None:
        self._loads = loads

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        loads = self._loads.loads(candidates)
        return relative([load.waiting if load.fresh else load.running for load in loads], 1.0)


class RunningBatchScorer:
    """Smallest running batch (decode steps slow as the batch grows). Signal: the engine's
    ``running`` requests plus dispatches since the scrape; stale: ``state.in_flight``."""

    __slots__ = ("_loads",)
    name = "running"

    def __init__(self, loads: LoadEstimator) -> None:
        self._loads = loads

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        return relative([load.running for load in self._loads.loads(candidates)], 1.0)


class KvCacheScorer:
    """Most free KV cache: score = 1 - kv_usage (scaled up by the batch growth since the
    scrape). Signal: the engine's ``kv_usage``; when unknown or stale, the batch fill
    ``running / capacity`` stands in for it."""

    __slots__ = ("_loads",)
    name = "kv-cache"

    def __init__(self, loads: LoadEstimator) -> None:
        self._loads = loads

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        scores = []
        for load in self._loads.loads(candidates):
            used = load.kv if load.kv is not None else load.running / load.capacity
            scores.append(1.0 - used if used < 1.0 else 0.0)
        return scores


def request_price(deployment: Deployment, ctx: RouteContext, tuning: Tuning) -> tuple[float, float]:
    """(USD for this request, tokens it is expected to use): prompt tokens at the input price
    plus expected completion tokens (the output_tokens EWMA, capped by max_tokens) at the
    output price."""
    cost = deployment.config.cost
    output = deployment.state.output_tokens.get(tuning.output_tokens)
    if ctx.max_tokens is not None and ctx.max_tokens < output:
        output = float(ctx.max_tokens)
    usd = (cost.input_per_mtok * ctx.prompt_tokens + cost.output_per_mtok * output) / 1e6
    return usd, ctx.prompt_tokens + output


class CostScorer:
    """Cheapest first. Signal: ``config.cost`` (USD per million input/output tokens) applied
    to this request's prompt and expected completion; scores are price ratios to the
    cheapest (a free deployment makes every priced one score ~0)."""

    __slots__ = ("_tuning",)
    name = "cost"

    def __init__(self, tuning: Tuning) -> None:
        self._tuning = tuning

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        tuning = self._tuning
        return relative([request_price(d, ctx, tuning)[0] for d in candidates], 1e-9)


class ErrorRateScorer:
    """Fewest failures: score = 1 - error-rate EWMA (no sample yet counts as no errors).
    Signal: ``state.errors`` (EWMA of 1 per failure, 0 per success)."""

    __slots__ = ()
    name = "errors"

    def __call__(self, candidates: Sequence[Deployment], ctx: RouteContext) -> list[float]:
        return [1.0 - d.state.errors.get(0.0) for d in candidates]


# scorer name -> factory(kit); the names are what ``weights:`` accepts.
SCORERS: dict[str, Callable[[ScorerKit], Scorer]] = {
    "in-flight": lambda kit: InFlightScorer(),
    "latency": lambda kit: PeakEwmaScorer(),
    "queue": lambda kit: QueueDepthScorer(kit.loads),
    "running": lambda kit: RunningBatchScorer(kit.loads),
    "kv-cache": lambda kit: KvCacheScorer(kit.loads),
    "prefix": lambda kit: PrefixAffinityScorer(kit.loads, kit.rendezvous),
    "cost": lambda kit: CostScorer(kit.tuning),
    "errors": lambda kit: ErrorRateScorer(),
    "ttft": lambda kit: TtftScorer(kit),
    "throughput": lambda kit: ThroughputScorer(kit.loads),
}
