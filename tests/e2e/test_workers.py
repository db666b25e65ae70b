"""``aigw serve --workers N`` as a process: N workers on one port, state in a real redis-server.

The limits are exact across workers (every connection is new, so the kernel hands the burst
to all of them), ``/metrics`` sums every worker whichever answers, a worker that dies is
started again, SIGHUP reloads every worker, SIGTERM drains them all and the server exits 0,
and what cannot work across workers is refused with a clear error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from aigw.sim.server import BackendSettings
from aigw.sim.server import create_app as create_backend
from tests.conftest import UPSTREAM_MODEL
from tests.e2e.clients import MODEL, chat, config, gather_bounded
from tests.e2e.procs import GatewayProcess, Processes, RedisServer, wait_until
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WORKERS = 3
RPM = 40
KEY = "sk-e2e-workers-0123456789"
SDK_KEY = "sk-e2e-workers-sdk-0123456789"
ADMIN_KEY = "sk-e2e-workers-admin-0123456789"
_REQUESTS = re.compile(r'^aigw_requests_total\{[^}]*status="(\d+)"[^}]*\} (\S+)$', re.M)


def workers_of(supervisor: int) -> list[int]:
    path = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except FileNotFoundError:
        return []


def requests_by_status(metrics_text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for status, value in _REQUESTS.findall(metrics_text):
        counts[status] += int(float(value))
    return counts


def fresh_client() -> httpx.AsyncClient:
    """A client that opens a new connection per request (so each may reach another worker)."""
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Processes, str, str]]:
    with ExitStack() as stack:
        backend = stack.enter_context(
            serve_in_thread(create_backend(BackendSettings(model=UPSTREAM_MODEL, time_scale=0.01)))
        )
        processes = Processes(tmp_path_factory.mktemp("workers"))
        stack.callback(processes.close)
        redis = RedisServer(processes).start()
        yield processes, redis.url, backend.url


@pytest.fixture(scope="module")
def gateway(setup: tuple[Processes, str, str]) -> GatewayProcess:
    processes, redis_url, backend_url = setup
    keys = [{"name": "team", "key": KEY, "rpm": RPM}, {"name": "sdk", "key": SDK_KEY}]
    cfg = config(redis_url, backend_url, keys)
    cfg["auth"]["admin_key"] = ADMIN_KEY
    gw = GatewayProcess(processes, cfg, "workers", serve_args=["--workers", str(WORKERS)])
    gw.wait_ready()
    wait_until(lambda: len(workers_of(gw.proc.pid)) == WORKERS, 20, f"{WORKERS} workers", 0.05)
    return gw


def test_rpm_is_exact_across_workers_and_metrics_sum_them(gateway: GatewayProcess) -> None:
    async def burst() -> list[int]:
        async with fresh_client() as client:
            results = await gather_bounded(
                [chat(client, gateway.url, KEY) for _ in range(2 * RPM)], 12
            )
        return [r.status for r in results]

    statuses = Counter(asyncio.run(burst()))
    assert statuses == {200: RPM, 429: RPM}, statuses

    async def scrape_many() -> list[Counter[str]]:
        async with fresh_client() as client:
            replies = [await client.get(f"{gateway.url}/metrics") for _ in range(2 * WORKERS)]
        return [requests_by_status(r.text) for r in replies]

    # Whichever worker answers, its counters include every worker's requests.
    for counts in asyncio.run(scrape_many()):
        assert counts["200"] == RPM and counts["429"] == RPM, counts


def test_sdk_chat_and_stream_through_workers(gateway: GatewayProcess) -> None:
    for _ in range(WORKERS):  # a new client (connection) each time
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=SDK_KEY, max_retries=0)
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        client.close()


def test_admin_changes_are_refused_with_a_reason(gateway: GatewayProcess) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    with httpx.Client(base_url=gateway.url, headers=headers) as client:
        for path in ("/admin/reload", "/admin/deployments/sim-a/drain"):
            reply = client.post(path, content=b"{}")
            assert reply.status_code == 409, reply.text
            error = reply.json()["error"]
            assert error["code"] == "several_workers"
            assert str(gateway.proc.pid) in error["message"]
        listed = client.get("/admin/deployments").json()
        assert not any(d["draining"] for d in listed["data"])


def test_sighup_reloads_every_worker(gateway: GatewayProcess) -> None:
    before = gateway.proc.log_text().count("config reloaded")
    gateway.proc.signal(signal.SIGHUP)
    wait_until(
        lambda: gateway.proc.log_text().count("config reloaded") - before == WORKERS,
        20,
        "every worker's reload",
        0.05,
    )


def test_a_dead_worker_is_replaced(gateway: GatewayProcess) -> None:
    before = workers_of(gateway.proc.pid)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: (
            len(workers_of(gateway.proc.pid)) == WORKERS
            and victim not in workers_of(gateway.proc.pid)
        ),
        20,
        "a new worker",
        0.05,
    )
    assert "starting it again" in gateway.proc.log_text()

    async def some() -> list[int]:
        async with fresh_client() as client:
            return [
                (
                    await client.get(
                        f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {SDK_KEY}"}
                    )
                ).status_code
                for _ in range(2 * WORKERS)
            ]

    assert asyncio.run(some()) == [200] * (2 * WORKERS)


def test_sigterm_stops_every_worker_with_status_0(setup: tuple[Processes, str, str]) -> None:
    processes, redis_url, backend_url = setup
    cfg = config(redis_url, backend_url, [{"name": "team", "key": KEY}])
    cfg["server"]["shutdown_delay_s"] = 0
    gw = GatewayProcess(processes, cfg, "stopping", serve_args=["--workers", "2"])
    gw.wait_ready()
    wait_until(lambda: len(workers_of(gw.proc.pid)) == 2, 20, "2 workers", 0.05)
    children = workers_of(gw.proc.pid)
    gw.proc.signal(signal.SIGTERM)
    assert gw.proc.popen.wait(20) == 0, gw.proc.log_tail()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), pid


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return "gone"


def test_memory_state_refuses_several_workers(
    setup: tuple[Processes, str, str], tmp_path: Path
) -> None:
    processes, redis_url, backend_url = setup
    cfg = config(redis_url, backend_url, [{"name": "team", "key": KEY}])
    cfg["state"] = {"backend": "memory"}
    gw = GatewayProcess(processes, cfg, "memory", serve_args=["--workers", "2"])
    assert gw.proc.popen.wait(20) == 1
    log = gw.proc.log_text()
    assert "memory.yaml: state.backend: --workers 2 needs 'redis'" in log, log
    assert "Traceback" not in log


def test_a_port_in_use_is_a_clear_error(
    setup: tuple[Processes, str, str], gateway: GatewayProcess
) -> None:
    processes, redis_url, backend_url = setup
    path = processes.directory / "clash.yaml"
    path.write_text(json.dumps(config(redis_url, backend_url, [{"name": "team", "key": KEY}])))
    argv = [sys.executable, "-m", "aigw", "serve", "--config", str(path), "--workers", "2"]
    clash = processes.start("clash", [*argv, "--port", str(gateway.port)])  # the gateway's
    assert clash.popen.wait(20) == 1
    log = clash.log_text()
    assert f"cannot listen on 127.0.0.1:{gateway.port}" in log, log
    assert "Traceback" not in log
