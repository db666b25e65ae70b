"""In-process rate limits and admission: one gateway process, everything on its event loop.

No locks: every method runs to completion between two awaits, so the state cannot change
under it. The same contract as :mod:`aigw.state.redis`; :mod:`aigw.state.resilient` also uses
these as the fallback while Redis is down.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from operator import attrgetter

from aigw.state.base import (
    Charge,
    Lease,
    LeaseContext,
    LimitDecision,
    Pool,
    Quota,
    QuotaStatus,
    Stamp,
    Ticket,
)
from aigw.state.refusals import max_parallel_error, queue_full_error, queue_timeout_error
from aigw.state.windows import SPAN, BucketWindow, bucket_width_us

__all__ = ["MemoryAdmissionQueue", "MemoryRateLimiter"]


# --- rate limits ---------------------------------------------------------------------------


class MemoryRateLimiter:
    """:class:`~aigw.state.base.RateLimiter` over per-quota bucketed windows in this process
    (:class:`~aigw.state.windows.BucketWindow`: 61 counters per quota key).

    ``clock`` is monotonic seconds (``loop.time``), never negative (stamps are its
    microseconds). A charge of 0 units is allowed while the quota is below its limit (room
    for one more unit), as the contract says, and records nothing.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[str, BucketWindow] = {}  # bounded: quota keys come from config

    def _window(self, quota: Quota, now: int) -> BucketWindow:
        window = self._windows.get(quota.key)
        if window is None:
            window = self._windows[quota.key] = BucketWindow(bucket_width_us(quota.window_s), now)
        else:
            window.advance(now // window.width)
        return window

    async def reserve(self, request_id: str, charges: Sequence[Charge]) -> LimitDecision:
        # Hot path (every request of a limited key): one pass to check, one to record.
        now = int(self._clock() * 1_000_000)
        all_windows = self._windows
        windows: list[BucketWindow] = []
        for charge in charges:
            quota = charge.quota
            window = all_windows.get(quota.key)  # self._window, inlined: the hot path
            if window is None:
                window = self._window(quota, now)
            elif now // window.width != window.head:
                window.advance(now // window.width)
            windows.append(window)
            amount = charge.amount
            if amount > quota.limit:
                return self._refused(charges, windows, now, quota, None)
            need = window.total + (amount or 1) - quota.limit
            if need > 0:
                retry_after = window.retry_after_us(need, now) / 1e6
                return self._refused(charges, windows, now, quota, retry_after)
        statuses: list[QuotaStatus] = []
        for charge, window in zip(charges, windows, strict=True):
            quota = charge.quota
            amount = charge.amount
            if amount:
                window.counts[window.head % SPAN] += amount  # window.add, inlined
                window.total += amount
                reset = ((window.head + SPAN) * window.width - now) / 1e6  # this one is newest
            else:
                reset = window.reset_us(now) / 1e6
            statuses.append(QuotaStatus(quota, max(0, quota.limit - window.total), reset))
        return LimitDecision(True, tuple(statuses), stamp=now)

    def _refused(
        self,
        charges: Sequence[Charge],
        windows: list[BucketWindow],
        now: int,
        exceeded: Quota,
        retry_after: float | None,
    ) -> LimitDecision:
        statuses = []
        for i, charge in enumerate(charges):
            quota = charge.quota
            if i < len(windows):
                window: BucketWindow | None = windows[i]
            else:  # not looked at yet: bring it up to date, but create nothing
                window = self._windows.get(quota.key)
                if window is not None:
                    window.advance(now // window.width)
            if window is None:
                statuses.append(QuotaStatus(quota, quota.limit, 0.0))
            else:
                remaining = max(0, quota.limit - window.total)
                statuses.append(QuotaStatus(quota, remaining, window.reset_us(now) / 1e6))
        return LimitDecision(False, tuple(statuses), exceeded, retry_after)

    async def reconcile(self, stamp: Stamp, charges: Sequence[Charge], actual: int) -> None:
        now = int(self._clock() * 1_000_000)
        for charge in charges:
            window = self._windows.get(charge.quota.key)
            if window is not None and actual != charge.amount:
                window.adjust(stamp, now, actual - charge.amount)

    async def refund(self, stamp: Stamp, charges: Sequence[Charge]) -> None:
        now = int(self._clock() * 1_000_000)
        for charge in charges:
            window = self._windows.get(charge.quota.key)
            if window is not None and charge.amount:
                window.adjust(stamp, now, -charge.amount)


# --- admission -----------------------------------------------------------------------------


class _MemoryLease(LeaseContext):
    __slots__ = ("_held", "_owner", "_pool", "_tenant_pool", "_waited_s")

    def __init__(
        self,
        owner: MemoryAdmissionQueue,
        pool: Pool,
        tenant_pool: Pool | None,
        waited_s: float,
    ) -> None:
        self._owner = owner
        self._pool = pool
        self._tenant_pool = tenant_pool
        self._waited_s = waited_s
        self._held = True

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def waited_s(self) -> float:
        return self._waited_s

    async def release(self) -> None:
        self.release_now()

    def release_now(self) -> None:
        if self._held:
            self._held = False
            self._owner._release(self._pool, self._tenant_pool)


class _Waiter:
    __slots__ = ("choices", "enqueued_at", "future", "key", "queued", "ticket", "vtime")

    def __init__(
        self,
        ticket: Ticket,
        choices: Sequence[Pool],
        vtime: int,
        seq: int,
        future: asyncio.Future[_MemoryLease],
        enqueued_at: float,
    ) -> None:
        self.ticket = ticket
        self.choices = {pool.id: pool for pool in choices}
        self.vtime = vtime
        self.key = (-ticket.priority, vtime, seq)
        self.future = future
        self.enqueued_at = enqueued_at
        self.queued = True


_KEY = attrgetter("key")


class _Queue:
    """Waiting tickets in order (priority, fair virtual time, arrival) and the fair clocks."""

    __slots__ = ("tenant_vtime", "vtime", "waiters")

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []
        self.vtime = 0  # start-time fair queuing: the virtual time of the last grant
        self.tenant_vtime: dict[str, int] = {}  # each tenant's last enqueued virtual time


class MemoryAdmissionQueue:
    """:class:`~aigw.state.base.AdmissionQueue` in this process.

    Slots are counters per pool id (deployment pools and tenant pools share one namespace).
    A released slot goes straight to the best waiting ticket of the queues that list its pool:
    highest priority first, then the earliest arrival. A ticket whose tenant pool is full is
    skipped and remembered; when that tenant's slot frees, its tickets are looked at again.
    Acquiring a free slot with nobody waiting creates no future and no task.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._used: dict[str, int] = {}
        self._queues: dict[str, _Queue] = {}
        self._waiting_on: dict[str, dict[str, int]] = {}  # pool id -> {queue: waiters}
        self._tenant_blocked: dict[str, set[str]] = {}  # tenant pool id -> queues
        self._seq = 0

    def depth(self, queue: str) -> int:
        q = self._queues.get(queue)
        return 0 if q is None else len(q.waiters)

    async def acquire(self, ticket: Ticket, choices: Sequence[Pool]) -> Lease:
        used = self._used
        tenant_pool = ticket.tenant_pool
        if tenant_pool is not None and used.get(tenant_pool.id, 0) >= tenant_pool.size:
            raise max_parallel_error(ticket)
        for pool in choices:
            taken = used.get(pool.id, 0)
            if taken < pool.size:
                used[pool.id] = taken + 1
                if tenant_pool is not None:
                    used[tenant_pool.id] = used.get(tenant_pool.id, 0) + 1
                return _MemoryLease(self, pool, tenant_pool, 0.0)
        return await self._wait(ticket, choices)

    async def _wait(self, ticket: Ticket, choices: Sequence[Pool]) -> Lease:
        if not choices:
            raise ValueError("acquire needs at least one pool to choose from")
        queue = self._queues.get(ticket.queue)
        if queue is None:
            queue = self._queues[ticket.queue] = _Queue()
        if len(queue.waiters) >= ticket.max_queue:
            raise queue_full_error(ticket)
        vtime = max(queue.vtime, queue.tenant_vtime.get(ticket.tenant, 0)) + 1
        queue.tenant_vtime[ticket.tenant] = vtime
        self._seq += 1
        future: asyncio.Future[_MemoryLease] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(ticket, choices, vtime, self._seq, future, self._clock())
        insort(queue.waiters, waiter, key=_KEY)
        for pool_id in waiter.choices:
            counts = self._waiting_on.setdefault(pool_id, {})
            counts[ticket.queue] = counts.get(ticket.queue, 0) + 1
        try:
            async with asyncio.timeout(ticket.timeout_s):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # granted as the deadline struck: use it
            self._remove(waiter)
            raise queue_timeout_error(ticket) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.result().release_now()  # granted in the meantime: pass it on
            else:
                self._remove(waiter)
            raise

    def _remove(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        name = waiter.ticket.queue
        queue = self._queues[name]
        waiters = queue.waiters
        index = bisect_left(waiters, waiter.key, key=_KEY)
        del waiters[index]
        for pool_id in waiter.choices:
            counts = self._waiting_on[pool_id]
            counts[name] -= 1
            if not counts[name]:
                del counts[name]
                if not counts:
                    del self._waiting_on[pool_id]
        if not waiters:
            queue.tenant_vtime.clear()  # everyone is idle: nobody carries credit or debt

    def _release(self, pool: Pool, tenant_pool: Pool | None) -> None:
        used = self._used
        used[pool.id] -= 1
        if tenant_pool is not None:
            used[tenant_pool.id] -= 1
        if pool.id in self._waiting_on:
            self._hand_off(pool)
        if tenant_pool is not None and tenant_pool.id in self._tenant_blocked:
            self._unblock(tenant_pool)

    def _has_room(self, pool: Pool) -> bool:
        return self._used.get(pool.id, 0) < pool.size

    def _hand_off(self, pool: Pool) -> None:
        """Give ``pool``'s free slots to the best waiting tickets that may use them."""
        while self._has_room(pool):
            best: _Waiter | None = None
            for name in self._waiting_on.get(pool.id, ()):
                waiter = self._first_eligible(self._queues[name], pool.id)
                if waiter is not None and (
                    best is None or (waiter.key[0], waiter.key[2]) < (best.key[0], best.key[2])
                ):
                    best = waiter
            if best is None:
                return
            self._grant(best, pool)

    def _first_eligible(self, queue: _Queue, pool_id: str) -> _Waiter | None:
        for waiter in queue.waiters:
            if pool_id not in waiter.choices or waiter.future.done():
                continue  # a done future: cancelled, its task is about to remove it
            tenant_pool = waiter.ticket.tenant_pool
            if tenant_pool is not None and not self._has_room(tenant_pool):
                self._tenant_blocked.setdefault(tenant_pool.id, set()).add(waiter.ticket.queue)
                continue
            return waiter
        return None

    def _unblock(self, tenant_pool: Pool) -> None:
        """A tenant slot freed: its skipped tickets may now use a pool that has room."""
        for name in self._tenant_blocked.pop(tenant_pool.id, ()):
            queue = self._queues.get(name)
            for waiter in list(queue.waiters if queue is not None else ()):
                if not self._has_room(tenant_pool):
                    return
                if waiter.ticket.tenant_pool != tenant_pool or waiter.future.done():
                    continue
                pool = next((p for p in waiter.choices.values() if self._has_room(p)), None)
                if pool is not None:
                    self._grant(waiter, pool)

    def _grant(self, waiter: _Waiter, pool: Pool) -> None:
        self._remove(waiter)
        queue = self._queues[waiter.ticket.queue]
        queue.vtime = max(queue.vtime, waiter.vtime)
        used = self._used
        used[pool.id] = used.get(pool.id, 0) + 1
        tenant_pool = waiter.ticket.tenant_pool
        if tenant_pool is not None:
            used[tenant_pool.id] = used.get(tenant_pool.id, 0) + 1
        waited = self._clock() - waiter.enqueued_at
        waiter.future.set_result(_MemoryLease(self, pool, tenant_pool, waited))
