"""Admission shared through Redis: slots any instance may take, one queue per model.

Acquire, release, cancel and upkeep are each one Lua script (``lua/admission_*.lua``, the
shared functions and the key layout in ``lua/admission_lib.lua``). A released slot is handed
by the release script itself to the best waiting ticket, whichever instance queued it, and the
grant is published on that instance's channel. Each instance runs two tasks:

- one pub/sub listener, which resolves the local waiter of each grant (no polling per waiter)
  and pings Redis every half second; when the channel breaks or a ping gets no answer within
  ``timeout_s``, every local waiter fails with :class:`StateUnavailableError` (the resilient
  wrapper serves them locally) and the listener reconnects;
- one upkeep task, every ``lease_ttl_s / 4``: renews the expiry of every lease this instance
  holds (one script call), and returns to waiters the slots whose leases nobody renewed (a
  SIGKILLed instance's). A lease expires ``3/4 x lease_ttl_s`` after its last renewal (so it
  survives two missed renewals), and some instance's upkeep sees it at most ``lease_ttl_s / 4``
  later: a dead instance's slots are back within ``lease_ttl_s`` of its death.

A ticket's id in Redis (also its lease id) is ``<instance>:<counter>``, never the request's
own id, so it is unique and names the instance to wake. Tickets of a dead instance leave the
queue two seconds after their deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from aigw.config import StateConfig
from aigw.state.base import Lease, LeaseContext, Pool, StateUnavailableError, Ticket
from aigw.state.refusals import max_parallel_error, queue_full_error, queue_timeout_error
from aigw.state.scripts import Arg, Script, lua_source, ping

__all__ = ["RedisAdmissionQueue"]

log = logging.getLogger("aigw.state")

_PING_S = 0.5  # the listener pings Redis this often...
_POLL_S = 0.1  # ...and looks for its answer this often: a stop is seen within 0.6 + timeout_s
_RECONNECT_S = 0.5  # pause between two attempts to subscribe
_REAP_SLACK_S = 0.005  # an expired lease is reaped this long after its expiry, at the soonest
_RANK_MAX = 999_999_999  # priorities are clamped to +-this, to fit the fixed-width rank


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def _rank(priority: int) -> str:
    """Ten digits that sort the higher priority first."""
    return f"{_RANK_MAX + 1 - max(-_RANK_MAX, min(_RANK_MAX, priority)):010d}"


class _RedisLease(LeaseContext):
    __slots__ = ("_held", "_owner", "_pool", "_waited_s", "id", "tenant_pool")

    def __init__(
        self,
        owner: RedisAdmissionQueue,
        lease_id: str,
        pool: Pool,
        tenant_pool: Pool | None,
        waited_s: float,
    ) -> None:
        self._owner = owner
        self.id = lease_id
        self._pool = pool
        self.tenant_pool = tenant_pool
        self._waited_s = waited_s
        self._held = True

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def waited_s(self) -> float:
        return self._waited_s

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._owner._release(self)


class _Waiter:
    __slots__ = ("choices", "future", "queued")

    def __init__(self, choices: Sequence[Pool], future: asyncio.Future[str]) -> None:
        self.choices = {pool.id: pool for pool in choices}
        self.future = future  # resolved with the granted pool's id
        self.queued = False


class RedisAdmissionQueue:
    """:class:`~aigw.state.base.AdmissionQueue` shared by every instance on one Redis.

    Call :meth:`start` before use and :meth:`close` after. ``instance_id`` must be unique
    among live instances. Pool ids (deployments and tenant pools) share one namespace.
    """

    def __init__(
        self,
        redis: Redis,
        config: StateConfig,
        instance_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._timeout_s = config.timeout_s
        self._upkeep_s = config.lease_ttl_s / 4
        # Expiry 3/4 of the TTL after each renewal, plus at most one upkeep period until an
        # instance reaps it: within lease_ttl_s in all (module docstring).
        self._common: tuple[Arg, ...] = (config.key_prefix, _us(config.lease_ttl_s * 0.75))
        self._instance = instance_id
        self._channel = f"{config.key_prefix}inst:{instance_id}"
        self._clock = clock

        def script(name: str) -> Script:
            source = lua_source(f"admission_{name}", prelude="admission_lib")
            return Script(redis, source, config.timeout_s)

        self._acquire = script("acquire")
        self._release_script = script("release")
        self._cancel = script("cancel")
        self._forget = script("forget")
        self._maintain = script("maintain")
        self._waiters: dict[str, _Waiter] = {}
        self._held: dict[str, _RedisLease] = {}
        self._pools: dict[str, Pool] = {}  # every pool seen here: upkeep reaps them
        self._depths: dict[str, int] = {}
        self._counter = 0
        self._generation = 0  # counts subscriptions: a grant may be lost between two
        self._subscribed = False
        self._closing = False
        self._ready = asyncio.Event()
        self._first_waiter = asyncio.Event()  # wakes the upkeep: it reaps sooner for waiters
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the scripts and start the listener and upkeep; waits up to ``timeout_s`` for
        the subscription (if Redis is down, the listener keeps trying on its own)."""
        scripts = (self._acquire, self._release_script, self._cancel, self._forget)
        with contextlib.suppress(StateUnavailableError):
            for script in (*scripts, self._maintain):
                await script.load()
        self._tasks = [
            asyncio.create_task(self._listen(), name="aigw-state-grants"),
            asyncio.create_task(self._upkeep(), name="aigw-state-upkeep"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s * 2):
                await self._ready.wait()

    async def close(self) -> None:
        """Stop both tasks; waiters fail. Held leases are not released (their holders do)."""
        # The flag as well as the cancel: redis-py's pub/sub reader was seen to swallow a
        # cancellation (redis-py 8.1, Python 3.11); the listener then stops at its next poll.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._timeout_s + 1)
        self._tasks = []
        self._lose_channel(StateUnavailableError("the admission queue is closed"))
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=self._timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def connected(self) -> bool:
        """Whether the grant channel is subscribed (the queue can wake waiters)."""
        return self._subscribed

    async def check(self) -> None:
        """Raises :class:`StateUnavailableError` unless Redis answers and grants can arrive."""
        await ping(self._redis, self._timeout_s)
        if not self._subscribed:
            raise StateUnavailableError("the grant channel is not subscribed yet")

    def depth(self, queue: str) -> int:
        return self._depths.get(queue, 0)

    # --- acquire -----------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, choices: Sequence[Pool]) -> Lease:
        if not choices:
            raise ValueError("acquire needs at least one pool to choose from")
        if not self._subscribed:
            raise StateUnavailableError("the grant channel is not subscribed")
        self._counter += 1
        lease_id = f"{self._instance}:{self._counter}"
        tenant_pool = ticket.tenant_pool
        args: list[Arg] = [
            *self._common,
            ticket.queue,
            ticket.tenant,
            _rank(ticket.priority),
            ticket.max_queue,
            lease_id,
            self._instance,
            _us(ticket.timeout_s),
            "" if tenant_pool is None else tenant_pool.id,
            0 if tenant_pool is None else tenant_pool.size,
        ]
        pools = self._pools
        for pool in choices:
            pools[pool.id] = pool
            args += (pool.id, pool.size)
        if tenant_pool is not None:
            pools[tenant_pool.id] = tenant_pool
        started = self._clock()
        # Registered before the script runs: its grant may be published before the reply.
        waiter = _Waiter(choices, asyncio.get_running_loop().create_future())
        self._waiters[lease_id] = waiter
        generation = self._generation
        try:
            reply = await self._acquire((), args)
        except BaseException:
            del self._waiters[lease_id]
            self._forget_later(ticket, choices, lease_id)  # it may have run all the same
            raise
        kind = reply[0]
        if kind == "queued":
            self._depths[ticket.queue] = int(reply[1])
            waiter.queued = True
            if len(self._waiters) == 1:
                self._first_waiter.set()
            if generation != self._generation or not self._subscribed:
                del self._waiters[lease_id]
                self._forget_later(ticket, choices, lease_id)
                raise StateUnavailableError("the grant channel broke while queueing")
            return await self._wait(ticket, lease_id, waiter, started)
        del self._waiters[lease_id]
        if kind == "lease":
            return self._lease(lease_id, choices[int(reply[1]) - 1], tenant_pool, 0.0)
        if kind == "full":
            self._depths[ticket.queue] = int(reply[1])
            raise queue_full_error(ticket)
        raise max_parallel_error(ticket)

    async def _wait(self, ticket: Ticket, lease_id: str, waiter: _Waiter, started: float) -> Lease:
        future = waiter.future
        remaining = ticket.timeout_s - (self._clock() - started)
        try:
            async with asyncio.timeout(remaining):
                pool_id = await future
        except TimeoutError:
            self._waiters.pop(lease_id, None)
            if future.done() and not future.cancelled() and future.exception() is None:
                pool_id = future.result()  # granted as the deadline struck: use it
            else:
                pool_id = await self._cancel_at_deadline(ticket, lease_id)
        except asyncio.CancelledError:
            self._waiters.pop(lease_id, None)
            # The ticket leaves the queue now; a slot granted meanwhile goes to the next one.
            await asyncio.shield(self._forget_later(ticket, waiter.choices.values(), lease_id))
            raise
        except StateUnavailableError:  # the listener lost the channel
            self._waiters.pop(lease_id, None)
            self._forget_later(ticket, waiter.choices.values(), lease_id)
            raise
        else:
            self._waiters.pop(lease_id, None)
        self._depths[ticket.queue] = max(0, self._depths.get(ticket.queue, 1) - 1)
        pool = waiter.choices.get(pool_id) or Pool(pool_id, 1)
        return self._lease(lease_id, pool, ticket.tenant_pool, self._clock() - started)

    async def _cancel_at_deadline(self, ticket: Ticket, lease_id: str) -> str:
        reply = await self._cancel((), (*self._common, ticket.queue, lease_id))
        if reply[0] == "granted":
            return str(reply[1])
        self._depths[ticket.queue] = int(reply[1])
        raise queue_timeout_error(ticket)

    def _lease(
        self, lease_id: str, pool: Pool, tenant_pool: Pool | None, waited_s: float
    ) -> _RedisLease:
        lease = _RedisLease(self, lease_id, pool, tenant_pool, waited_s)
        self._held[lease_id] = lease
        return lease

    def _forget_later(
        self, ticket: Ticket, choices: Iterable[Pool], lease_id: str
    ) -> asyncio.Task[None]:
        """Undo in the background whatever this ticket left in Redis (queue place, slot)."""
        tenant_pool = ticket.tenant_pool
        args: list[Arg] = [
            *self._common,
            ticket.queue,
            lease_id,
            "" if tenant_pool is None else tenant_pool.id,
            0 if tenant_pool is None else tenant_pool.size,
        ]
        for pool in choices:
            args += (pool.id, pool.size)
        return self._spawn(self._forget_now(ticket.queue, args))

    async def _forget_now(self, queue: str, args: Sequence[Arg]) -> None:
        try:
            self._depths[queue] = int(await self._forget((), args))
        except StateUnavailableError as exc:
            # Its deadline and the lease TTL clean up after it within seconds.
            log.debug("could not withdraw a ticket from redis: %s", exc)

    # --- release -----------------------------------------------------------------------

    async def _release(self, lease: _RedisLease) -> None:
        self._held.pop(lease.id, None)
        tenant_pool = lease.tenant_pool
        args = (
            *self._common,
            lease.id,
            lease.pool.id,
            lease.pool.size,
            "" if tenant_pool is None else tenant_pool.id,
            0 if tenant_pool is None else tenant_pool.size,
        )
        # Shielded: a release in the `finally` of a cancelled request still reaches Redis.
        await asyncio.shield(self._spawn(self._release_now(lease, args)))

    async def _release_now(self, lease: _RedisLease, args: Sequence[Arg]) -> None:
        try:
            await self._release_script((), args)
        except StateUnavailableError as exc:
            # Not renewed any more, the slot returns by itself within lease_ttl_s.
            log.warning("could not release slot %s of %s: %s", lease.id, lease.pool.id, exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task that :meth:`close` waits for."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- background tasks --------------------------------------------------------------

    async def _listen(self) -> None:
        failures = 0
        while not self._closing:
            pubsub = self._redis.pubsub()
            try:
                await self._serve(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a background loop: log, fail waiters over, retry
                if self._subscribed or failures == 0:
                    log.warning("admission grant channel lost: %r", exc)
                failures += 1
                self._lose_channel(StateUnavailableError(f"grant channel lost: {exc!r}"))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if not self._closing:
                await asyncio.sleep(_RECONNECT_S)

    async def _serve(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(self._timeout_s):
            await pubsub.subscribe(self._channel)
            while (await pubsub.get_message(timeout=self._timeout_s)) is None:
                pass  # the first message is the subscription's confirmation
        self._generation += 1
        self._subscribed = True
        self._ready.set()
        loop = asyncio.get_running_loop()
        pinged = loop.time()
        pinging = False  # a ping is out, its pong not back yet
        while not self._closing:
            message = await pubsub.get_message(timeout=_POLL_S)
            now = loop.time()
            if message is not None:
                if message["type"] == "message":
                    self._on_grant(message["data"])
                else:  # the pong (redis-py mangles it with decode_responses: any shape will do)
                    pinging = False
            elif pinging and now - pinged > self._timeout_s:
                raise StateUnavailableError("redis did not answer a ping on the grant channel")
            if not pinging and now - pinged >= _PING_S:
                pinged, pinging = now, True
                await pubsub.ping()

    def _on_grant(self, data: str) -> None:
        lease_id, _, pool_id = data.partition("\n")
        waiter = self._waiters.get(lease_id)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(pool_id)
        # No waiter: it timed out or was cancelled, and its cancel/forget script settles it.

    def _lose_channel(self, error: StateUnavailableError) -> None:
        self._subscribed = False
        self._ready.clear()
        for waiter in self._waiters.values():
            if waiter.queued and not waiter.future.done():
                waiter.future.set_exception(error)

    async def _upkeep(self) -> None:
        failing = False
        next_expiry: float | None = None
        while not self._closing:
            delay = self._upkeep_s
            if next_expiry is not None and self._waiters:
                # Someone here waits: reap a dead instance's lease the moment it expires.
                delay = min(delay, max(_REAP_SLACK_S, next_expiry + _REAP_SLACK_S))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._first_waiter.wait()
            self._first_waiter.clear()
            try:
                next_expiry = await self.maintain()
            except StateUnavailableError as exc:
                if not failing:
                    log.warning("admission upkeep failed (leases not renewed): %s", exc)
                failing = True
            else:
                failing = False

    async def maintain(self) -> float | None:
        """Renew this instance's leases, reap expired ones, refresh queue depths (one call).

        Returns the seconds until the earliest lease of the pools seen here expires (None:
        no lease is held in them).
        """
        held = list(self._held.values())
        args: list[Arg] = [*self._common, len(held)]
        for lease in held:
            tenant_pool = lease.tenant_pool
            args += (lease.id, lease.pool.id, "" if tenant_pool is None else tenant_pool.id)
        args.append(len(self._pools))
        for pool in self._pools.values():
            args += (pool.id, pool.size)
        queues = list(self._depths)
        args += queues
        reply = await self._maintain((), args)
        split = reply.index("")
        for lease_id in reply[:split]:
            lost = self._held.pop(lease_id, None)
            if lost is not None:
                log.warning("slot %s of %s expired before it was renewed", lease_id, lost.pool.id)
        for queue, depth in zip(queues, reply[split + 2 :], strict=True):
            self._depths[queue] = int(depth)
        earliest_us = int(reply[split + 1])
        return None if earliest_us < 0 else earliest_us / 1e6
