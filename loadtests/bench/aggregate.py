"""Runs over several seeds, folded: medians and spreads per (policy, scenario), and ``auto``
against every other policy.

One seed's tails are noisy (p99 TTFT near saturation can differ 2x between two runs of one
scenario), so a ranking rests on the spread over seeds, not on one run. A spread is the
median, minimum and maximum over the seeds a (policy, scenario) ran with. ``auto`` is
*better* than a policy on a latency figure only when its worst seed beats that policy's best
seed (``auto.high < other.low``), *worse* in the mirror case, and otherwise the spreads
*overlap*: not ranked. With one seed a spread is a point, so the verdict compares single runs.

Ratios are of medians: auto's median over the other policy's median.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .stats import RunSummary
from .sweep import Scenario, scenario_key

__all__ = [
    "FIGURES",
    "REFERENCE",
    "LatencyComparison",
    "PolicyAggregate",
    "PolicyComparison",
    "PrefixComparison",
    "ScenarioComparison",
    "Spread",
    "ThroughputComparison",
    "Verdict",
    "aggregate",
    "compare",
    "scenario_of",
    "spread",
    "verdict",
]

REFERENCE = "auto"  # the policy every other one is compared with
BASELINE = "round-robin"  # the prefix hit rate's yardstick
# RunSummary's figures that get a median over seeds (all of the main table's numbers).
FIGURES = (
    "rate",
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "ttft_mean",
    "tpot_p50",
    "tpot_p99",
    "e2e_p50",
    "e2e_p99",
    "output_tokens_per_s",
    "goodput",
    "failed_pct",
    "prefix_hit_rate",
    "imbalance_mean",
)

Verdict = Literal["better", "worse", "overlap"]


@dataclass(frozen=True, slots=True)
class Spread:
    """One figure over seeds: median, minimum, maximum, and how many seeds had a value."""

    median: float
    low: float
    high: float
    n: int


def spread(values: Iterable[float | None]) -> Spread | None:
    """The spread of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


def verdict(reference: Spread, other: Spread) -> Verdict:
    """``reference`` against ``other`` on a figure where lower is better (a latency)."""
    if reference.high < other.low:
        return "better"
    if reference.low > other.high:
        return "worse"
    return "overlap"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def scenario_of(s: RunSummary) -> Scenario:
    return Scenario(s.workload, s.arrival, s.load, s.straggler)


@dataclass(frozen=True, slots=True)
class PolicyAggregate:
    """One policy on one scenario over the seeds it ran with."""

    policy: str
    scenario: Scenario
    seeds: tuple[int, ...]
    figures: Mapping[str, Spread]  # FIGURES name -> spread; absent when no seed had a value
    # output tokens per second of each seed's run: seeds share their schedule across
    # policies, so comparing seed by seed removes the workload's own variation
    tokens_by_seed: Mapping[int, float] = field(default_factory=dict)

    def get(self, figure: str) -> Spread | None:
        return self.figures.get(figure)

    def median(self, figure: str) -> float | None:
        found = self.figures.get(figure)
        return None if found is None else found.median


def aggregate(summaries: Iterable[RunSummary]) -> list[PolicyAggregate]:
    """One PolicyAggregate per (policy, scenario), in the order of their first run."""
    groups: dict[tuple[str, Scenario], list[RunSummary]] = {}
    for s in summaries:
        groups.setdefault((s.policy, scenario_of(s)), []).append(s)
    out = []
    for (policy, scenario), runs in groups.items():
        figures = {}
        for name in FIGURES:
            found = spread(getattr(r, name) for r in runs)
            if found is not None:
                figures[name] = found
        by_seed = {r.seed: r.output_tokens_per_s for r in runs}
        out.append(PolicyAggregate(policy, scenario, tuple(r.seed for r in runs), figures, by_seed))
    return out


@dataclass(frozen=True, slots=True)
class LatencyComparison:
    """The reference's and another policy's spreads of one latency figure."""

    reference: Spread
    other: Spread
    ratio: float | None  # reference median / other median
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class PolicyComparison:
    policy: str  # the policy the reference is compared with
    ttft_p99: LatencyComparison | None  # None when either side has no value
    ttft_mean: LatencyComparison | None


