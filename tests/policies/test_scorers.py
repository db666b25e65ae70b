from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.fleet.deployment import Deployment
from aigw.policies.kit import ScorerKit, relative
from aigw.policies.scorers import (
    SCORERS,
    CostScorer,
    ErrorRateScorer,
    InFlightScorer,
    KvCacheScorer,
    PeakEwmaScorer,
    QueueDepthScorer,
    RunningBatchScorer,
)
from aigw.policies.throughput import ThroughputScorer
from aigw.policies.tuning import Tuning
from tests.policies.conftest import cloud, fleet, gpu, gpus, request, scrape
from tests.policies.strategies import fleets, requests

KIT = ScorerKit.build(Tuning())
REQ = request(prompt_tokens=1000)


def test_relative_keeps_proportions() -> None:
    assert relative([0, 1, 3], 1.0) == [1.0, 0.5, 0.25]
    assert relative([10, 11], 1.0) == pytest.approx([1.0, 11 / 12])
    assert relative([2.0, 2.0], 1e-3) == [1.0, 1.0]
    assert relative([], 1.0) == []


def test_in_flight_prefers_fewest_connections() -> None:
    _, deps = gpus(3)
    for d, n in zip(deps, [4, 0, 1], strict=True):
        d.state.in_flight = n
    assert InFlightScorer()(deps, REQ) == [0.2, 1.0, 0.5]


def test_peak_ewma_weighs_latency_by_load() -> None:
    _, deps = gpus(2)
    fast, slow = deps
    fast.state.latency.add(0.1, 0.0)
    slow.state.latency.add(0.5, 0.0)
    scorer = PeakEwmaScorer()
    assert scorer(deps, REQ)[0] == 1.0 and scorer(deps, REQ)[1] < 0.25
    fast.state.in_flight = 9  # 0.1 x 10 = 1.0 > 0.5 x 1
    scores = scorer(deps, REQ)
    assert scores[1] == 1.0 and scores[0] < 0.55


def test_peak_ewma_explores_cold_deployments_one_request_at_a_time() -> None:
    _, deps = gpus(2)
    warm, cold = deps
    warm.state.latency.add(0.2, 0.0)
    scorer = PeakEwmaScorer()
    assert scorer(deps, REQ) == [pytest.approx(1e-4 / (0.2 + 1e-4)), 1.0]  # untried: try it
    cold.state.in_flight = 1  # a probe is out: now costed at the best warm latency x 2
    scores = scorer(deps, REQ)
    assert scores[0] == 1.0 and scores[1] == pytest.approx(0.2001 / 0.4001)


def test_queue_depth_from_engine_and_in_flight_when_stale() -> None:
    _, deps = gpus(3)
    scrape(deps[0], waiting=3, running=8)
    scrape(deps[1], waiting=0, running=8, kv=0.5)
    deps[2].state.in_flight = 1  # never scraped: in-flight stands in for the queue
    scorer = QueueDepthScorer(KIT.loads)
    assert scorer(deps, REQ) == [0.25, 1.0, 0.5]
    scrape(deps[1], waiting=1, running=8)  # full now; the gateway sends it two more
    deps[1].state.in_flight += 2
    assert scorer(deps, REQ) == [0.5, 0.5, 1.0]


def test_running_batch_counts_dispatches_since_scrape() -> None:
    _, deps = gpus(2)
    scrape(deps[0], running=2)
    scrape(deps[1], running=0)
    deps[1].state.in_flight = 5  # sent after the scrape that showed it idle
    assert RunningBatchScorer(KIT.loads)(deps, REQ) == [1.0, 0.5]


def test_kv_cache_free_share_with_batch_fill_fallback() -> None:
    _, deps = fleet(cloud("c0", max_concurrency=10))
    _, gpu_deps = gpus(2)
    scrape(gpu_deps[0], running=4, kv=0.8)
    scrape(gpu_deps[1], running=4, kv=0.2)
    deps[0].state.in_flight = 5  # no KV reading: 5 of 10 slots used stands in
    scores = KvCacheScorer(KIT.loads)([*gpu_deps, *deps], REQ)
    assert scores == pytest.approx([0.2, 0.8, 0.5])


