"""The admission stage: a slot on a deployment (and on the key's ``max_parallel``), or a wait.

Pools and queue settings are built once from the config. A request needs a lease only when
the deployment it goes to has ``max_concurrency`` or its key has ``max_parallel``; otherwise
admission costs nothing. The lease asks for the routed deployment first and the model's other
candidates after it, least loaded first (another instance may have filled the routed one), and
queues the request when none has a free slot.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigw.config import GatewayConfig, QueueConfig
from aigw.errors import InvalidRequestError
from aigw.fleet.deployment import Deployment
from aigw.state.base import AdmissionQueue, Lease, LeaseContext, Pool, Ticket
from aigw.types import Principal, RequestMeta

__all__ = ["NO_LEASE", "Admission"]

_UNLIMITED = 2**31 - 1  # a pool without max_concurrency, offered among limited ones


class _NoLease(LeaseContext):
    """The lease of a request that needs no slot: holds nothing, releases nothing."""

    __slots__ = ()
    pool = Pool("", _UNLIMITED)
    waited_s = 0.0

    async def release(self) -> None:
        pass


NO_LEASE = _NoLease()


class Admission:
    def __init__(self, queue: AdmissionQueue, config: GatewayConfig) -> None:
        self._queue = queue
        self._pools = {
            d.id: Pool(d.id, d.max_concurrency or _UNLIMITED)
            for m in config.models
            for d in m.deployments
        }
        self._tenant_pools = {
            k.name: Pool(f"key:{k.name}", k.max_parallel)
            for k in config.auth.keys
            if k.max_parallel is not None
        }
        self._queues: dict[str, QueueConfig] = {m.name: m.queue for m in config.models}

    def ticket(
        self, request_id: str, principal: Principal, model: str, meta: RequestMeta
    ) -> Ticket:
        """The request's place in its model's queue, should it need to wait."""
        settings = self._queues[model]
        priority = principal.priority
        if meta.priority is not None:
            priority = min(priority, meta.priority)  # a client may lower its priority only
        timeout = settings.timeout_s
        if meta.queue_timeout is not None:
            if meta.queue_timeout > settings.timeout_s:
                raise InvalidRequestError(
                    f"x-aigw-queue-timeout must be at most {settings.timeout_s:g} seconds for "
                    f"model `{model}` (its queue.timeout_s; got {meta.queue_timeout:g}).",
                    param="x-aigw-queue-timeout",
                    code="invalid_header",
                )
            timeout = meta.queue_timeout
        return Ticket(
            id=request_id,
            queue=model,
            tenant=principal.name,
            priority=priority,
            timeout_s=timeout,
            max_queue=settings.max_size,
            tenant_pool=self._tenant_pools.get(principal.name),
        )

    async def lease(
        self, ticket: Ticket, chosen: Deployment | None, candidates: Sequence[Deployment]
    ) -> Lease:
        """A slot on ``chosen`` or, failing that, on another candidate; waits if none has one.

        ``chosen`` is None when every candidate is at capacity as this process sees it.
        """
        if ticket.tenant_pool is None and (
            chosen is not None and chosen.config.max_concurrency is None
        ):
            return NO_LEASE
        choices: list[Pool] = [] if chosen is None else [self._pools[chosen.id]]
        for d in sorted(candidates, key=_load):
            if d is not chosen:
                choices.append(self._pools[d.id])
        return await self._queue.acquire(ticket, choices)

    def depth(self, model: str) -> int:
        return self._queue.depth(model)


def _load(deployment: Deployment) -> int:
    return deployment.state.in_flight
