"""What only the in-memory implementations promise: exact window edges on an injected clock,
and a free slot that is taken without suspending."""

from __future__ import annotations

import pytest

import aigw.state
from aigw.state.base import Charge, Pool, Quota
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from tests.state.conftest import ticket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_entry_leaves_the_window_exactly_window_s_after_it_was_made() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    q = Quota("k", 2, "requests", window_s=10)
    assert (await limiter.reserve("a", [Charge(q, 1)])).allowed
    clock.now += 4
    assert (await limiter.reserve("b", [Charge(q, 1)])).allowed
    refused = await limiter.reserve("c", [Charge(q, 1)])
    assert refused.retry_after_s == pytest.approx(6)
    assert refused.statuses[0].reset_s == pytest.approx(10)  # until b has left too
    clock.now += 5.999
    assert not (await limiter.reserve("c", [Charge(q, 1)])).allowed
    clock.now += 0.001  # 10 s after a
    decision = await limiter.reserve("c", [Charge(q, 1)])
    assert decision.allowed and decision.statuses[0].remaining == 0


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
