"""The AdmissionQueue contract, for memory and Redis alike: slots, queue order, refusals."""

from __future__ import annotations

import asyncio

import pytest

from aigw.errors import RateLimitError
from aigw.state.base import AdmissionQueue, Lease, Pool
from tests.state.conftest import Backend, ticket, until

P = Pool("p", 1)


async def queued(queue: AdmissionQueue, n: int, name: str = "m") -> None:
    await until(lambda: queue.depth(name) == n)


async def serve_in_turn(tasks: list[asyncio.Task[Lease]]) -> list[int]:
    """Release each lease as it is granted; the indexes of ``tasks`` in the order served."""
    order: list[int] = []
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # a slot goes to one ticket at a time
        task = done.pop()
        order.append(tasks.index(task))
        await task.result().release()
    return order


async def test_a_free_slot_is_leased_at_once_from_the_first_choice_with_room(
    backend: Backend,
) -> None:
    queue = await backend.admission()
    full, roomy = Pool("full", 1), Pool("roomy", 2)
    first = await queue.acquire(ticket("r1"), [full, roomy])
    assert first.pool == full and first.waited_s == 0
    second = await queue.acquire(ticket("r2"), [full, roomy])
    assert second.pool == roomy
    assert queue.depth("m") == 0
    await first.release()
    await second.release()


