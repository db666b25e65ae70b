from __future__ import annotations

import pytest

from aigw.fleet.signals import EngineSnapshot
from aigw.policies.load import Load, LoadEstimator, estimate_load
from aigw.policies.tuning import Tuning
from tests.policies.conftest import fleet, gpu, gpus, scrape

TUNING = Tuning()


def test_stale_or_absent_metrics_fall_back_to_in_flight() -> None:
    _, deps = fleet(gpu("a"), gpu("b", max_concurrency=8))
    a, b = deps
    a.state.in_flight = 5
    assert estimate_load(a, TUNING) == Load(5.0, 0.0, 32.0, None, False)
    scrape(b, waiting=9, running=3)
    b.state.engine_stale = True
    b.state.in_flight = 2
    assert estimate_load(b, TUNING) == Load(2.0, 0.0, 8.0, None, False)


def test_dispatches_since_the_scrape_are_added() -> None:
    _, [d] = gpus(1)
    d.state.in_flight = 4
    scrape(d, running=6, kv=0.3)  # room for 6 / 0.3 = 20 running
    d.state.in_flight = 7  # three sent since
    load = estimate_load(d, TUNING)
    assert load.fresh and load.running == 9 and load.waiting == 0
    assert load.capacity == pytest.approx(20.0)
    assert load.kv == pytest.approx(0.3 * 9 / 6)  # the KV fill grows with the batch


def test_completions_since_the_scrape_shrink_the_queue_first() -> None:
    _, [d] = gpus(1)
    d.state.in_flight = 10
    scrape(d, running=8, waiting=4)
    d.state.in_flight = 7
    load = estimate_load(d, TUNING)
    assert (load.running, load.waiting, load.capacity) == (8, 1, 8)
    d.state.in_flight = 0  # ten finished: the two left are other gateways' requests
    assert estimate_load(d, TUNING)[:2] == (2, 0)
    # more finished than the engine ran (a scrape race): never negative
    d.state.engine = EngineSnapshot(scraped_at=0.0, waiting=0.0, running=1.0, in_flight_at_scrape=5)
    assert estimate_load(d, TUNING)[:2] == (0, 0)


def test_a_waiting_queue_on_a_full_cache_means_the_batch_is_full() -> None:
    _, [d] = gpus(1)
    scrape(d, running=12, waiting=3, kv=1.0)
    d.state.in_flight = 2
    load = estimate_load(d, TUNING)
    assert (load.running, load.waiting, load.capacity) == (12, 5, 12)
    scrape(d, running=12, waiting=3)  # no KV reading: the queue says full
    d.state.in_flight = 4
    assert estimate_load(d, TUNING)[:3] == (12, 5, 12)


def test_a_queue_with_kv_room_is_not_a_full_batch() -> None:
    """Requests waiting while half the cache is free wait for the step's token budget
    (chunked prefill), not for a slot: the KV room still bounds the batch (issue 11)."""
    _, [d] = gpus(1)
    scrape(d, running=12, waiting=3, kv=0.5)
    d.state.in_flight = 2
    load = estimate_load(d, TUNING)
    assert (load.running, load.waiting, load.capacity) == (17, 0, 24)
    scrape(d, running=12, waiting=20, kv=0.5)  # more than the free half holds
    assert estimate_load(d, TUNING)[:3] == (24, 8, 24)


def test_without_kv_or_queue_capacity_is_max_concurrency_or_assumed() -> None:
    _, deps = fleet(gpu("a", max_concurrency=4), gpu("b"))
    scrape(deps[0], running=2)
    scrape(deps[1], running=50)
    assert estimate_load(deps[0], TUNING).capacity == 4
    assert estimate_load(deps[1], TUNING).capacity == 51  # at least one more than it runs


def test_estimator_remembers_only_inside_a_decision() -> None:
    _, deps = gpus(2)
    estimator = LoadEstimator(TUNING)
    first = estimator.loads(deps)
    deps[0].state.in_flight = 3
    assert estimator.loads(deps) != first  # outside a decision: always current
    estimator.begin()
    inside = estimator.loads(deps)
    deps[0].state.in_flight = 9
    assert estimator.loads(deps) is inside  # same decision, same candidates: computed once
    assert estimator.loads(list(deps)) is not inside  # another candidate list is recomputed
    estimator.end()
    assert estimator.loads(deps)[0].running == 9


def test_the_batch_limit_caps_what_kv_room_promises() -> None:
    """An engine limited to 16 sequences with a KV cache 40% full at 16 running would look
    like 40 slots from the KV fill alone: the next request would be predicted to start at
    once while it actually waits."""
    _, deps = fleet(gpu("configured", max_num_seqs=16), gpu("learnt"), gpu("unknown"))
    configured, learnt, unknown = deps
    learnt.state.batch_limit = 16.0
    for d in deps:
        scrape(d, running=16, kv=0.4)
    assert estimate_load(unknown, TUNING).capacity == pytest.approx(40.0)
    for d in (configured, learnt):
        load = estimate_load(d, TUNING)
        assert load.capacity == 16 and load.running == 16 and load.waiting == 0
        d.state.in_flight += 1  # one more sent since the scrape: it waits
        assert estimate_load(d, TUNING)[:3] == (16, 1, 16)


def test_a_batch_limit_without_kv_reading_is_the_capacity() -> None:
    _, [d] = fleet(gpu("a", max_num_seqs=8, max_concurrency=100))
    scrape(d, running=3)
    assert estimate_load(d, TUNING).capacity == 8
    d.state.engine_stale = True
    assert estimate_load(d, TUNING).capacity == 8


def test_loads_narrowed_within_a_decision_are_reused_not_estimated_again() -> None:
    _, deps = gpus(3)
    for d, running in zip(deps, [1, 2, 3], strict=True):
        scrape(d, running=running, kv=0.1)
    loads = LoadEstimator(Tuning())
    loads.begin()
    every = loads.loads(deps)
    kept = [deps[0], deps[2]]
    loads.narrow(kept, [0, 2])
    deps[2].state.in_flight += 5  # not seen: the decision's estimates stand
    assert loads.loads(kept) == [every[0], every[2]]
    loads.end()
    assert loads.loads(kept)[1].running == 8.0  # outside a decision: current state
