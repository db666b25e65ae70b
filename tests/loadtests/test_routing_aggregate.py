"""Runs over seeds folded into medians and spreads, and auto's verdicts (loadtests.bench.aggregate).

Pure functions on hand-built RunSummary objects: no process, no socket.
"""

from __future__ import annotations

import pytest

from loadtests.bench.aggregate import Spread, aggregate, compare, spread, verdict
from loadtests.bench.sweep import Scenario

from .summaries import run, runs


def test_spread_is_median_min_max_of_present_values() -> None:
    assert spread([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert spread([4.0, 1.0]) == Spread(2.5, 1.0, 4.0, 2)  # even count: mean of the middle two
    assert spread([None, 5.0, None]) == Spread(5.0, 5.0, 5.0, 1)
    assert spread([None, None]) is None
    assert spread([]) is None


@pytest.mark.parametrize(
    ("reference", "other", "expected"),
    [
        (Spread(1.0, 0.8, 1.2, 3), Spread(2.0, 1.5, 2.5, 3), "better"),  # worst beats their best
        (Spread(2.0, 1.5, 2.5, 3), Spread(1.0, 0.8, 1.2, 3), "worse"),
        (Spread(1.0, 0.8, 1.6, 3), Spread(2.0, 1.5, 2.5, 3), "overlap"),  # medians differ 2x
        (Spread(1.0, 0.8, 1.5, 3), Spread(2.0, 1.5, 2.5, 3), "overlap"),  # touching ends
        (Spread(1.0, 1.0, 1.0, 1), Spread(1.1, 1.1, 1.1, 1), "better"),  # one seed: points
        (Spread(1.0, 1.0, 1.0, 1), Spread(1.0, 1.0, 1.0, 1), "overlap"),
    ],
)
def test_verdict_ranks_only_separate_spreads(
    reference: Spread, other: Spread, expected: str
) -> None:
    assert verdict(reference, other) == expected


def test_aggregate_groups_by_policy_and_scenario_over_seeds() -> None:
    summaries = [
        *runs("auto", [0.5, 0.7, 0.6], output_tokens_per_s=7000.0),
        *runs("auto", [2.0], straggler=True),
        run(policy="round-robin", seed=1, prefix_hit_rate=None),
        run(policy="round-robin", seed=2, prefix_hit_rate=0.02),
    ]
    found = {(a.policy, a.scenario.straggler): a for a in aggregate(summaries)}
    assert set(found) == {("auto", False), ("auto", True), ("round-robin", False)}
    auto = found["auto", False]
    assert auto.scenario == Scenario("W1", "poisson", 0.8)
    assert auto.seeds == (1, 2, 3)
    assert auto.get("ttft_p99") == Spread(0.6, 0.5, 0.7, 3)
    assert auto.median("output_tokens_per_s") == 7000.0
    assert found["auto", True].get("ttft_p99") == Spread(2.0, 2.0, 2.0, 1)
    # a figure missing from some seeds: the spread of the others
    assert found["round-robin", False].get("prefix_hit_rate") == Spread(0.02, 0.02, 0.02, 1)


def test_throughput_is_also_compared_seed_by_seed_with_the_best_other_policy() -> None:
    """Seeds differ in their schedules by more than policies differ: the median of auto's
    per-seed difference to the strongest other policy, with its spread."""
    summaries = [
        *[
            run(policy="least-connections", seed=k, output_tokens_per_s=v)
            for k, v in ((1, 5000.0), (2, 6000.0), (3, 7000.0))
        ],
        *[
            run(policy="round-robin", seed=k, output_tokens_per_s=v)
            for k, v in ((1, 4000.0), (2, 4500.0), (3, 5000.0))
        ],
        *[
            run(policy="auto", seed=k, output_tokens_per_s=v)
            for k, v in ((1, 5100.0), (2, 5940.0), (3, 7070.0))
        ],
    ]
    [scenario] = compare(aggregate(summaries), {})
    t = scenario.throughput
    assert t is not None
    assert t.best_policy == "least-connections" and t.difference_pct == pytest.approx(-1.0)
    assert t.rival == "least-connections"
    assert t.paired_pct is not None
    assert (t.paired_pct.median, t.paired_pct.low, t.paired_pct.high) == pytest.approx(
        (1.0, -1.0, 2.0)
    )
    assert t.paired_pct.n == 3


def test_compare_gives_verdicts_ratios_and_throughput() -> None:
    summaries = [
        *runs("round-robin", [1.0, 1.2, 1.4], ttft_mean=0.3, output_tokens_per_s=6000.0),
        *runs("least-connections", [0.6, 0.8, 0.9], ttft_mean=0.16, output_tokens_per_s=8000.0),
        *runs("auto", [0.5, 0.7, 0.8], ttft_mean=0.15, output_tokens_per_s=7600.0),
    ]
    [scenario] = compare(aggregate(summaries), {})
    assert scenario.reference == "auto"
    assert [p.policy for p in scenario.against] == ["round-robin", "least-connections"]
    rr, lc = scenario.against
    assert rr.ttft_p99 is not None and rr.ttft_p99.verdict == "better"
    assert rr.ttft_p99.ratio == pytest.approx(0.7 / 1.2)
    assert lc.ttft_p99 is not None and lc.ttft_p99.verdict == "overlap"
    assert lc.ttft_mean is not None and lc.ttft_mean.verdict == "better"  # 0.15 < 0.16 always
    assert lc.ttft_mean.ratio == pytest.approx(0.15 / 0.16)
    assert scenario.throughput is not None
    assert scenario.throughput.best_policy == "least-connections"
    assert scenario.throughput.difference_pct == pytest.approx(-5.0)
    assert scenario.prefix is None  # W1


def test_compare_w2_prefix_ratios_use_the_ideal_bound_median() -> None:
    w2 = {"workload": "W2"}
    summaries = [
        run(policy="round-robin", seed=1, prefix_hit_rate=0.20, **w2),
        run(policy="round-robin", seed=2, prefix_hit_rate=0.30, **w2),
        run(policy="auto", seed=1, prefix_hit_rate=0.50, **w2),
        run(policy="auto", seed=2, prefix_hit_rate=0.70, **w2),
    ]
    profiles = {"W2/poisson/80%": {1: (0.2, 0.7), 2: (0.25, 0.9)}}
    [scenario] = compare(aggregate(summaries), profiles)
    prefix = scenario.prefix
    assert prefix is not None
    assert prefix.reference == pytest.approx(0.6)
    assert prefix.baseline == pytest.approx(0.25)
    assert prefix.over_baseline == pytest.approx(2.4)
    assert prefix.ideal == pytest.approx(0.8)
    assert prefix.over_ideal == pytest.approx(0.75)


def test_compare_skips_scenarios_without_the_reference_and_missing_figures() -> None:
    summaries = [
        run(policy="round-robin", load=0.3),
        run(policy="auto", ttft_p99=None, ttft_mean=None),
        run(policy="least-connections"),
    ]
    [scenario] = compare(aggregate(summaries), {})
    assert scenario.scenario.load == 0.8
    [lc] = scenario.against
    assert lc.ttft_p99 is None and lc.ttft_mean is None


def test_single_seed_aggregate_is_the_run_itself() -> None:
    one = run(policy="auto", seed=7)
    [a] = aggregate([one])
    assert a.seeds == (7,)
    for name, value in a.figures.items():
        assert value == Spread(getattr(one, name), getattr(one, name), getattr(one, name), 1)
