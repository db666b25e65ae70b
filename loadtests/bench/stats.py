"""Summaries of one run: latency percentiles, throughput, goodput, failures, cache, balance.

All times are simulated seconds. Latency percentiles are over the *measured* requests (those
that arrived after the warm-up): TTFT over every one that got a first token, plus, as lower
bounds, those that never did (first-token timeouts count at the time they were given up on,
so an overloaded policy cannot look fast by failing); time per output token (TPOT) over those
with at least two tokens; end-to-end over completed ones and, extrapolated from their TPOT,
those still streaming when the run was cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .runner import RunData

__all__ = [
    "CPU_STARVED",
    "GATEWAY_BOUND",
    "SLO",
    "RunSummary",
    "gateway_bound",
    "machine_share",
    "percentile",
    "summarize",
]

# A run whose processes (gateway, fleet, load generator) used this share of all the
# machine's cores had them queue for a core: its latencies measure the machine as much as
# the policy (seen at 90% with W1 at 110% load on a slow day: same decisions, 4.9% vs 38.7%
# failed between two runs).
CPU_STARVED = 0.85
# A run whose gateway process (one event loop) used this share of one core on average was
# saturated through its bursts: the loop's own queueing enters every TTFT. Seen with W1 at
# 110% and time scale 0.5: gateway 82-89% of its core, mean TTFT 0.22-0.73 s for auto and
# least-latency alike; the same runs at time scale 1.0 (gateway 43-60%): 0.10-0.13 s.
GATEWAY_BOUND = 0.70


@dataclass(frozen=True, slots=True)
class SLO:
    ttft: float = 2.0  # simulated seconds
    tpot: float = 0.2


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class RunSummary:
    policy: str
    workload: str
    arrival: str
    load: float
    straggler: bool  # a backend slowed down during the run
    seed: int  # the seed the run's schedule was drawn with
    rate: float  # offered requests per simulated second
    requests: int  # measured requests sent
    completed: int
    cut: int  # still streaming at the end of the run (not failures)
    failed: int
    failed_pct: float
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    ttft_mean: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    e2e_p50: float | None
    e2e_p99: float | None
    e2e_extrapolated_pct: float
    output_tokens_per_s: float
    goodput: float  # requests per simulated second meeting both SLOs
    prefix_hit_rate: float | None
    preemptions: int
    imbalance_mean: float | None  # mean over samples of max/mean in-flight across backends
    imbalance_max: float | None
    dispatch_share: dict[str, float]  # share of measured requests per backend
    # requests in flight per backend, client side, averaged over the window's samples: where
    # the fleet held its work (a throughput question: how full each engine's batch ran)
    in_flight_mean: dict[str, float]
    cpu_pct: dict[str, float]  # % of one core over the run's wall time, per process group
    cpu_us_per_token: dict[str, float]  # CPU microseconds per output token received
    client_us_per_token: float | None
    wall_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gateway_bound(summary: RunSummary) -> bool:
    """Whether the run's gateway loop was busy ``GATEWAY_BOUND`` of the time or more."""
    return summary.cpu_pct["gateway"] >= 100.0 * GATEWAY_BOUND


def machine_share(summary: RunSummary, cores: int) -> float:
    """The share of all ``cores`` the run's processes used together, over its wall time."""
    return sum(summary.cpu_pct.values()) / (100.0 * max(1, cores))


def _imbalance(samples: Sequence[Sequence[int]]) -> tuple[float | None, float | None]:
    ratios = []
    for counts in samples:
        mean = sum(counts) / len(counts)
        if mean > 0:
            ratios.append(max(counts) / mean)
    if not ratios:
        return None, None
    return sum(ratios) / len(ratios), max(ratios)


def _mean_in_flight(run: RunData) -> dict[str, float]:
    samples = run.samples
    return {
        backend: sum(counts[i] for counts in samples) / len(samples) if samples else 0.0
        for i, backend in enumerate(run.backend_ids)
    }


def summarize(run: RunData, slo: SLO = SLO()) -> RunSummary:
    spec = run.spec
    measured = [r for r in run.records if r.measured]
    failed = [r for r in measured if r.failed]
    ttfts = [r.ttft for r in measured if r.ttft is not None]
    tpots = [r.tpot for r in measured if r.tpot is not None]
    e2es = [r.e2e for r in measured if r.e2e is not None and not r.failed]
    good = sum(
        1
        for r in measured
        if not r.failed
        and r.ttft is not None
        and r.ttft <= slo.ttft
        and (r.tpot is None or r.tpot <= slo.tpot)
    )
    shares: dict[str, float] = {b: 0.0 for b in run.backend_ids}
    dispatched = [r.deployment for r in measured if r.deployment is not None]
    for deployment in dispatched:
        shares[deployment] = shares.get(deployment, 0.0) + 1.0 / len(dispatched)
    imbalance_mean, imbalance_max = _imbalance(run.samples)
    wall = max(run.cpu.wall_seconds, 1e-9)
    tokens = sum(r.tokens for r in run.records)
    return RunSummary(
        policy=spec.policy,
        workload=spec.workload,
        arrival=spec.arrival,
        load=spec.load,
        straggler=spec.straggler is not None,
        seed=spec.seed,
        rate=spec.rate,
        requests=len(measured),
        completed=sum(1 for r in measured if r.error is None),
        cut=sum(1 for r in measured if r.error == "cut"),
        failed=len(failed),
        failed_pct=100.0 * len(failed) / max(1, len(measured)),
        ttft_p50=percentile(ttfts, 50),
        ttft_p90=percentile(ttfts, 90),
        ttft_p99=percentile(ttfts, 99),
        ttft_mean=sum(ttfts) / len(ttfts) if ttfts else None,
        tpot_p50=percentile(tpots, 50),
        tpot_p99=percentile(tpots, 99),
        e2e_p50=percentile(e2es, 50),
        e2e_p99=percentile(e2es, 99),
        e2e_extrapolated_pct=100.0
        * sum(1 for r in measured if r.e2e_extrapolated)
        / max(1, len(measured)),
        output_tokens_per_s=run.window_tokens / max(run.window_seconds, 1e-9),
        goodput=good / spec.window,
        prefix_hit_rate=run.prefix_hits / run.prefix_queries if run.prefix_queries else None,
        preemptions=run.preemptions,
        imbalance_mean=imbalance_mean,
        imbalance_max=imbalance_max,
        dispatch_share=shares,
        in_flight_mean=_mean_in_flight(run),
        cpu_pct={
            "fleet": 100.0 * run.cpu.fleet_seconds / wall,
            "gateway": 100.0 * run.cpu.gateway_seconds / wall,
            "loadgen": 100.0 * run.cpu.client_seconds / wall,
        },
        cpu_us_per_token={
            "fleet": 1e6 * run.cpu.fleet_seconds / max(1, tokens),
            "gateway": 1e6 * run.cpu.gateway_seconds / max(1, tokens),
            "loadgen": 1e6 * run.cpu.client_seconds / max(1, tokens),
        },
        client_us_per_token=1e6 * run.cpu.client_seconds / tokens if tokens else None,
        wall_seconds=run.cpu.wall_seconds,
    )
