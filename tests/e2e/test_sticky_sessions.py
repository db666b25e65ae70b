"""Sticky sessions across two ``aigw serve`` processes sharing one redis-server: a
conversation whose turns alternate between the instances stays on one deployment."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from aigw.sim.server import BackendSettings
from aigw.sim.server import create_app as create_backend
from tests.conftest import UPSTREAM_MODEL, deployment
from tests.e2e.clients import MODEL
from tests.e2e.procs import Processes, RedisServer, start_gateways
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

KEY = "sk-e2e-sticky-0123456789"
SESSIONS = 12
TURNS = 8


async def test_a_session_alternating_between_instances_stays_on_one_deployment(
    processes: Processes, redis_server: RedisServer
) -> None:
    with ExitStack() as stack:
        backends = [
            stack.enter_context(
                serve_in_thread(
                    create_backend(BackendSettings(model=UPSTREAM_MODEL, time_scale=0.01, seed=i))
                )
            )
            for i in range(3)
        ]
        stack.callback(processes.close)  # gateways die before the backends stop
        config: dict[str, Any] = {
            "state": {"backend": "redis", "url": redis_server.url},
            "models": [
                {
                    "name": MODEL,
                    "policy": "round-robin",
                    "deployments": [deployment(b.url, f"d{i}") for i, b in enumerate(backends)],
                    "sticky": {"key": "user", "ttl_s": 600},
                }
            ],
            "auth": {"keys": [{"name": "team", "key": KEY}]},
            "tokens": {"offline": True},
            "server": {"drain_seconds": 0},
        }
        gateways = start_gateways(processes, config, 2)
        async with httpx.AsyncClient(timeout=30) as client:

            async def converse(session: str) -> list[tuple[int, str]]:
                messages: list[dict[str, Any]] = []
                served = []
                for turn in range(TURNS):
                    instance = turn % 2  # every turn on the other instance
                    messages.append({"role": "user", "content": f"{session} turn {turn}"})
                    reply = await client.post(
                        f"{gateways[instance].url}/v1/chat/completions",
                        json={
                            "model": MODEL,
                            "messages": messages,
                            "max_tokens": 4,
                            "user": session,
                        },
                        headers={"authorization": f"Bearer {KEY}"},
                    )
                    assert reply.status_code == 200, reply.text
                    messages.append(reply.json()["choices"][0]["message"])
                    served.append((instance, reply.headers["x-aigw-deployment"]))
                return served

            results = await asyncio.gather(*(converse(f"user-{i}") for i in range(SESSIONS)))
    for served in results:
        assert {instance for instance, _ in served} == {0, 1}
        assert len({dep for _, dep in served}) == 1, served
    per_deployment = Counter(served[0][1] for served in results)
    print(f"\nsessions per deployment: {dict(per_deployment)}")
    assert len(per_deployment) >= 2  # the first turns were spread by each instance's policy
