"""What only the in-memory implementations promise: exact bucket edges on an injected clock,
and a free slot that is taken without suspending."""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest

import aigw.state
from aigw.state.base import Charge, Pool, Quota
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from aigw.state.windows import bucket_width_us
from tests.state.conftest import ticket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_charge_counts_until_its_bucket_leaves_the_61_bucket_span() -> None:
    clock = Clock()  # 100.0: the start of bucket 100 (a 60 s window has 1 s buckets)
    limiter = MemoryRateLimiter(clock)
    q = Quota("k", 2, "requests", window_s=60)
    a = await limiter.reserve("a", [Charge(q, 1)])
    assert a.allowed and a.stamp == 100_000_000
    clock.now = 104.5
    assert (await limiter.reserve("b", [Charge(q, 1)])).allowed
    refused = await limiter.reserve("c", [Charge(q, 1)])
    assert refused.retry_after_s == pytest.approx(56.5)  # bucket 100 leaves at 161
    assert refused.statuses[0].reset_s == pytest.approx(60.5)  # bucket 104 leaves at 165
    clock.now = 160.999  # bucket 160: the span is 100 ... 160, a still counts
    assert not (await limiter.reserve("c", [Charge(q, 1)])).allowed
    clock.now = 161.0  # bucket 161: a has left, 61 s after it came (never under 60 s)
    decision = await limiter.reserve("c", [Charge(q, 1)])
    assert decision.allowed and decision.statuses[0].remaining == 0
    clock.now = 165.0
    probe = await limiter.reserve("p", [Charge(q, 0)])
    assert probe.statuses[0].remaining == 1
    assert probe.statuses[0].reset_s == pytest.approx(57)  # c's bucket, 161, leaves at 222


async def test_a_window_that_is_not_a_multiple_of_60_us_rounds_its_buckets_up() -> None:
    assert bucket_width_us(60) == 1_000_000
    assert bucket_width_us(0.3) == 5_000
    assert bucket_width_us(10) == 166_667  # 60 buckets cover 10.00002 s: never under 10 s
    assert bucket_width_us(1e-9) == 1


@pytest.mark.parametrize("seed", range(5))
async def test_random_traffic_never_exceeds_the_limit_in_any_window_and_nearly_fills_it(
    seed: int,
) -> None:
    """Exhaustive on an injected clock: random arrivals and sizes, refunds and reconciles;
    in every window of 60 s at most the limit of reserved units passes, and a client that
    always wants more gets at least limit * 60/61 per window on average."""
    rng = random.Random(seed)
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    q = Quota("k", 1000, "tokens", window_s=60)
    kept: list[tuple[float, int]] = []  # (time, units) of what was admitted and kept
    start = clock.now
    while clock.now < start + 600:
        clock.now += rng.expovariate(20)  # ~20 requests/s, far more than 1000 tokens/min
        amount = rng.randint(1, 40)
        decision = await limiter.reserve("r", [Charge(q, amount)])
        if not decision.allowed:
            assert decision.retry_after_s is not None and 0 < decision.retry_after_s <= 61
            continue
        roll = rng.random()
        if roll < 0.05:
            await limiter.refund(decision.stamp, [Charge(q, amount)])
        elif roll < 0.15:
            actual = rng.randint(0, amount)  # reconciled down (up would be real usage)
            await limiter.reconcile(decision.stamp, [Charge(q, amount)], actual)
            kept.append((clock.now, actual))
        else:
            kept.append((clock.now, amount))
    times = [t for t, _ in kept]
    for i, (t, _) in enumerate(kept):
        first = bisect_left(times, t - 60)
        assert sum(units for _, units in kept[first : i + 1]) <= q.limit
    per_window = sum(units for _, units in kept) / 10
    assert per_window >= (q.limit - 40) * 60 / 61


async def test_a_free_slot_is_taken_without_suspending() -> None:
    queue = MemoryAdmissionQueue(Clock())
    step = queue.acquire(ticket("r1"), [Pool("p", 1)])
    with pytest.raises(StopIteration) as done:  # finished on its first step: no await
        step.send(None)
    lease = done.value.value
    assert lease.pool == Pool("p", 1)
    await lease.release()


def test_the_public_names_exist() -> None:
    for name in aigw.state.__all__:
        assert hasattr(aigw.state, name), name
