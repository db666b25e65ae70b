"""The shared-state interfaces: rate limits and admission (a priority queue and leased slots).

Two implementations of each, one contract (``tests/state/``) run against both:
:mod:`aigw.state.memory` (one process, zero setup) and :mod:`aigw.state.redis` (any number of
gateway processes sharing one Redis; every check-and-reserve is one atomic Lua script).

Rate limits are bucketed sliding windows: a quota allows at most ``limit`` units in **any**
window of ``window_s`` seconds (not a fixed minute, and not a token bucket that lets a full
window's burst through on top of the rate), with O(1) time and memory per quota; the
algorithm and its proof are in :mod:`aigw.state.windows`.

Admission hands out :class:`Lease` objects: one slot of one *pool* (a deployment's
``max_concurrency``) plus, optionally, one slot of the tenant's own pool (its key's
``max_parallel``). When no pool among the request's choices has a free slot, the request waits
as a :class:`Ticket` in its model's queue, ordered by priority (higher first), then fairly
between tenants of the same priority (start-time fair queuing: each tenant's tickets get
consecutive virtual times, so tenants alternate), then first come first served within a
tenant. A released slot is handed straight to the best waiting ticket that may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self

__all__ = [
    "AdmissionQueue",
    "Charge",
    "Lease",
    "LeaseContext",
    "LimitDecision",
    "Pool",
    "Quota",
    "QuotaStatus",
    "RateLimiter",
    "Stamp",
    "StateUnavailableError",
    "Ticket",
]

Unit = Literal["requests", "tokens"]

Stamp = int
"""When a reservation's charges were recorded: microseconds on the clock of the limiter that
recorded them (memory: its clock; Redis: Redis's ``TIME``), never negative. Callers keep it
and pass it back unchanged to :meth:`RateLimiter.reconcile` and :meth:`RateLimiter.refund`."""


class StateUnavailableError(Exception):
    """The shared store did not answer in time (Redis down, timed out, or a script failed).

    Raised by the Redis implementations only; the resilient wrapper turns it into local state
    or a 503, as ``state.on_redis_down`` says.
    """


# --- rate limits ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quota:
    """At most ``limit`` units (requests or tokens) in any ``window_s`` seconds, for ``key``.

    ``key`` names what is limited, e.g. ``"key:team-a:rpm"`` or ``"model:llama-3-8b:tpm"``;
    it is a storage key, so it must be stable across processes.
    """

    key: str
    limit: int
    unit: Unit
    window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Charge:
    """``amount`` units charged against ``quota`` by one request."""

    quota: Quota
    amount: int


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A quota after a check, for the ``x-ratelimit-*`` response headers.

    ``remaining``: units still available in the current window (after this request's charge
    when it was admitted). ``reset_s``: seconds until the quota is back to its full limit
    (every charge now in the window has aged out).
    """

    quota: Quota
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The outcome of :meth:`RateLimiter.reserve`.

    ``allowed`` False means nothing was charged; ``exceeded`` is the first quota that refused
    and ``retry_after_s`` how long until enough of it frees for this request's charge
    (``None`` when the charge is larger than the quota's whole limit: retrying cannot help).
    ``stamp`` (when allowed) is when the charges were recorded, the handle to settle them.
    """

    allowed: bool
    statuses: tuple[QuotaStatus, ...]
    exceeded: Quota | None = None
    retry_after_s: float | None = None
    stamp: Stamp = 0


class RateLimiter(Protocol):
    """Quotas of at most ``limit`` units in any ``window_s`` seconds (see the module docs).

    Charges are counted in time buckets, not per request, so nothing remembers a request:
    settling one takes its :class:`Stamp` and the charges it made. Settling adjusts the bucket
    the charges were recorded in while it is still counted; once it has left the window the
    charge has aged out as reserved, and settling does nothing. A bucket never goes below 0.
    """

    async def reserve(self, request_id: str, charges: Sequence[Charge]) -> LimitDecision:
        """Check every charge and, only if all fit, record them all at once (atomically).

        ``request_id`` is for logs only (nothing is stored under it). A charge of 0 units is
        checked (the quota must have room for one more unit) but records nothing. Charges of
        one reservation must name distinct quota keys, and a key always the same window.
        """
        ...

    async def reconcile(self, stamp: Stamp, charges: Sequence[Charge], actual: int) -> None:
        """The reservation stamped ``stamp`` made ``charges``; each really cost ``actual``.

        Adds ``actual - charge.amount`` to the bucket each was recorded in (up or down), all
        in one step (one round trip to a shared store).
        """
        ...

    async def refund(self, stamp: Stamp, charges: Sequence[Charge]) -> None:
        """Take back ``charges``, reserved at ``stamp``, as if they had never been made.

        Each reservation must be refunded at most once (the buckets cannot tell).
        """
        ...


# --- admission -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pool:
    """A set of ``size`` slots, e.g. a deployment's ``max_concurrency`` (``id`` = its id)."""

    id: str
    size: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request asking for a slot.

    ``queue``: the name of the queue it waits in (the public model name). ``tenant``: the
    API key's name (fairness and ``tenant_pool``). ``tenant_pool``: the key's own
    ``max_parallel`` slots, taken together with the pool slot (None: unlimited).
    ``timeout_s``: the longest it may wait. ``max_queue``: the queue's bound; a full queue
    refuses at once.
    """

    id: str
    queue: str
    tenant: str
    priority: int
    timeout_s: float
    max_queue: int
    tenant_pool: Pool | None = None


class Lease(Protocol):
    """A held slot. ``async with lease:`` (or :meth:`release`) gives it back exactly once.

    ``pool`` is the pool whose slot this is (the deployment to send to). ``waited_s`` is how
    long the ticket queued (0 when a slot was free at once). Releasing twice is harmless:
    only the first release frees the slot.
    """

    @property
    def pool(self) -> Pool: ...

    @property
    def waited_s(self) -> float: ...

    async def release(self) -> None: ...

    async def __aenter__(self) -> Lease: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class LeaseContext:
    """``async with lease:`` for any lease class that has ``release()`` (a slotted mixin)."""

    __slots__ = ()

    async def release(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


class AdmissionQueue(Protocol):
    async def acquire(self, ticket: Ticket, choices: Sequence[Pool]) -> Lease:
        """A slot of the first of ``choices`` (in the order given) that has one free.

        If none has, and the tenant's pool has a free slot, the ticket waits in its queue
        until a slot of one of ``choices`` is handed to it. Raises:

        - :class:`aigw.errors.RateLimitError` code ``queue_full`` when the queue already
          holds ``max_queue`` tickets, ``queue_timeout`` after ``timeout_s`` (both carry a
          ``Retry-After`` header), ``max_parallel_exceeded`` when the tenant's pool is full;
        - ``CancelledError`` when the caller is cancelled (client gone): the ticket leaves the
          queue at once, and a slot handed to it in the meantime goes to the next ticket.
        """
        ...

    def depth(self, queue: str) -> int:
        """Tickets waiting in ``queue`` as last known to this process (for metrics)."""
        ...
