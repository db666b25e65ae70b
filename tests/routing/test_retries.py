"""The retry budget (window, minimum concurrency), the backoff and Retry-After parsing."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from aigw.config import RetryConfig
from aigw.errors import RateLimitError, ServiceUnavailableError, UpstreamConnectionError
from aigw.routing.retries import (
    Failover,
    RetryBudget,
    RetryPolicy,
    exhausted_error,
    parse_retry_after,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget(clock: Clock, ratio: float = 0.2, min_concurrent: int = 0) -> RetryBudget:
    return RetryBudget(ratio, min_concurrent, window_s=10.0, clock=clock)


def test_retries_are_a_fraction_of_the_requests_in_the_window() -> None:
    b = budget(Clock())
    for _ in range(10):
        b.record_request()
    assert b.try_retry(False)
    assert b.try_retry(False)  # 2 retries for 10 requests at 20%
    assert not b.try_retry(False)
    assert b.exhausted == 1
    assert b.counts == (10, 2)


def test_the_window_slides_requests_and_retries_age_out_together() -> None:
    clock = Clock()
    b = budget(clock)
    for _ in range(5):
        b.record_request()
    assert b.try_retry(False)
    assert not b.try_retry(False)
    clock.now += 5.0
    for _ in range(5):
        b.record_request()
    assert b.try_retry(False)  # 10 requests, 2 retries now
    clock.now += 6.0  # the first five requests and their retry have left the window
    assert b.counts == (5, 1)
    assert not b.try_retry(False)  # 5 requests allow 1 retry: used
    clock.now += 100.0  # everything aged out at once
    assert b.counts == (0, 0)
    assert not b.try_retry(False)


def test_min_concurrent_retries_are_allowed_beyond_the_ratio() -> None:
    b = budget(Clock(), min_concurrent=3)
    b.record_request()  # one request allows 0.2 retries: none by the ratio
    assert all(b.try_retry(False) for _ in range(3))
    assert b.active == 3
    assert not b.try_retry(False)  # a fourth retrying request: over both
    b.retry_done()
    # A place is free, but the window already holds ratio * requests + 3 retries.
    assert not b.try_retry(False)
    for _ in range(5):
        b.record_request()  # 6 requests: 1.2 by the ratio, 4.2 with the floor
    assert b.try_retry(False)
    assert not b.try_retry(False)


def test_short_retries_never_many_at_once_are_still_bounded() -> None:
    """The floor is not a way round the ratio for retries that end quickly."""
    b = budget(Clock(), min_concurrent=3)
    allowed = 0
    for _ in range(1000):
        b.record_request()
        if b.try_retry(False):
            allowed += 1
            b.retry_done()  # over before the next one starts
    assert allowed <= 0.2 * 1000 + 3


def test_a_request_already_retrying_counts_once_among_the_concurrent() -> None:
    b = budget(Clock(), min_concurrent=1)
    for _ in range(5):
        b.record_request()  # the ratio allows 1 retry, the floor 1 more
    assert b.try_retry(False)
    assert b.try_retry(True)  # within its own place
    assert b.active == 1
    assert not b.try_retry(False)


def test_a_clock_that_steps_back_keeps_the_counts() -> None:
    clock = Clock()
    b = budget(clock)
    for _ in range(5):
        b.record_request()
    clock.now -= 30.0
    assert b.counts == (5, 0)


def test_backoff_is_immediate_first_then_full_jitter_capped() -> None:
    config = RetryConfig(backoff_base_s=0.1, backoff_max_s=0.35)
    policy = RetryPolicy(config, ["m"], Clock(), random.Random(1))
    assert policy.backoff_s(1) == 0.0
    for retry, ceiling in ((2, 0.1), (3, 0.2), (4, 0.35), (40, 0.35)):
        delays = [policy.backoff_s(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range


def test_a_failover_holds_one_place_until_closed() -> None:
    policy = RetryPolicy(RetryConfig(budget_min_concurrent=2), ["m"], Clock(), random.Random(0))
    failover = Failover(policy, "m")
    assert failover.retry_delay(0.0, None) == 0.0  # attempts == 0 -> the first retry: no wait
    failover.attempts = 2
    delay = failover.retry_delay(0.0, None)
    assert delay is not None and delay <= 0.025
    assert policy.budgets["m"].active == 1
    failover.close()
    failover.close()  # harmless twice
    assert policy.budgets["m"].active == 0
    # A backoff that would reach the deadline is not waited.
    late = Failover(policy, "m")
    late.attempts = 5
    assert late.retry_delay(10.0, 10.0) is None
    late.close()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "99999999"}, 3600.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_in_seconds(headers: dict[str, str], expected: float | None) -> None:
    from multidict import CIMultiDict

    assert parse_retry_after(CIMultiDict(headers), 0.0) == expected


def test_retry_after_as_an_http_date() -> None:
    from multidict import CIMultiDict

    now = time.time()
    header = CIMultiDict({"Retry-After": formatdate(now + 30, usegmt=True)})
    wait = parse_retry_after(header, now)
    assert wait is not None and 28 <= wait <= 31


def test_the_final_error_says_when_to_come_back() -> None:
    down = UpstreamConnectionError("deployment a: refused")
    assert exhausted_error("m", [("a", down)], 0.0) is down  # the fleet is fine: as it is
    error = exhausted_error("m", [("a", down)], 4.2)
    assert isinstance(error, ServiceUnavailableError)
    assert error.code == "no_healthy_deployment"
    assert error.headers["Retry-After"] == "5"
    two = exhausted_error("m", [("a", down), ("b", down)], 0.0)
    assert two.code == "all_deployments_failed" and two.headers["Retry-After"] == "1"
    assert exhausted_error("m", [], 0.0).headers["Retry-After"] == "1"
    quota = RateLimitError("spent", headers={"Retry-After": "9"})
    assert exhausted_error("m", [("a", quota)], 9.0) is quota
