"""Chaos for health: a backend SIGKILLed under load, the same backend coming back, and an
ejection shared by two gateway processes through one Redis (issue 10, chaos tests 1 and 4).

Backends are ``aigw fake-backend`` processes, gateways ``aigw serve`` processes, Redis a
redis-server of the test's own; all on 127.0.0.1, all killed by PID (tests/e2e/procs.py).
The other chaos tests (leases, Redis killed or hung) are in test_chaos.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UPSTREAM_MODEL
from tests.e2e.clients import MODEL, Result, chat, deployment
from tests.e2e.procs import (
    GatewayProcess,
    Proc,
    Processes,
    RedisServer,
    start_fake_backend,
)
from tests.servers import free_port

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-health-0123456789"
PROBE = {"interval_s": 0.2, "timeout_s": 0.2, "rise": 2, "fall": 3}


def start_backend(processes: Processes, name: str, port: int) -> Proc:
    return start_fake_backend(processes, name, port, UPSTREAM_MODEL, 0.01)


def gateway_config(ports: list[int], *, kind: str, health: dict[str, Any], **state: Any) -> Any:
    extra: dict[str, Any] = {"kind": kind}
    if kind == "gpu":
        extra["health"] = PROBE
    deployments = [
        deployment(f"http://127.0.0.1:{port}", f"b{i}", **extra) for i, port in enumerate(ports)
    ]
    return {
        "state": state or {"backend": "memory"},
        "models": [{"name": MODEL, "policy": "round-robin", "deployments": deployments}],
        "auth": {"keys": [{"name": "team", "key": KEY}]},
        "tokens": {"offline": True},
        "server": {"drain_seconds": 0},
        "health": health,
    }


async def metrics(client: httpx.AsyncClient, url: str) -> dict[tuple[str, str], float]:
    """(sample name, deployment) -> value, attempts summed over outcomes."""
    text = (await client.get(f"{url}/metrics")).text
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            deployment_id = sample.labels.get("deployment")
            if deployment_id is not None:
                key = (sample.name, deployment_id)
                values[key] = values.get(key, 0.0) + sample.value
    return values


def attempts(values: dict[tuple[str, str], float], deployment_id: str) -> float:
    return values.get(("aigw_upstream_attempts_total", deployment_id), 0.0)


class Load:
    """``workers`` clients sending non-streamed requests back to back until stopped."""

    def __init__(self, client: httpx.AsyncClient, url: str, workers: int) -> None:
        self.results: list[Result] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._run(client, url)) for _ in range(workers)]

    async def _run(self, client: httpx.AsyncClient, url: str) -> None:
        while not self._stop.is_set():
            self.results.append(await chat(client, url, KEY))

    async def stop(self) -> list[Result]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.results


async def test_a_killed_backend_costs_no_request_and_its_return_ramps_without_flapping(
    processes: Processes,
) -> None:
    ports = [free_port() for _ in range(3)]
    backends = [start_backend(processes, f"backend{i}", port) for i, port in enumerate(ports)]
    health = {"slow_start_s": 3.0, "base_ejection_seconds": 1.0}
    gateway = GatewayProcess(processes, gateway_config(ports, kind="gpu", health=health), "gw")
    gateway.wait_ready()
    async with httpx.AsyncClient(timeout=10.0) as client:
        load = Load(client, gateway.url, workers=6)
        await asyncio.sleep(1.0)
        backends[1].kill()  # SIGKILL, under load
        killed = time.monotonic()

        async def probe_down() -> bool:
            return (await metrics(client, gateway.url)).get(
                ("aigw_deployment_probe_up", "b1")
            ) == 0.0

        while not await probe_down():
            assert time.monotonic() - killed < 5.0, "b1 was never probed down"
            await asyncio.sleep(0.05)
        down_after = time.monotonic() - killed
        at_down = attempts(await metrics(client, gateway.url), "b1")
        await asyncio.sleep(1.5)  # longer than its passive ejection: the probe holds it out
        assert attempts(await metrics(client, gateway.url), "b1") == at_down

        backends[1] = start_backend(processes, "backend1-again", ports[1])
        back = time.monotonic()
        windows: list[tuple[float, float]] = []  # (b1 attempts, all attempts) per 0.5 s
        before = await metrics(client, gateway.url)
        while time.monotonic() - back < 5.5:
            await asyncio.sleep(0.5)
            now = await metrics(client, gateway.url)
            total = sum(attempts(now, f"b{i}") - attempts(before, f"b{i}") for i in range(3))
            windows.append((attempts(now, "b1") - attempts(before, "b1"), total))
            before = now
        up = now.get(("aigw_deployment_probe_up", "b1"))
        results = await load.stop()

    errors = [r for r in results if r.status != 200]
    assert not errors, f"{len(errors)} of {len(results)} failed: {errors[:3]}"
    assert len(results) > 200
    assert down_after < 0.2 * 3 * 1.1 + 1.0  # fall x interval, plus scheduling slack
    assert up == 1.0
    shares = [b1 / total for b1, total in windows if total]
    first = next(i for i, s in enumerate(shares) if s > 0)  # up after rise probes
    assert first <= 2, shares  # rise 2 x 0.2 s after it listens again
    assert shares[first] < 0.2, shares  # slow start: well below its third at first
    assert sum(shares[-3:]) / 3 > 0.25, shares  # then its fair third again
    log = gateway.proc.log_text()
    assert log.count("deployment b1 is down") == 1, log[-2000:]  # no flapping
    assert log.count("deployment b1 is up") == 1, log[-2000:]


async def test_an_ejection_reaches_a_second_gateway_within_one_sync_interval(
    processes: Processes, redis_server: RedisServer
) -> None:
    ports = [free_port() for _ in range(3)]
    backends = [start_backend(processes, f"backend{i}", port) for i, port in enumerate(ports)]
    sync_s = 0.3
    health = {"sync_interval_s": sync_s, "base_ejection_seconds": 30.0}
    config = gateway_config(
        ports, kind="cloud", health=health, backend="redis", url=redis_server.url
    )
    gateways = [GatewayProcess(processes, config, f"gw{i}") for i in range(2)]
    for gateway in gateways:
        gateway.wait_ready()
    first, second = gateways
    async with httpx.AsyncClient(timeout=10.0) as client:
        backends[2].kill()
        for _ in range(30):  # through the first gateway only, until it ejects b2
            assert (await chat(client, first.url, KEY)).status == 200
            if (await metrics(client, first.url)).get(("aigw_deployment_healthy", "b2")) == 0:
                break
        else:
            raise AssertionError("the first gateway never ejected b2")
        noticed = time.monotonic()
        while (await metrics(client, second.url)).get(("aigw_deployment_healthy", "b2")) != 0:
            assert time.monotonic() - noticed < 5 * sync_s, "b2's ejection was not shared"
            await asyncio.sleep(0.02)
        shared_after = time.monotonic() - noticed
        results = [await chat(client, second.url, KEY) for _ in range(30)]
        seen = await metrics(client, second.url)
    assert all(r.status == 200 for r in results)
    assert attempts(seen, "b2") == 0  # the second gateway never tried the dead backend
    assert shared_after < sync_s * 1.1 + 0.15  # one sync interval (+ jitter-free slack)
