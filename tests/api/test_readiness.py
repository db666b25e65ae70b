"""/readyz: 503 naming every model with no deployment that can take traffic (ejected,
draining or probed down), 200 again once one can."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from aigw.sim.server import BackendSettings
from aigw.sim.server import create_app as create_backend
from tests.conftest import FAST, UPSTREAM_MODEL, deployment
from tests.e2e.procs import wait_until
from tests.servers import ThreadedServer, serve_in_thread

MODEL = "m"
OTHER = "n"
ADMIN_KEY = "sk-admin-readiness-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
Start = Callable[..., ThreadedServer]


def two_models(backend: ThreadedServer) -> dict[str, Any]:
    return {
        "auth": {"admin_key": ADMIN_KEY},
        "models": [
            {"name": MODEL, "deployments": [deployment(backend.url, "m-a")]},
            {
                "name": OTHER,
                "deployments": [deployment(backend.url, "n-a"), deployment(backend.url, "n-b")],
            },
        ],
    }


def drain(gateway: ThreadedServer, deployment_id: str, action: str = "drain") -> None:
    url = f"{gateway.url}/admin/deployments/{deployment_id}/{action}"
    assert httpx.post(url, headers=ADMIN).status_code == 200


def test_a_model_whose_only_deployment_drains_is_not_ready(
    start_backend: Start, start_gateway: Start
) -> None:
    gateway = start_gateway(two_models(start_backend()))
    assert httpx.get(f"{gateway.url}/readyz").json() == {
        "status": "ready",
        "models": [MODEL, OTHER],
    }
    drain(gateway, "n-a")  # n still has n-b
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    drain(gateway, "m-a")
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unready", "models_without_healthy_deployment": [MODEL]}
    drain(gateway, "m-a", "undrain")
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200


def test_ejected_and_draining_together_leave_a_model_unready(
    start_backend: Start, start_gateway: Start
) -> None:
    gateway = start_gateway(two_models(start_backend()))
    drain(gateway, "n-a")
    # n-b ejected by hand, as outlier detection would after consecutive failures.
    app: Any = gateway.server.config.app
    loop = gateway.loop
    assert loop is not None

    async def eject() -> None:
        router = app.state.aigw.gateway.router
        router.deployments["n-b"].state.ejected_until = asyncio.get_running_loop().time() + 60

    asyncio.run_coroutine_threadsafe(eject(), loop).result(5)
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["models_without_healthy_deployment"] == [OTHER]


class HealthSwitch:
    """A simulated backend whose ``/health`` answers 503 while ``down``; its API still works."""

    def __init__(self) -> None:
        self.down = False
        self._app = create_backend(BackendSettings(model=UPSTREAM_MODEL, time_scale=FAST))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.down and scope["type"] == "http" and scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._app(scope, receive, send)


def readyz(gateway: ThreadedServer) -> httpx.Response:
    return httpx.get(f"{gateway.url}/readyz")


def test_a_model_whose_deployments_are_all_probed_down_is_not_ready(
    servers: ExitStack, start_backend: Start, start_gateway: Start
) -> None:
    switches = [HealthSwitch(), HealthSwitch()]
    probed = [servers.enter_context(serve_in_thread(s)) for s in switches]
    probe = {"interval_s": 0.05, "timeout_s": 0.5, "rise": 1, "fall": 1}
    gateway = start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "deployments": [
                        deployment(b.url, f"m-{i}", kind="gpu", health=probe)
                        for i, b in enumerate(probed)
                    ],
                },
                {"name": OTHER, "deployments": [deployment(start_backend().url, "n-a")]},
            ],
        }
    )
    wait_until(lambda: readyz(gateway).status_code == 200, 5.0, "ready")
    switches[0].down = True  # m still has m-1
    wait_until(lambda: probed_up(gateway) == {"m-0": False, "m-1": True}, 5.0, "m-0 down")
    assert readyz(gateway).status_code == 200
    switches[1].down = True
    wait_until(lambda: readyz(gateway).status_code == 503, 5.0, "m unready")
    assert readyz(gateway).json() == {
        "status": "unready",
        "models_without_healthy_deployment": [MODEL],
    }
    # Probed down only: neither ejected nor draining, and the API itself still answers.
    assert probed_up(gateway) == {"m-0": False, "m-1": False}
    assert not any(ejected_or_draining(gateway).values())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body).status_code == 200
    switches[1].down = False
    wait_until(lambda: readyz(gateway).status_code == 200, 5.0, "ready again")


def _deployment_states(gateway: ThreadedServer, read: Callable[[Any, float], Any]) -> Any:
    app: Any = gateway.server.config.app
    loop = gateway.loop
    assert loop is not None

    async def run() -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        deployments = app.state.aigw.gateway.router.deployments
        return {i: read(d.state, now) for i, d in deployments.items() if i.startswith("m-")}

    return asyncio.run_coroutine_threadsafe(run(), loop).result(5)


def probed_up(gateway: ThreadedServer) -> dict[str, bool | None]:
    result: dict[str, bool | None] = _deployment_states(gateway, lambda s, _: s.probe_up)
    return result


def ejected_or_draining(gateway: ThreadedServer) -> dict[str, bool]:
    result: dict[str, bool] = _deployment_states(
        gateway, lambda s, now: s.draining or s.ejected_until > now
    )
    return result
