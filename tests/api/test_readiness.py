"""/readyz: 503 naming every model with no deployment that can take traffic (ejected or
draining), 200 again once one can."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import deployment
from tests.servers import ThreadedServer

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
