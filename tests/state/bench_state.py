"""Per-call cost of the state hot paths: ``.venv/bin/python -m tests.state.bench_state``.

Memory: acquire+release of a free slot, and a two-charge reserve. Redis (a throwaway
redis-server on a free port): the same, sequential, over one local connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aigw.state.base import Charge, Pool, Quota
from aigw.state.memory import MemoryAdmissionQueue, MemoryRateLimiter
from aigw.state.redis import RedisAdmissionQueue, RedisRateLimiter
from aigw.state.scripts import connect
from tests.state.conftest import RedisServer, state_config, ticket

CHARGES = [
    Charge(Quota("k:rpm", 10**9, "requests"), 1),
    Charge(Quota("k:tpm", 10**12, "tokens"), 500),
]
TICKET = ticket("r", tenant_pool=Pool("key:team", 8))
CHOICES = [Pool("a", 4), Pool("b", 4)]


async def per_call_us(n: int, call: Callable[[int], Awaitable[object]]) -> float:
    for i in range(min(n, 1000)):
        await call(-i - 1)  # warm up
    started = time.perf_counter()
    for i in range(n):
        await call(i)
    return (time.perf_counter() - started) / n * 1e6


async def memory() -> None:
    clock = asyncio.get_running_loop().time
    queue, limiter = MemoryAdmissionQueue(clock), MemoryRateLimiter(clock)

    async def lease(_: int) -> None:
        await (await queue.acquire(TICKET, CHOICES)).release()

    print(f"memory acquire+release: {await per_call_us(200_000, lease):.2f} us")
    reserve = await per_call_us(100_000, lambda i: limiter.reserve(f"r{i}", CHARGES))
    print(f"memory reserve (2 charges): {reserve:.2f} us")


async def redis(server: RedisServer) -> None:
    config = state_config(server.url)
    client = connect(config)
    queue = RedisAdmissionQueue(client, config, "bench")
    await queue.start()
    limiter = RedisRateLimiter(client, config)

    async def lease(_: int) -> None:
        await (await queue.acquire(TICKET, CHOICES)).release()

    try:
        print(f"redis acquire+release: {await per_call_us(5_000, lease):.0f} us")
        reserve = await per_call_us(5_000, lambda i: limiter.reserve(f"r{i}", CHARGES))
        print(f"redis reserve (2 charges): {reserve:.0f} us")
    finally:
        await queue.close()
        await client.aclose()


def main() -> None:
    asyncio.run(memory())
    server = RedisServer()
    server.start()
    try:
        asyncio.run(redis(server))
    finally:
        server.kill()


if __name__ == "__main__":
    main()
