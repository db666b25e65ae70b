"""A request's Booking settles its token charges (the key's and the model's TPM) in one
limiter call: one round trip to Redis at the end of a request, not one per quota."""

from __future__ import annotations

from collections.abc import Sequence

from aigw.limits import Booking
from aigw.state.base import Charge, Quota, Stamp
from aigw.state.memory import MemoryRateLimiter
from aigw.types import Usage


class CountingLimiter(MemoryRateLimiter):
    def __init__(self) -> None:
        super().__init__(lambda: 1000.0)
        self.reconciles: list[list[str]] = []

    async def reconcile(self, stamp: Stamp, charges: Sequence[Charge], actual: int) -> None:
        self.reconciles.append([c.quota.key for c in charges])
        await super().reconcile(stamp, charges, actual)


async def test_the_key_and_the_model_tpm_are_reconciled_in_one_call() -> None:
    limiter = CountingLimiter()
    rpm = Quota("rl:key:k:rpm", 10, "requests", 60.0)
    key_tpm = Quota("rl:key:k:tpm", 1000, "tokens", 60.0)
    model_tpm = Quota("rl:model:m:tpm", 1000, "tokens", 60.0)
    charges = [Charge(rpm, 1), Charge(key_tpm, 300), Charge(model_tpm, 300)]
    decision = await limiter.reserve("r1", charges)
    booking = Booking(limiter, decision.stamp, charges, [])
    await booking.reconcile(Usage(prompt_tokens=40, completion_tokens=60))
    assert limiter.reconciles == [["rl:key:k:tpm", "rl:model:m:tpm"]]
    probe = await limiter.reserve("p", [Charge(key_tpm, 0), Charge(model_tpm, 0)])
    assert [s.remaining for s in probe.statuses] == [900, 900]
    await booking.reconcile(Usage(prompt_tokens=1))  # settled once
    assert len(limiter.reconciles) == 1


async def test_a_usage_equal_to_the_estimate_costs_no_call() -> None:
    limiter = CountingLimiter()
    key_tpm = Quota("rl:key:k:tpm", 1000, "tokens", 60.0)
    decision = await limiter.reserve("r1", [Charge(key_tpm, 100)])
    await Booking(limiter, decision.stamp, [Charge(key_tpm, 100)], []).reconcile(Usage(100, 0))
    assert limiter.reconciles == []
