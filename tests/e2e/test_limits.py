"""RPM and TPM are exact across three ``aigw serve`` processes sharing one redis-server.

A burst of three quotas' worth of requests, spread round-robin over the instances as fast as
24 connections allow, must be admitted up to the quota (within 2 %) and refused beyond it with
429 and ``Retry-After``. The burst takes a few seconds, far inside the 60-second window.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from aigw.sim.server import BackendSettings
from aigw.sim.server import create_app as create_backend
from tests.conftest import UPSTREAM_MODEL
from tests.e2e.clients import Result, chat, config, gather_bounded
from tests.e2e.procs import GatewayProcess, Processes, RedisServer, start_gateways
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RPM = 60
TPM = 3000
MAX_TOKENS = 40
IN_FLIGHT = 24
RPM_KEY = "sk-e2e-rpm-0123456789"
TPM_KEY = "sk-e2e-tpm-0123456789"
BIG_KEY = "sk-e2e-big-0123456789"
BIG_TPM = 1_000_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    """One redis-server, one fast simulated backend, three gateways; two keys (rpm, tpm)."""
    with ExitStack() as stack:
        backend = stack.enter_context(
            serve_in_thread(create_backend(BackendSettings(model=UPSTREAM_MODEL, time_scale=0.01)))
        )
        processes = Processes(tmp_path_factory.mktemp("limits"))
        stack.callback(processes.close)  # gateways and Redis die before the backend stops
        redis = RedisServer(processes).start()
        keys = [
            {"name": "rpm-team", "key": RPM_KEY, "rpm": RPM},
            {"name": "tpm-team", "key": TPM_KEY, "tpm": TPM},
            {"name": "big-team", "key": BIG_KEY, "tpm": BIG_TPM, "max_parallel": 100},
        ]
        yield start_gateways(processes, config(redis.url, backend.url, keys), 3)


async def burst(
    gateways: list[GatewayProcess], key: str, count: int, **body: Any
) -> tuple[list[Result], float]:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.monotonic()
        results = await gather_bounded(
            [chat(client, gateways[i % len(gateways)].url, key, **body) for i in range(count)],
            IN_FLIGHT,
        )
        return results, time.monotonic() - started


def check_refusals(results: list[Result]) -> None:
    statuses = Counter(r.status for r in results)
    assert set(statuses) <= {200, 429}, f"unexpected statuses {statuses}: " + str(
        [r.body for r in results if r.status not in (200, 429)][:3]
    )
    for r in results:
        if r.status == 429:
            assert r.code == "rate_limit_exceeded", r.body
            retry_after = r.headers.get("retry-after")
            assert retry_after is not None and int(retry_after) >= 1, r.headers


async def test_rpm_is_exact_across_three_instances(cluster: list[GatewayProcess]) -> None:
    results, elapsed = await burst(cluster, RPM_KEY, 3 * RPM)
    check_refusals(results)
    admitted = [r for r in results if r.status == 200]
    per_instance = Counter(r.gateway for r in admitted)
    print(
        f"\nRPM {RPM}: admitted {len(admitted)} of {len(results)} in {elapsed:.2f} s "
        f"(per instance {sorted(per_instance.values())})"
    )
    assert elapsed < 30, "the burst must fit well inside one 60-second window"
    assert RPM * 0.9 <= len(admitted) <= RPM * 1.02
    assert len(per_instance) == 3, "every instance admitted some of the quota"


async def test_tpm_is_exact_across_three_instances(cluster: list[GatewayProcess]) -> None:
    # ignore_eos: every reply has exactly MAX_TOKENS completion tokens, so each request costs
    # a known amount (prompt + MAX_TOKENS; the gateway reserves its own count of the prompt
    # plus MAX_TOKENS up front, at least what the simulator reports for this short prompt).
    per_request = 50
    count = 3 * TPM // per_request
    results, elapsed = await burst(cluster, TPM_KEY, count, max_tokens=MAX_TOKENS, ignore_eos=True)
    check_refusals(results)
    admitted = [r for r in results if r.status == 200]
    for r in admitted:
        assert r.body["usage"]["completion_tokens"] == MAX_TOKENS, r.body["usage"]
    tokens = sum(r.body["usage"]["total_tokens"] for r in admitted)
    print(
        f"\nTPM {TPM}: admitted {len(admitted)} requests = {tokens} tokens of {len(results)} "
        f"requests in {elapsed:.2f} s"
    )
    assert elapsed < 30
    assert TPM * 0.9 <= tokens <= TPM * 1.02


async def test_tpm_is_reconciled_with_the_real_usage_over_redis(
    cluster: list[GatewayProcess],
) -> None:
    """A reply's reservation (prompt + max_tokens) is replaced by its usage, also when the
    client closes its connection as soon as it has the reply (the accounting runs after the
    response, and a disconnect must not cut it short)."""
    gateway = cluster[0].url
    async with httpx.AsyncClient(timeout=30) as client:
        first = await chat(client, gateway, BIG_KEY, max_tokens=6_000)
    assert first.status == 200, first.body
    used = first.body["usage"]["total_tokens"]
    assert used < 1_000  # far below the 6,000 reserved up front
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            probe = await chat(client, gateway, BIG_KEY, max_tokens=1)
            assert probe.status == 200, probe.body
            remaining = int(probe.headers["x-ratelimit-remaining-tokens"])
            # Everything charged so far: the first reply's usage plus the probes' own
            # reservations (small); without reconciliation 6,000+ would be missing.
            if BIG_TPM - remaining < 3_000:
                break
            assert time.monotonic() < deadline, f"not reconciled: {BIG_TPM - remaining} charged"
