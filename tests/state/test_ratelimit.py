"""The RateLimiter contract, for memory and Redis alike: sliding logs over any window."""

from __future__ import annotations

import asyncio
import time

import pytest

from aigw.state.base import Charge, Quota
from tests.state.conftest import Backend

EPS = 0.05  # scheduling and round-trip slack on timings measured here


def quota(key: str, limit: int, window_s: float = 60.0) -> Quota:
    return Quota(key, limit, "tokens", window_s)


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
    assert 0 < refused.retry_after_s <= 0.3
    assert refused.statuses[0].remaining == 0
    assert 0 < refused.statuses[0].reset_s <= 0.3
    await asyncio.sleep(refused.retry_after_s + 0.02)
    assert (await backend.limiter.reserve("r4", [Charge(q, 1)])).allowed


async def test_any_window_counts_charges_spread_over_it(backend: Backend) -> None:
    """No burst at a boundary: what came in the last window_s seconds counts, whenever."""
    q = quota("any", 4, window_s=0.6)
    started = time.monotonic()
    for i in range(2):
        assert (await backend.limiter.reserve(f"early{i}", [Charge(q, 1)])).allowed
    await asyncio.sleep(0.3)
    for i in range(2):
        assert (await backend.limiter.reserve(f"late{i}", [Charge(q, 1)])).allowed
    refused = await backend.limiter.reserve("x", [Charge(q, 1)])
    assert not refused.allowed and refused.retry_after_s is not None
    # The early pair leaves first, 0.6 s after it came.
    assert refused.retry_after_s <= started + 0.6 - time.monotonic() + EPS
    await asyncio.sleep(refused.retry_after_s + 0.02)
    # Room for the two that left, not for a new window's worth.
    assert (await backend.limiter.reserve("y0", [Charge(q, 1)])).allowed
    assert (await backend.limiter.reserve("y1", [Charge(q, 1)])).allowed
    again = await backend.limiter.reserve("y2", [Charge(q, 1)])
    assert not again.allowed
    assert again.retry_after_s is not None and again.retry_after_s <= 0.3 + EPS


async def test_retry_after_waits_for_enough_old_entries_to_leave(backend: Backend) -> None:
    q = quota("tpm", 5, window_s=0.5)
    assert (await backend.limiter.reserve("a", [Charge(q, 3)])).allowed
    await asyncio.sleep(0.15)
    assert (await backend.limiter.reserve("b", [Charge(q, 2)])).allowed
    small = await backend.limiter.reserve("c", [Charge(q, 2)])  # a's 3 units are enough
    large = await backend.limiter.reserve("d", [Charge(q, 4)])  # b's 2 must leave too
    assert small.retry_after_s is not None and large.retry_after_s is not None
    assert small.retry_after_s <= 0.35 + EPS
    assert large.retry_after_s - small.retry_after_s == pytest.approx(0.15, abs=EPS)


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
    assert (await backend.limiter.reserve("r1", [Charge(tpm, 90)])).allowed
    await backend.limiter.reconcile("r1", tpm, 30)
    decision = await backend.limiter.reserve("r2", [Charge(tpm, 60)])
    assert decision.allowed and decision.statuses[0].remaining == 10
    await backend.limiter.reconcile("r1", tpm, 50)  # up: over the limit, nothing fits now
    refused = await backend.limiter.reserve("r3", [Charge(tpm, 1)])
    assert not refused.allowed and refused.statuses[0].remaining == 0
    await backend.limiter.reconcile("never-made", tpm, 5)  # does nothing
    await backend.limiter.reconcile("r1", tpm, 40)
    assert (await backend.limiter.reserve("r4", [Charge(tpm, 0)])).statuses[0].remaining == 0
    await backend.limiter.reconcile("r1", tpm, 0)
    assert (await backend.limiter.reserve("r5", [Charge(tpm, 0)])).statuses[0].remaining == 40


async def test_reconcile_after_the_window_does_nothing(backend: Backend) -> None:
    tpm = quota("tpm", 100, window_s=0.2)
    assert (await backend.limiter.reserve("r1", [Charge(tpm, 10)])).allowed
    await asyncio.sleep(0.25)
    await backend.limiter.reconcile("r1", tpm, 90)
    probe = await backend.limiter.reserve("p", [Charge(tpm, 0)])
    assert probe.statuses[0].remaining == 100
    assert probe.statuses[0].reset_s == 0


async def test_refund_removes_the_charges(backend: Backend) -> None:
    rpm, tpm = quota("rpm", 2), quota("tpm", 100)
    assert (await backend.limiter.reserve("r1", [Charge(rpm, 1), Charge(tpm, 70)])).allowed
    await backend.limiter.refund("r1", [rpm, tpm])
    await backend.limiter.refund("r1", [rpm, tpm])  # twice: nothing more happens
    await backend.limiter.refund("unknown", [rpm])
    probe = await backend.limiter.reserve("p", [Charge(rpm, 0), Charge(tpm, 0)])
    assert [s.remaining for s in probe.statuses] == [2, 100]


async def test_statuses_report_remaining_and_reset(backend: Backend) -> None:
    q = quota("hdr", 10, window_s=60)
    empty = await backend.limiter.reserve("p", [Charge(q, 0)])
    assert empty.allowed
    assert (empty.statuses[0].remaining, empty.statuses[0].reset_s) == (10, 0)
    charged = await backend.limiter.reserve("r1", [Charge(q, 3)])
    assert charged.statuses[0].remaining == 7
    assert 60 - EPS <= charged.statuses[0].reset_s <= 60


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
    assert (await backend.limiter.reserve("r1", [Charge(q, 2)])).allowed
    refused = await backend.limiter.reserve("z2", [Charge(q, 0)])
    assert not refused.allowed and refused.retry_after_s is not None
    await backend.limiter.refund("r1", [q])
    assert (await backend.limiter.reserve("z3", [Charge(q, 0)])).statuses[0].remaining == 2


async def test_quotas_are_independent_by_key(backend: Backend) -> None:
    a, b = quota("key:a", 1), quota("key:b", 1)
    assert (await backend.limiter.reserve("r1", [Charge(a, 1)])).allowed
    assert (await backend.limiter.reserve("r2", [Charge(b, 1)])).allowed
    assert not (await backend.limiter.reserve("r3", [Charge(a, 1)])).allowed
