"""Active probes, the health task's demotion and shared ejections (aigw/routing/probes.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx

from aigw.config import GatewayConfig, ProbeConfig
from aigw.configfile import parse_config
from aigw.errors import UpstreamConnectionError
from aigw.fleet.attempt import Attempt
from aigw.fleet.deployment import DeploymentState
from aigw.routing.probes import HealthMonitor, probe_url, record_probe
from aigw.routing.router import Router
from aigw.state.ejections import MemoryEjectionStore
from aigw.types import Endpoint, RouteContext

REQUEST = RouteContext(Endpoint.CHAT, "chat", {})


def config(**deployment: object) -> GatewayConfig:
    deployments = [
        {
            "id": f"d{i}",
            "base_url": f"http://10.0.0.{i}:8000/v1",
            "model": "m",
            "kind": "gpu",
            **deployment,
        }
        for i in range(3)
    ]
    return parse_config(
        {
            "models": [{"name": "chat", "policy": "round-robin", "deployments": deployments}],
            "health": {"sync_interval_s": 0.05, "slow_start_s": 1.0},
        }
    )


def test_fall_failures_mark_down_and_rise_passes_mark_up() -> None:
    probe = ProbeConfig()  # rise 2, fall 3
    state = DeploymentState()
    assert record_probe(state, True, probe, 0.0) is None and state.probe_up is True
    assert record_probe(state, False, probe, 1.0) is None
    assert record_probe(state, False, probe, 2.0) is None
    assert record_probe(state, False, probe, 3.0) is False and state.probe_up is False
    assert record_probe(state, True, probe, 4.0) is None and state.probe_up is False
    assert record_probe(state, True, probe, 5.0) is True and state.slow_start_from == 5.0


def test_alternating_results_never_flap() -> None:
    probe = ProbeConfig()
    state = DeploymentState()
    for i in range(50):
        assert record_probe(state, i % 2 == 0, probe, float(i)) is None
    assert state.probe_up is True


def test_coming_back_lifts_the_passive_ejection_but_not_a_retry_after() -> None:
    probe = ProbeConfig(rise=1, fall=1)
    state = DeploymentState(probe_up=False, ejected_until=99.0, ejections=4)
    record_probe(state, True, probe, 10.0)
    assert state.ejected_until == 10.0 and state.ejections == 0
    state = DeploymentState(probe_up=False, ejected_until=99.0, retry_after_until=20.0)
    record_probe(state, True, probe, 10.0)
    assert state.ejected_until == 20.0 and state.slow_start_from == 20.0


def test_gpu_deployments_are_probed_by_default_cloud_ones_when_given_a_path() -> None:
    gpu = config().models[0].deployments[0]
    assert gpu.probe == ProbeConfig()
    cloud = gpu.model_copy(update={"kind": "cloud"})
    assert cloud.probe is None
    assert cloud.model_copy(update={"health": ProbeConfig(interval_s=5)}).probe is None
    with_path = ProbeConfig.model_validate({"path": "/v1/models"})
    assert cloud.model_copy(update={"health": with_path}).probe == with_path
    off = ProbeConfig(enabled=False)
    assert gpu.model_copy(update={"health": off}).probe is None


def test_the_probe_url_is_on_the_base_urls_origin() -> None:
    cfg = config(health={"path": "/v1/models"})
    router = Router(cfg, lambda: 0.0, random.Random(0))
    d = router.deployments["d1"]
    assert d.config.probe is not None
    assert probe_url(d, d.config.probe) == "http://10.0.0.1:8000/v1/models"


def chosen(router: Router, n: int) -> set[str]:
    route = router.models["chat"]
    picked: set[str] = set()
    for _ in range(n):
        selection = router.select(route, REQUEST, set())
        assert selection is not None and selection.chosen is not None
        picked.add(selection.chosen.id)
    return picked


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_a_probed_down_deployment_leaves_rotation_and_ramps_back() -> None:
    loop = asyncio.get_running_loop()
    cfg = config(health={"interval_s": 0.05, "timeout_s": 0.05, "rise": 2, "fall": 3})
    router = Router(cfg, loop.time, random.Random(0))
    down = {"10.0.0.1"}
    probes: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        probes.append(request.url.host)
        return httpx.Response(503 if request.url.host in down else 200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    monitor = HealthMonitor(
        router,
        cfg.health,
        client,
        None,
        random.Random(0),
        loop.time,
    )
    monitor.start()
    try:
        d1 = router.deployments["d1"].state
        await until(lambda: d1.probe_up is False)
        assert chosen(router, 30) == {"d0", "d2"}
        down.clear()
        await until(lambda: d1.probe_up is True)
        assert d1.slow_start_from > 0  # ramping back in
        await asyncio.sleep(1.0)
        assert chosen(router, 30) == {"d0", "d1", "d2"}
        assert set(probes) == {"10.0.0.0", "10.0.0.1", "10.0.0.2"}
        assert len(probes) < 3 * 2.0 / 0.05 * 1.3  # about one probe per interval, no storm
    finally:
        await monitor.stop()
        await client.aclose()


async def test_ejections_are_shared_within_one_sync_interval() -> None:
    loop = asyncio.get_running_loop()
    cfg = config(health={"enabled": False})
    store = MemoryEjectionStore(loop.time)
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    routers = [Router(cfg, loop.time, random.Random(i)) for i in range(2)]
    monitors = [
        HealthMonitor(r, cfg.health, client, store, random.Random(0), loop.time) for r in routers
    ]
    for m in monitors:
        m.start()
    try:
        first, second = routers
        dead = first.deployments["d2"]
        for _ in range(3):  # three failures: the first instance ejects it
            attempt = Attempt(dead, REQUEST, 1, loop.time())
            first.health.on_failure(attempt, UpstreamConnectionError("refused"))
        assert not first.health.is_available(dead.state, loop.time())
        noticed = loop.time()
        other = second.deployments["d2"].state
        await until(lambda: not second.health.is_available(other, loop.time()))
        assert loop.time() - noticed < 0.05 * 1.5  # within one sync interval (+ jitter)
        assert chosen(second, 30) == {"d0", "d1"}
        assert other.ejected_until <= dead.state.ejected_until + 0.01
    finally:
        for m in monitors:
            await m.stop()
        await client.aclose()


async def test_a_deployment_probed_back_up_is_not_ejected_again_by_a_stale_shared_ejection() -> (
    None
):
    """Instance 1 ejects d1 for a minute and shares it; d1 comes back and instance 2's probe
    sees it: instance 2 lifts its copy and clears the shared one, so its next syncs do not
    apply it again (nor does any instance that syncs later)."""
    loop = asyncio.get_running_loop()
    cfg = config(health={"interval_s": 0.05, "timeout_s": 0.05, "rise": 2, "fall": 3})
    cfg = cfg.model_copy(
        update={"health": cfg.health.model_copy(update={"base_ejection_seconds": 60.0})}
    )
    store = MemoryEjectionStore(loop.time)
    d1_down = True

    def second_sees(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if d1_down and request.url.host == "10.0.0.1" else 200)

    clients = [
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))),
        httpx.AsyncClient(transport=httpx.MockTransport(second_sees)),
    ]
    routers = [Router(cfg, loop.time, random.Random(i)) for i in range(2)]
    monitors = [
        HealthMonitor(r, cfg.health, c, store, random.Random(0), loop.time)
        for r, c in zip(routers, clients, strict=True)
    ]
    for m in monitors:
        m.start()
    try:
        first, second = routers
        for _ in range(3):
            attempt = Attempt(first.deployments["d1"], REQUEST, 1, loop.time())
            first.health.on_failure(attempt, UpstreamConnectionError("refused"))
        other = second.deployments["d1"].state
        await until(lambda: other.probe_up is False and other.ejected_until > loop.time() + 30)
        d1_down = False
        await until(lambda: other.probe_up is True)
        await asyncio.sleep(0.05 * 4)  # several sync intervals
        assert second.health.is_available(other, loop.time())
        assert await store.ejections(["d1"], owner="a third instance") == {}
    finally:
        for m in monitors:
            await m.stop()
        for c in clients:
            await c.aclose()