def test_cost_prefers_the_cheapest_for_this_request() -> None:
    _, deps = fleet(
        cloud("cheap", cost={"input_per_mtok": 1, "output_per_mtok": 2}),
        cloud("pricey", cost={"input_per_mtok": 2, "output_per_mtok": 4}),
        cloud("output-heavy", cost={"input_per_mtok": 0.5, "output_per_mtok": 40}),
    )
    scorer = CostScorer(Tuning())
    # 1000 prompt + 100 output tokens: 1200, 2400, 4500 micro-USD
    scores = scorer(deps, request(prompt_tokens=1000, max_tokens=100))
    assert scores == pytest.approx([1.0, 0.5, 1200 / 4500])
    # prompt-only (embeddings-like) requests flip the order
    scores = scorer(deps, request(prompt_tokens=1000, max_tokens=1))
    assert scores[2] == 1.0


def test_error_rate_scorer() -> None:
    _, deps = gpus(2)
    deps[0].state.errors.add(1.0)
    deps[0].state.errors.add(0.0)
    assert ErrorRateScorer()(deps, REQ) == pytest.approx([0.1, 1.0])  # EWMA: 1, then 0.9


def test_scorer_table_names_match_the_scorers() -> None:
    for name, factory in SCORERS.items():
        assert factory(KIT).name == name


@settings(max_examples=40, deadline=None)
@given(fleets(), requests(), st.sampled_from(sorted(SCORERS)))
def test_every_scorer_gives_one_score_in_unit_interval_per_candidate(fm, ctx, name) -> None:  # type: ignore[no-untyped-def]
    _, deps = fm
    scores = SCORERS[name](ScorerKit.build(Tuning()))(deps, ctx)
    assert len(scores) == len(deps)
    assert all(0.0 <= s <= 1.0 for s in scores)


def _stepping(*lines: tuple[float, float] | None) -> list[Deployment]:
    """GPU deployments, each with the decode step line (base_ms, per_seq_ms) given, or none."""
    specs = [
        gpu(f"g{i}")
        if line is None
        else gpu(f"g{i}", decode_step={"base_ms": line[0], "per_seq_ms": line[1]})
        for i, line in enumerate(lines)
    ]
    return fleet(*specs)[1]


def _throughput(deps: list[Deployment]) -> list[float]:
    return ThroughputScorer(ScorerKit.build(Tuning()).loads)(deps, REQ)


def test_throughput_prefers_the_engine_where_one_more_sequence_adds_most() -> None:
    """A fast engine (6 ms + 0.3 ms/seq) running 100 and a slow one (45 ms + 1.4 ms/seq)
    running 20: one more sequence adds 6/36.3² = 4.6 tokens/ms on the first, 45/74.4² = 8.1
    on the second (base / step²). Idle, the fast one wins: 6/6.3² = 151 against 45/46.4² = 21."""
    deps = _stepping((6.0, 0.3), (45.0, 1.4))
    scrape(deps[0], running=100, kv=0.5)
    scrape(deps[1], running=20, kv=0.5)
    gain = [6.0 / (6.0 + 0.3 * 101) ** 2, 45.0 / (45.0 + 1.4 * 21) ** 2]
    assert _throughput(deps) == pytest.approx([gain[0] / gain[1], 1.0])

    scrape(deps[0], running=0)
    scrape(deps[1], running=0)
    scores = _throughput(deps)
    assert scores[0] == 1.0 and scores[1] < 0.2


def test_throughput_counts_the_gateways_dispatches_since_the_scrape() -> None:
    deps = _stepping((10.0, 1.0), (10.0, 1.0))
    scrape(deps[0], running=10, kv=0.2)
    scrape(deps[1], running=10, kv=0.2)
    deps[0].state.in_flight += 30  # sent since the scrape: its batch is 40 now
    scores = _throughput(deps)
    assert scores[1] == 1.0 and scores[0] < scores[1]


def test_throughput_gives_nothing_for_an_engine_whose_batch_is_full() -> None:
    deps = _stepping((10.0, 1.0), (10.0, 1.0))
    scrape(deps[0], running=16, waiting=3, kv=1.0)  # full: the request would wait
    scrape(deps[1], running=200, kv=0.9)
    assert _throughput(deps) == [0.0, 1.0]


@pytest.mark.parametrize("missing", ["line", "metrics"])
def test_throughput_has_no_opinion_without_a_line_and_fresh_metrics_for_everyone(
    missing: str,
) -> None:
    deps = _stepping((10.0, 1.0), (10.0, 1.0), None if missing == "line" else (10.0, 1.0))
    for d, running in zip(deps, [0, 50, 100], strict=True):
        scrape(d, running=running, kv=0.3)
    if missing == "metrics":
        deps[2].state.engine_stale = True
    assert _throughput(deps) == [1.0] * 3
