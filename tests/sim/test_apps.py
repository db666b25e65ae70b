"""Several simulated backends in one event loop (the demo runs three), driven in-process."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx

from aigw.sim.server import BackendSettings, create_app

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def test_apps_in_one_loop_keep_separate_engines_counters_and_metrics() -> None:
    apps = [create_app(BackendSettings(model=f"m{i}", time_scale=0.01, seed=i)) for i in (0, 1)]
    async with AsyncExitStack() as stack:
        clients: list[httpx.AsyncClient] = []
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            client = httpx.AsyncClient(transport=transport, base_url="http://sim")
            clients.append(await stack.enter_async_context(client))
        calls = [clients[0].post("/v1/chat/completions", json=CHAT) for _ in range(3)]
        calls.append(clients[1].post("/v1/chat/completions", json=CHAT))
        responses = await asyncio.gather(*calls)
        assert [r.status_code for r in responses] == [200] * 4
        assert [r.json()["model"] for r in responses] == ["m0"] * 3 + ["m1"]
        counts = [(await c.get("/sim/stats")).json()["completed"] for c in clients]
        assert counts == [3, 1]
        metrics = [(await c.get("/metrics")).text for c in clients]
        assert 'model_name="m0"' in metrics[0] and 'model_name="m1"' not in metrics[0]
        assert 'model_name="m1"' in metrics[1]
    assert all(app.state.sim.engine.steps > 0 for app in apps)
