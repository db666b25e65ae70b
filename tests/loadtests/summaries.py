"""Hand-built RunSummary objects for the report and aggregation tests."""

from __future__ import annotations

from typing import Any

from loadtests.bench.stats import RunSummary

_BASE: dict[str, Any] = {
    "policy": "auto",
    "workload": "W1",
    "arrival": "poisson",
    "load": 0.8,
    "straggler": False,
    "seed": 1,
    "rate": 10.0,
    "requests": 150,
    "completed": 140,
    "cut": 10,
    "failed": 0,
    "failed_pct": 0.0,
    "ttft_p50": 0.1,
    "ttft_p90": 0.2,
    "ttft_p99": 0.5,
    "ttft_mean": 0.15,
    "tpot_p50": 0.03,
    "tpot_p99": 0.04,
    "e2e_p50": 5.0,
    "e2e_p99": 9.0,
    "e2e_extrapolated_pct": 5.0,
    "output_tokens_per_s": 7000.0,
    "goodput": 9.5,
    "prefix_hit_rate": 0.01,
    "preemptions": 0,
    "imbalance_mean": 1.2,
    "imbalance_max": 2.0,
    "dispatch_share": {"h100-0": 0.5, "l4-0": 0.5},
    "in_flight_mean": {"h100-0": 40.0, "l4-0": 10.0},
    "cpu_pct": {"fleet": 50.0, "gateway": 60.0, "loadgen": 20.0},
    "cpu_us_per_token": {"fleet": 40.0, "gateway": 55.0, "loadgen": 15.0},
    "client_us_per_token": 15.0,
    "wall_seconds": 14.0,
}


def run(**fields: Any) -> RunSummary:
    """A plausible RunSummary; ``fields`` override the defaults."""
    return RunSummary(**{**_BASE, **fields})


def runs(policy: str, p99s: list[float], **fields: Any) -> list[RunSummary]:
    """One run per seed 1..N of ``policy`` with the given TTFT p99s."""
    return [
        run(policy=policy, seed=seed, ttft_p99=p99, **fields) for seed, p99 in enumerate(p99s, 1)
    ]
