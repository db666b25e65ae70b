"""FleetHistory: per-deployment rolling windows from attempt events, on a hand-driven clock."""

from __future__ import annotations

import math
import random
import timeit

import pytest

from aigw.configfile import parse_config
from aigw.errors import InvalidRequestError, UpstreamConnectionError
from aigw.fleet.attempt import Attempt
from aigw.fleet.deployment import Deployment
from aigw.fleet.signals import EngineSnapshot
from aigw.routing.history import BINS, BUCKET_S, BUCKETS, FleetHistory, bin_of, percentile
from aigw.routing.router import build_deployment
from aigw.types import Endpoint, RouteContext


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_deployment(id: str = "a") -> Deployment:
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "deployments": [{"id": id, "base_url": "http://127.0.0.1:9/v1", "model": "m"}],
                }
            ]
        },
        source="<test>",
    )
    return build_deployment(config.models[0].deployments[0], "m")


def attempt(deployment: Deployment, started_at: float) -> Attempt:
    ctx = RouteContext(endpoint=Endpoint.CHAT, model="m", body={}, request_id="r")
    return Attempt(deployment, ctx, 1, started_at)


def serve(
    history: FleetHistory, deployment: Deployment, clock: Clock, ttft: float, total: float
) -> None:
    """One streamed attempt that answers: first byte after ``ttft``, done after ``total``."""
    a = attempt(deployment, clock.now)
    history.on_dispatch(a)
    a.first_byte_at = a.started_at + ttft
    history.on_first_byte(a)
    a.last_byte_at = a.started_at + total
    history.on_success(a)
    history.on_finish(a)


def test_bins_are_log_spaced_and_percentiles_are_within_ten_percent() -> None:
    assert bin_of(0.0) == 0 and bin_of(0.001) == 0
    assert bin_of(1e6) == BINS - 1
    rng = random.Random(1)
    samples = sorted(rng.lognormvariate(math.log(0.3), 0.8) for _ in range(5000))
    histogram = [0] * BINS
    for s in samples:
        histogram[bin_of(s)] += 1
    for q in (0.5, 0.9, 0.99):
        exact = samples[math.ceil(q * len(samples)) - 1]
        estimate = percentile(histogram, q)
        assert estimate is not None and abs(estimate / exact - 1) < 0.1, (q, exact, estimate)
    assert percentile([0] * BINS, 0.5) is None


def test_counts_error_rate_and_percentiles_over_the_window() -> None:
    clock = Clock()
    d = make_deployment()
    history = FleetHistory([d], clock)
    for _ in range(98):
        serve(history, d, clock, ttft=0.100, total=1.0)
    for _ in range(2):  # the slowest 2%: the p99 is one of them
        serve(history, d, clock, ttft=2.0, total=3.0)
    failed = attempt(d, clock.now)
    history.on_dispatch(failed)
    history.on_failure(failed, UpstreamConnectionError("down", code="upstream_unreachable"))
    history.on_finish(failed)
    refused = attempt(d, clock.now)
    history.on_dispatch(refused)
    history.on_failure(refused, InvalidRequestError("too long"))
    history.on_finish(refused)
    gone = attempt(d, clock.now)
    history.on_dispatch(gone)
    gone.abandoned = True
    history.on_finish(gone)

    w = history.window(d)
    assert (w.dispatched, w.ok, w.errors, w.rejected, w.abandoned) == (103, 100, 1, 1, 1)
    assert w.error_rate == pytest.approx(1 / 102)
    assert w.ttft_p50_s == pytest.approx(0.1, rel=0.1)
    assert w.ttft_p99_s == pytest.approx(2.0, rel=0.1)
    assert w.latency_p99_s == pytest.approx(3.0, rel=0.1)
    assert w.latency_p50_s == pytest.approx(1.0, rel=0.1)
    assert len(w.points) == BUCKETS and w.span_s == BUCKETS * BUCKET_S
    last = w.points[-1]
    assert (last.dispatched, last.ok, last.errors) == (103, 100, 1)
    assert -BUCKET_S < last.start_s <= 0
    assert all(p.dispatched == 0 and p.ttft_p50_s is None for p in w.points[:-1])


def test_buckets_age_out_and_old_slots_are_cleared() -> None:
    clock = Clock()
    d = make_deployment()
    history = FleetHistory([d], clock)
    serve(history, d, clock, 0.05, 0.5)
    clock.now += BUCKET_S
    serve(history, d, clock, 0.05, 0.5)
    serve(history, d, clock, 0.05, 0.5)
    w = history.window(d)
    assert [p.dispatched for p in w.points[-2:]] == [1, 2] and w.dispatched == 3
    # One bucket short of the whole ring later, the first request has left the window...
    clock.now += (BUCKETS - 1) * BUCKET_S
    assert history.window(d).dispatched == 2
    # ...and once the ring has gone round, its slot holds the new bucket only.
    clock.now += BUCKET_S
    serve(history, d, clock, 0.05, 0.5)
    w = history.window(d)
    assert w.dispatched == 1 and w.points[-1].dispatched == 1
    assert w.error_rate == 0.0
    clock.now += 10 * BUCKETS * BUCKET_S  # long idle: everything is gone
    w = history.window(d)
    assert w.dispatched == 0 and w.error_rate is None and w.ttft_p50_s is None


def test_gauges_are_sampled_at_dispatch_and_when_read() -> None:
    clock = Clock()
    d = make_deployment()
    history = FleetHistory([d], clock)
    d.state.in_flight = 3
    d.state.engine = EngineSnapshot(scraped_at=clock.now, waiting=0, running=3, kv_usage=0.25)
    history.on_dispatch(attempt(d, clock.now))
    d.state.in_flight = 1
    d.state.engine = EngineSnapshot(scraped_at=clock.now, waiting=0, running=1, kv_usage=0.1)
    point = history.window(d).points[-1]
    assert point.in_flight_peak == 3 and point.kv_usage == 0.25  # the peaks of the bucket
    clock.now += BUCKET_S
    point = history.window(d).points[-1]
    assert point.in_flight_peak == 1 and point.kv_usage == 0.1  # sampled by the read


def test_an_unknown_deployment_gets_its_own_ring() -> None:
    clock = Clock()
    history = FleetHistory([], clock)
    d = make_deployment("late")
    serve(history, d, clock, 0.05, 0.5)
    assert history.window(d).ok == 1


def test_events_cost_about_a_microsecond() -> None:
    """Not a benchmark (CI machines vary): a guard against an accidental O(n) per event."""
    clock = Clock()
    d = make_deployment()
    history = FleetHistory([d], clock)
    a = attempt(d, clock.now)
    a.first_byte_at = a.last_byte_at = a.started_at + 0.2

    def one() -> None:
        history.on_dispatch(a)
        history.on_first_byte(a)
        history.on_success(a)
        history.on_finish(a)

    n = 20_000
    per_request_us = min(timeit.repeat(one, number=n, repeat=3)) / n * 1e6
    assert per_request_us < 20, per_request_us
