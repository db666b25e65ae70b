"""Sticky sessions over real sockets: conversations stay on their deployment, and draining
one moves only its conversations."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import deployment
from tests.servers import ThreadedServer

Start = Callable[..., ThreadedServer]
MODEL = "m"
ADMIN_KEY = "admin-s3cret"
SESSIONS = 24
TURNS = 10
# At most 4 conversations at once: no deployment ever passes the load bound's floor
# (aigw.routing.sticky.MIN_IN_FLIGHT), so every move here is the drain's doing.
IN_FLIGHT = 4


async def backend_requests(backend: ThreadedServer) -> int:
    async with httpx.AsyncClient() as client:
        stats: dict[str, Any] = (await client.get(f"{backend.url}/sim/stats")).json()
    return int(stats["received"])


async def converse(
    client: httpx.AsyncClient, url: str, session: str, turns: int, turn_base: int = 0
) -> list[str]:
    """One conversation, turn by turn (each turn resends the history, as chat clients do);
    the deployment of each turn."""
    messages: list[dict[str, str]] = []
    served = []
    for turn in range(turn_base, turn_base + turns):
        messages.append({"role": "user", "content": f"{session}: question {turn}"})
        reply = await client.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": messages, "max_tokens": 4},
            headers={"x-session-id": session},
        )
        assert reply.status_code == 200, reply.text
        messages.append(reply.json()["choices"][0]["message"])
        served.append(reply.headers["x-aigw-deployment"])
    return served


async def all_sessions(url: str, turns: int, turn_base: int = 0) -> dict[str, list[str]]:
    gate = asyncio.Semaphore(IN_FLIGHT)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(session: str) -> list[str]:
            async with gate:
                return await converse(client, url, session, turns, turn_base)

        names = [f"conv-{i}" for i in range(SESSIONS)]
        results = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, results, strict=True))


async def test_sessions_stay_on_their_deployment_and_draining_moves_only_its_sessions(
    start_backend: Start, start_gateway: Start
) -> None:
    backends = {name: start_backend(seed=i) for i, name in enumerate("abc")}
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "policy": "round-robin",  # spreads the sessions' first requests evenly
                    "deployments": [deployment(b.url, n) for n, b in backends.items()],
                    "sticky": {"key": "header", "ttl_s": 600},
                }
            ],
            "auth": {"admin_key": ADMIN_KEY},
        }
    )
    served = await all_sessions(gateway.url, TURNS)
    bound = {s: Counter(deps).most_common(1)[0][0] for s, deps in served.items()}
    on_bound = sum(d == bound[s] for s, deps in served.items() for d in deps)
    total = SESSIONS * TURNS
    print(f"\n{on_bound} of {total} requests on their session's deployment")
    assert on_bound >= 0.99 * total
    assert set(bound.values()) == {"a", "b", "c"}  # the first requests were spread
    # What the backends counted agrees with what the gateway said.
    per_deployment = Counter(d for deps in served.values() for d in deps)
    assert {n: await backend_requests(b) for n, b in backends.items()} == per_deployment

    async with httpx.AsyncClient() as client:
        drained = await client.post(
            f"{gateway.url}/admin/deployments/a/drain",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            json={},
        )
    assert drained.status_code == 200
    after = await all_sessions(gateway.url, 4, turn_base=TURNS)
    moved: dict[str, set[str]] = defaultdict(set)
    for session, deps in after.items():
        assert "a" not in deps
        if bound[session] == "a":
            moved[session] = set(deps)
            assert len(set(deps)) == 1, deps  # moved once, then stayed on the new one
        else:
            assert set(deps) == {bound[session]}, (session, bound[session], deps)
    assert moved, "some sessions were on the drained deployment"