@dataclass(frozen=True, slots=True)
class ThroughputComparison:
    reference: float  # median output tokens per second
    best_policy: str  # the policy with the highest median (may be the reference)
    best: float
    difference_pct: float  # 100 x (reference / best - 1): 0 or negative
    # the other policy with the highest median, and 100 x (reference / it - 1) seed by seed
    # (the seeds both ran); None without another policy or a common seed
    rival: str | None = None
    paired_pct: Spread | None = None


@dataclass(frozen=True, slots=True)
class PrefixComparison:
    """Prefix cache hit rates (medians over seeds) of a prefix-heavy scenario."""

    reference: float | None
    baseline: float | None  # round-robin's
    over_baseline: float | None  # reference / baseline
    ideal: float | None  # the ideal affinity router's bound (workload.prefix_profile)
    over_ideal: float | None  # reference / ideal


@dataclass(frozen=True, slots=True)
class ScenarioComparison:
    scenario: Scenario
    reference: str
    against: tuple[PolicyComparison, ...]
    throughput: ThroughputComparison | None
    prefix: PrefixComparison | None  # W2 scenarios only


def _latency(ref: PolicyAggregate, other: PolicyAggregate, figure: str) -> LatencyComparison | None:
    a, b = ref.get(figure), other.get(figure)
    if a is None or b is None:
        return None
    return LatencyComparison(a, b, _ratio(a.median, b.median), verdict(a, b))


def _throughput(ref: PolicyAggregate, rows: Sequence[PolicyAggregate]) -> ThroughputComparison:
    # On a tie the reference is the best: "auto is behind by 0%" would read oddly.
    ranked = [(r.median("output_tokens_per_s") or 0.0, r is ref, r.policy) for r in rows]
    best, _, best_policy = max(ranked, key=lambda t: (t[0], t[1]))
    own = ref.median("output_tokens_per_s") or 0.0
    difference = 100.0 * (own / best - 1.0) if best > 0 else 0.0
    others = [r for r in rows if r is not ref]
    if not others:
        return ThroughputComparison(own, best_policy, best, difference)
    rival = max(others, key=lambda r: r.median("output_tokens_per_s") or 0.0)
    paired = spread(
        100.0 * (tokens / rival.tokens_by_seed[seed] - 1.0)
        for seed, tokens in ref.tokens_by_seed.items()
        if rival.tokens_by_seed.get(seed)
    )
    return ThroughputComparison(own, best_policy, best, difference, rival.policy, paired)


def _prefix(
    ref: PolicyAggregate,
    baseline: PolicyAggregate | None,
    profiles: Mapping[int, tuple[float, float]],
) -> PrefixComparison:
    own = ref.median("prefix_hit_rate")
    base = None if baseline is None else baseline.median("prefix_hit_rate")
    ideals = spread(ideal for _, ideal in profiles.values())
    ideal = None if ideals is None else ideals.median
    return PrefixComparison(own, base, _ratio(own, base), ideal, _ratio(own, ideal))


def compare(
    aggregates: Sequence[PolicyAggregate],
    prefix_profiles: Mapping[str, Mapping[int, tuple[float, float]]],
    reference: str = REFERENCE,
) -> list[ScenarioComparison]:
    """``reference`` against every other policy, per scenario where it ran (in the order of
    ``aggregates``). ``prefix_profiles``: SweepResult.prefix_profiles (scenario_key -> seed
    -> (system share, ideal hit rate)); the ideal bound is the median over seeds."""
    scenarios: dict[Scenario, list[PolicyAggregate]] = {}
    for a in aggregates:
        scenarios.setdefault(a.scenario, []).append(a)
    out = []
    for scenario, rows in scenarios.items():
        by_policy = {r.policy: r for r in rows}
        ref = by_policy.get(reference)
        if ref is None:
            continue
        against = tuple(
            PolicyComparison(r.policy, _latency(ref, r, "ttft_p99"), _latency(ref, r, "ttft_mean"))
            for r in rows
            if r.policy != reference
        )
        prefix = None
        if scenario.workload == "W2":
            profiles = prefix_profiles.get(scenario_key(scenario), {})
            prefix = _prefix(ref, by_policy.get(BASELINE), profiles)
        out.append(ScenarioComparison(scenario, reference, against, _throughput(ref, rows), prefix))
    return out