async def test_a_full_pool_queues_and_the_release_hands_the_slot_over(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r1"), [P])
    waiter = asyncio.create_task(queue.acquire(ticket("r2"), [P]))
    await queued(queue, 1)
    assert not waiter.done()
    await held.release()
    async with await waiter as lease:
        assert lease.pool == P
        assert lease.waited_s > 0
    assert queue.depth("m") == 0


async def test_higher_priority_is_served_first(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r0"), [P])
    tasks = []
    for i, priority in enumerate([0, 5, 1]):
        tasks.append(asyncio.create_task(queue.acquire(ticket(f"r{i}", priority=priority), [P])))
        await queued(queue, i + 1)
    await held.release()
    assert await serve_in_turn(tasks) == [1, 2, 0]


async def test_tenants_take_turns_and_each_tenant_is_served_in_order(backend: Backend) -> None:
    """A queues five, then B one: B is served second, not sixth."""
    queue = await backend.admission()
    held = await queue.acquire(ticket("r0"), [P])
    tasks = []
    for i, tenant in enumerate(["a"] * 5 + ["b"]):
        tasks.append(asyncio.create_task(queue.acquire(ticket(f"r{i}", tenant=tenant), [P])))
        await queued(queue, i + 1)
    await held.release()
    assert await serve_in_turn(tasks) == [0, 5, 1, 2, 3, 4]


async def test_the_deadline_answers_queue_timeout(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r1"), [P])
    with pytest.raises(RateLimitError) as refused:
        await queue.acquire(ticket("r2", timeout_s=0.2), [P])
    assert refused.value.code == "queue_timeout"
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert queue.depth("m") == 0
    await held.release()


async def test_a_full_queue_refuses_at_once(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r1"), [P])
    waiter = asyncio.create_task(queue.acquire(ticket("r2", max_queue=1), [P]))
    await queued(queue, 1)
    with pytest.raises(RateLimitError) as refused:
        await queue.acquire(ticket("r3", max_queue=1), [P])
    assert refused.value.code == "queue_full"
    assert refused.value.headers["Retry-After"] == "1"
    await held.release()
    await (await waiter).release()


async def test_a_tenant_at_max_parallel_is_refused_even_with_free_slots(
    backend: Backend,
) -> None:
    queue = await backend.admission()
    mine = Pool("key:team-a", 1)
    held = await queue.acquire(ticket("r1", tenant_pool=mine), [Pool("big", 10)])
    with pytest.raises(RateLimitError) as refused:
        await queue.acquire(ticket("r2", tenant_pool=mine), [Pool("big", 10)])
    assert refused.value.code == "max_parallel_exceeded"
    assert refused.value.headers["Retry-After"] == "1"
    await held.release()
    await (await queue.acquire(ticket("r3", tenant_pool=mine), [Pool("big", 10)])).release()


async def test_a_ticket_whose_tenant_is_full_is_passed_over_until_its_tenant_frees(
    backend: Backend,
) -> None:
    queue = await backend.admission()
    mine = Pool("key:a", 2)
    other = await queue.acquire(ticket("b0", tenant="b"), [P])
    first = await queue.acquire(ticket("a0", tenant="a", tenant_pool=mine), [Pool("q", 1)])
    waiting_a = asyncio.create_task(queue.acquire(ticket("a1", tenant="a", tenant_pool=mine), [P]))
    await queued(queue, 1)
    second = await queue.acquire(ticket("a2", tenant="a", tenant_pool=mine), [Pool("s", 1)])
    waiting_b = asyncio.create_task(queue.acquire(ticket("b1", tenant="b"), [P]))
    await queued(queue, 2)
    await other.release()  # a1 comes first, but its tenant is full: b1 gets the slot
    lease_b = await waiting_b
    assert not waiting_a.done()
    await lease_b.release()  # now the slot of p is free, and a1 still may not take it
    await asyncio.sleep(0.05)
    assert not waiting_a.done()
    await second.release()  # a's tenant has room: a1 takes the free slot
    await (await waiting_a).release()
    await first.release()


async def test_cancelling_a_queued_ticket_takes_it_out_at_once(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r1"), [P])
    gone = asyncio.create_task(queue.acquire(ticket("r2"), [P]))
    await queued(queue, 1)
    stays = asyncio.create_task(queue.acquire(ticket("r3"), [P]))
    await queued(queue, 2)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert queue.depth("m") == 1
    await held.release()
    async with await stays as lease:
        assert lease.pool == P


async def test_a_slot_granted_to_a_cancelled_ticket_passes_to_the_next(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r1"), [P])
    first = asyncio.create_task(queue.acquire(ticket("r2"), [P]))
    await queued(queue, 1)
    second = asyncio.create_task(queue.acquire(ticket("r3"), [P]))
    await queued(queue, 2)
    await held.release()  # granted to r2 (memory: at once; Redis: its grant is on its way)...
    first.cancel()  # ...which is cancelled before it could use it
    try:
        lease = await first
    except asyncio.CancelledError:
        pass
    else:  # Redis only: the grant reached r2 before the cancellation did
        assert backend.name == "redis"
        await lease.release()
    lease = await asyncio.wait_for(second, 5)
    await lease.release()
    await (await queue.acquire(ticket("r4", max_queue=0), [P])).release()  # one slot, free


async def test_releasing_twice_frees_one_slot(backend: Backend) -> None:
    queue = await backend.admission()
    lease = await queue.acquire(ticket("r1"), [P])
    await lease.release()
    await lease.release()
    again = await queue.acquire(ticket("r2"), [P])
    with pytest.raises(RateLimitError) as refused:
        await queue.acquire(ticket("r3", max_queue=0), [P])
    assert refused.value.code == "queue_full"
    await again.release()


async def test_a_lease_is_an_async_context_manager(backend: Backend) -> None:
    queue = await backend.admission()
    async with await queue.acquire(ticket("r1"), [P]) as lease:
        assert lease.pool == P
    async with await queue.acquire(ticket("r2", max_queue=0), [P]):
        pass


async def test_queues_are_separate_but_share_pools(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r1", queue="m1"), [P])
    waiter = asyncio.create_task(queue.acquire(ticket("r2", queue="m2"), [P]))
    await queued(queue, 1, "m2")
    assert queue.depth("m1") == 0
    await held.release()
    await (await waiter).release()


async def test_a_waiter_may_take_any_of_its_choices(backend: Backend) -> None:
    queue = await backend.admission()
    a, b = Pool("a", 1), Pool("b", 1)
    held_a = await queue.acquire(ticket("r1"), [a])
    held_b = await queue.acquire(ticket("r2"), [b])
    waiter = asyncio.create_task(queue.acquire(ticket("r3"), [a, b]))
    await queued(queue, 1)
    await held_b.release()
    lease = await waiter
    assert lease.pool == b
    await lease.release()
    await held_a.release()


async def test_across_queues_sharing_a_pool_priority_comes_first(backend: Backend) -> None:
    queue = await backend.admission()
    held = await queue.acquire(ticket("r0"), [P])
    low = asyncio.create_task(queue.acquire(ticket("r1", queue="m1"), [P]))
    await queued(queue, 1, "m1")
    high = asyncio.create_task(queue.acquire(ticket("r2", queue="m2", priority=5), [P]))
    await queued(queue, 1, "m2")
    await held.release()
    assert await serve_in_turn([low, high]) == [1, 0]
