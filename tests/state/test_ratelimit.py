"""The RateLimiter contract, for memory and Redis alike: bucketed sliding windows.

A quota of window ``W`` counts buckets of ``w = W / 60``: a charge counts for between ``W``
and ``W + w`` seconds. Timings here are checked against the limiter's own clock (the stamps
it hands out) where they can be, and with ``EPS`` of slack where they cannot.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from aigw.state.base import Charge, Quota
from aigw.state.windows import SPAN, bucket_width_us
from tests.state.conftest import Backend

EPS = 0.05  # scheduling and round-trip slack on timings measured here


def quota(key: str, limit: int, window_s: float = 60.0) -> Quota:
    return Quota(key, limit, "tokens", window_s)


def leaves_at_us(q: Quota, stamp: int) -> int:
    """When a charge stamped ``stamp`` stops counting (its bucket leaves the span)."""
    width = bucket_width_us(q.window_s)
    return (stamp // width + SPAN) * width


async def test_exactly_the_limit_passes_then_retry_after_then_allowed_again(
    backend: Backend,
) -> None:
    q = quota("rpm", 3, window_s=0.3)
    for i in range(3):
        decision = await backend.limiter.reserve(f"r{i}", [Charge(q, 1)])
        assert decision.allowed
        assert decision.statuses[0].remaining == 2 - i
    refused = await backend.limiter.reserve("r3", [Charge(q, 1)])
    assert not refused.allowed
    assert refused.exceeded == q
    assert refused.retry_after_s is not None
    assert 0 < refused.retry_after_s <= 0.3 + 0.3 / 60
    assert refused.statuses[0].remaining == 0
    assert 0 < refused.statuses[0].reset_s <= 0.3 + 0.3 / 60
    await asyncio.sleep(refused.retry_after_s + 0.02)
    assert (await backend.limiter.reserve("r4", [Charge(q, 1)])).allowed


async def test_never_more_than_the_limit_in_any_window(backend: Backend) -> None:
    """A client that always wants more, for over two windows: in every window of W seconds
    (on the limiter's own clock) at most the limit passes, and close to it does."""
    q = quota("hammer", 20, window_s=0.5)
    admitted: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        decision = await backend.limiter.reserve("r", [Charge(q, 1)])
        if decision.allowed:
            admitted.append(decision.stamp)
        await asyncio.sleep(0.001)
    window_us = round(q.window_s * 1e6)
    for i, stamp in enumerate(admitted):
        in_window = [s for s in admitted[: i + 1] if s >= stamp - window_us]
        assert len(in_window) <= q.limit
    # Saturated: a charge counts for at most W + w, so over 1.2 s at least 2 limits pass.
    assert len(admitted) >= 2 * q.limit


async def test_any_window_counts_charges_spread_over_it(backend: Backend) -> None:
    """No burst at a boundary: what came in the last window counts, whenever it came, and a
    refusal lasts until exactly the buckets that must leave have left."""
    q = quota("any", 4, window_s=0.6)
    early = [await backend.limiter.reserve(f"early{i}", [Charge(q, 1)]) for i in range(2)]
    await asyncio.sleep(0.3)
    late = [await backend.limiter.reserve(f"late{i}", [Charge(q, 1)]) for i in range(2)]
    assert all(d.allowed for d in early + late)
    refused = await backend.limiter.reserve("x", [Charge(q, 1)])
    assert not refused.allowed and refused.retry_after_s is not None
    # The first early charge must leave: never before its bucket has left the span.
    first_leaves = leaves_at_us(q, early[0].stamp)
    assert refused.retry_after_s * 1e6 <= first_leaves - late[-1].stamp
    assert refused.retry_after_s * 1e6 >= first_leaves - late[-1].stamp - EPS * 1e6
    assert refused.statuses[0].reset_s * 1e6 <= leaves_at_us(q, late[-1].stamp) - late[-1].stamp
    # Still refused until then.
    await asyncio.sleep(max(0.0, refused.retry_after_s - 0.1))
    assert not (await backend.limiter.reserve("x", [Charge(q, 1)])).allowed
    await asyncio.sleep(0.13)  # past it by more than a bucket: both early ones have left
    # Room for the early ones (their buckets left), not for a new window's worth.
    freed = 0
    for i in range(3):
        decision = await backend.limiter.reserve(f"y{i}", [Charge(q, 1)])
        freed += decision.allowed
    assert freed == 2
    again = await backend.limiter.reserve("y3", [Charge(q, 1)])
    assert not again.allowed
    assert again.retry_after_s is not None and again.retry_after_s <= 0.3 + 0.01 + EPS


async def test_retry_after_waits_for_enough_old_buckets_to_leave(backend: Backend) -> None:
    q = quota("tpm", 5, window_s=0.5)
    a = await backend.limiter.reserve("a", [Charge(q, 3)])
    await asyncio.sleep(0.15)
    b = await backend.limiter.reserve("b", [Charge(q, 2)])
    assert a.allowed and b.allowed
    small = await backend.limiter.reserve("c", [Charge(q, 2)])  # a's 3 units are enough
    large = await backend.limiter.reserve("d", [Charge(q, 4)])  # b's 2 must leave too
    assert small.retry_after_s is not None and large.retry_after_s is not None
    assert small.retry_after_s * 1e6 <= leaves_at_us(q, a.stamp) - b.stamp
    between_us = leaves_at_us(q, b.stamp) - leaves_at_us(q, a.stamp)
    assert (large.retry_after_s - small.retry_after_s) * 1e6 == pytest.approx(
        between_us, abs=EPS * 1e6
    )


async def test_charges_are_all_or_nothing(backend: Backend) -> None:
    rpm, tpm = quota("k:rpm", 10), quota("k:tpm", 100)
    assert (await backend.limiter.reserve("r1", [Charge(rpm, 1), Charge(tpm, 90)])).allowed
    refused = await backend.limiter.reserve("r2", [Charge(rpm, 1), Charge(tpm, 20)])
    assert not refused.allowed
    assert refused.exceeded == tpm
    assert [s.remaining for s in refused.statuses] == [9, 10]  # the rpm charge was not made
    probe = await backend.limiter.reserve("probe", [Charge(rpm, 0), Charge(tpm, 0)])
    assert [s.remaining for s in probe.statuses] == [9, 10]


async def test_reconcile_replaces_the_amount_up_or_down(backend: Backend) -> None:
    tpm = quota("tpm", 100)
    charge = Charge(tpm, 90)
    r1 = await backend.limiter.reserve("r1", [charge])
    assert r1.allowed
    await backend.limiter.reconcile(r1.stamp, [charge], 30)
    decision = await backend.limiter.reserve("r2", [Charge(tpm, 60)])
    assert decision.allowed and decision.statuses[0].remaining == 10
    await backend.limiter.reconcile(r1.stamp, [Charge(tpm, 30)], 50)  # up: nothing fits now
    refused = await backend.limiter.reserve("r3", [Charge(tpm, 1)])
    assert not refused.allowed and refused.statuses[0].remaining == 0
    await backend.limiter.reconcile(r1.stamp, [Charge(tpm, 50)], 40)
    assert (await backend.limiter.reserve("r4", [Charge(tpm, 0)])).statuses[0].remaining == 0
    await backend.limiter.reconcile(r1.stamp, [Charge(tpm, 40)], 0)
    assert (await backend.limiter.reserve("r5", [Charge(tpm, 0)])).statuses[0].remaining == 40


async def test_reconcile_settles_every_charge_of_a_reservation_in_one_call(
    backend: Backend,
) -> None:
    key_tpm, model_tpm, rpm = quota("key-tpm", 100), quota("model-tpm", 200), quota("rpm", 9)
    charges = [Charge(rpm, 1), Charge(key_tpm, 50), Charge(model_tpm, 50)]
    r1 = await backend.limiter.reserve("r1", charges)
    assert r1.allowed
    await backend.limiter.reconcile(r1.stamp, charges[1:], 20)
    probe = await backend.limiter.reserve("p", [Charge(q, 0) for q in (rpm, key_tpm, model_tpm)])
    assert [s.remaining for s in probe.statuses] == [8, 80, 180]


async def test_settling_an_unknown_quota_or_a_future_stamp_does_nothing(
    backend: Backend,
) -> None:
    tpm = quota("tpm", 100)
    r1 = await backend.limiter.reserve("r1", [Charge(tpm, 10)])
    await backend.limiter.reconcile(r1.stamp, [Charge(quota("never-charged", 100), 5)], 50)
    await backend.limiter.refund(r1.stamp, [Charge(quota("never-charged", 100), 5)])
    later = r1.stamp + 10 * bucket_width_us(tpm.window_s)  # a bucket not reached yet
    await backend.limiter.reconcile(later, [Charge(tpm, 10)], 90)
    await backend.limiter.refund(later, [Charge(tpm, 10)])
    probe = await backend.limiter.reserve("p", [Charge(tpm, 0)])
    assert probe.statuses[0].remaining == 90


async def test_settling_after_the_bucket_left_does_nothing(backend: Backend) -> None:
    tpm = quota("tpm", 100, window_s=0.2)
    r1 = await backend.limiter.reserve("r1", [Charge(tpm, 10)])
    assert r1.allowed
    await asyncio.sleep(0.25)
    r2 = await backend.limiter.reserve("r2", [Charge(tpm, 20)])
    await backend.limiter.reconcile(r1.stamp, [Charge(tpm, 10)], 90)
    await backend.limiter.refund(r1.stamp, [Charge(tpm, 10)])  # r2's units stay
    probe = await backend.limiter.reserve("p", [Charge(tpm, 0)])
    assert probe.statuses[0].remaining == 80
    await backend.limiter.refund(r2.stamp, [Charge(tpm, 20)])
    probe = await backend.limiter.reserve("p", [Charge(tpm, 0)])
    assert (probe.statuses[0].remaining, probe.statuses[0].reset_s) == (100, 0)


async def test_refund_removes_the_charges_and_never_goes_below_zero(backend: Backend) -> None:
    rpm, tpm = quota("rpm", 2), quota("tpm", 100)
    charges = [Charge(rpm, 1), Charge(tpm, 70)]
    r1 = await backend.limiter.reserve("r1", charges)
    assert r1.allowed
    await backend.limiter.refund(r1.stamp, charges)
    probe = await backend.limiter.reserve("p", [Charge(rpm, 0), Charge(tpm, 0)])
    assert [s.remaining for s in probe.statuses] == [2, 100]
    # A refund of more than its bucket holds (say, Redis restarted empty) floors it at 0:
    # the quota still admits exactly its limit, no more.
    await backend.limiter.refund(r1.stamp, charges)
    for i in range(2):
        assert (await backend.limiter.reserve(f"n{i}", [Charge(rpm, 1)])).allowed
    assert not (await backend.limiter.reserve("n2", [Charge(rpm, 1)])).allowed


async def test_statuses_report_remaining_and_reset(backend: Backend) -> None:
    q = quota("hdr", 10, window_s=60)
    empty = await backend.limiter.reserve("p", [Charge(q, 0)])
    assert empty.allowed
    assert (empty.statuses[0].remaining, empty.statuses[0].reset_s) == (10, 0)
    charged = await backend.limiter.reserve("r1", [Charge(q, 3)])
    assert charged.statuses[0].remaining == 7
    reset_us = leaves_at_us(q, charged.stamp) - charged.stamp
    assert charged.statuses[0].reset_s * 1e6 == pytest.approx(reset_us, abs=1)
    assert 60 < charged.statuses[0].reset_s <= 61  # the window plus what is left of a bucket


async def test_a_charge_larger_than_the_limit_can_never_pass(backend: Backend) -> None:
    q = quota("big", 10)
    refused = await backend.limiter.reserve("r1", [Charge(q, 11)])
    assert not refused.allowed
    assert refused.exceeded == q
    assert refused.retry_after_s is None
    assert refused.statuses[0].remaining == 10  # nothing charged


async def test_a_zero_charge_needs_room_for_one_unit_and_records_nothing(
    backend: Backend,
) -> None:
    q = quota("zero", 2)
    assert (await backend.limiter.reserve("z1", [Charge(q, 0)])).allowed
    r1 = await backend.limiter.reserve("r1", [Charge(q, 2)])
    assert r1.allowed
    refused = await backend.limiter.reserve("z2", [Charge(q, 0)])
    assert not refused.allowed and refused.retry_after_s is not None
    await backend.limiter.refund(r1.stamp, [Charge(q, 2)])
    assert (await backend.limiter.reserve("z3", [Charge(q, 0)])).statuses[0].remaining == 2


async def test_quotas_are_independent_by_key(backend: Backend) -> None:
    a, b = quota("key:a", 1), quota("key:b", 1)
    assert (await backend.limiter.reserve("r1", [Charge(a, 1)])).allowed
    assert (await backend.limiter.reserve("r2", [Charge(b, 1)])).allowed
    assert not (await backend.limiter.reserve("r3", [Charge(a, 1)])).allowed
