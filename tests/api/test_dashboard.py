"""GET /dashboard and GET /admin/dashboard.json over real sockets, after known traffic."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import deployment
from tests.servers import ThreadedServer

pytestmark = pytest.mark.e2e

Start = Callable[..., ThreadedServer]
MODEL = "m"
ADMIN_KEY = "admin-s3cret"
CLIENT_KEY = "sk-team-a"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"authorization": f"Bearer {CLIENT_KEY}"}
HELLO = [{"role": "user", "content": "Hello there"}]


def chat(gateway: ThreadedServer, *, stream: bool, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers=CLIENT,
        json={"model": MODEL, "messages": HELLO, "max_tokens": max_tokens, "stream": stream},
        timeout=10,
    )


def dashboard(gateway: ThreadedServer) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/admin/dashboard.json", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    data: dict[str, Any] = response.json()
    return data


@pytest.fixture
def fleet(start_backend: Start, start_gateway: Start) -> ThreadedServer:
    """Round robin over a backend that always answers 500 and one that always answers."""
    bad = start_backend(seed=1, faults={"error_rate": 1.0})
    good = start_backend(seed=2)
    return start_gateway(
        {
            "models": [
                {
                    "name": MODEL,
                    "policy": "round-robin",
                    "rpm": 1000,
                    "deployments": [deployment(bad.url, "flaky"), deployment(good.url, "steady")],
                }
            ],
            "auth": {
                "keys": [{"name": "team-a", "key": CLIENT_KEY, "rpm": 10, "tpm": 100_000}],
                "admin_key": ADMIN_KEY,
            },
            # Never eject: every request that routes to `bad` first fails there, then fails over
            # (and round-robin may send every request there first: a budget that allows that).
            "health": {"consecutive_failures": 1000},
            "retry": {"budget_ratio": 1.0},
        }
    )


def test_counts_error_rates_latencies_and_headroom_after_known_traffic(
    fleet: ThreadedServer,
) -> None:
    n = 6
    for i in range(n):
        reply = chat(fleet, stream=i % 2 == 0)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-aigw-deployment"] == "steady"
    data = dashboard(fleet)
    assert data["object"] == "dashboard" and data["state_backend"] == "memory"
    assert data["bucket_s"] == 10 and data["window_s"] == 300
    assert data["models"] == [
        {
            "name": MODEL,
            "ready": True,
            "queue_depth": 0,
            "deployments": ["flaky", "steady"],
            "fallbacks": [],
        }
    ]
    by_id = {d["id"]: d for d in data["deployments"]}
    bad, good = by_id["flaky"], by_id["steady"]

    # Every request was answered by `steady`; those routed to `flaky` first failed there.
    assert good["window"]["requests"] == good["window"]["ok"] == n
    assert good["window"]["errors"] == 0 and good["window"]["error_rate"] == 0.0
    failed = bad["window"]["requests"]
    assert failed >= n // 2 - 1  # round robin: about every other request tried `flaky` first
    assert bad["window"]["errors"] == failed and bad["window"]["ok"] == 0
    assert bad["window"]["error_rate"] == 1.0
    # The window agrees with the lifetime counters of GET /admin/deployments (a fresh gateway).
    assert good["requests"] == n and bad["requests"] == failed and bad["failures"] == failed
    # Three streams: TTFT from those; latency from all six answers.
    assert 0 < good["window"]["ttft_p50_s"] <= good["window"]["ttft_p99_s"]
    assert 0 < good["window"]["latency_p50_s"] <= good["window"]["latency_p99_s"]
    assert bad["window"]["ttft_p50_s"] is None and bad["window"]["latency_p50_s"] is None
    # The charts: 30 points, oldest first, adding up to the window.
    series = good["series"]
    assert all(len(column) == 30 for column in series.values())
    assert sum(series["requests"]) == n and sum(series["ok"]) == n
    assert series["start_s"] == sorted(series["start_s"]) and -10 < series["start_s"][-1] <= 0
    assert sum(bad["series"]["errors"]) == failed
    assert good["last_scores"] == {}  # round robin scores nothing (the demo's policy does)
    assert good["max_concurrency"] is None and good["healthy"] and not good["draining"]

    quotas = {(q["kind"], q["name"], q["unit"]): q for q in data["rate_limits"]["quotas"]}
    assert data["rate_limits"]["error"] is None
    rpm = quotas[("key", "team-a", "requests")]
    assert (rpm["limit"], rpm["used"], rpm["remaining"]) == (10, n, 10 - n)
    assert rpm["headroom"] == pytest.approx((10 - n) / 10) and 0 < rpm["reset_s"] <= 61
    tpm = quotas[("key", "team-a", "tokens")]
    assert 0 < tpm["used"] < tpm["limit"] == 100_000
    model_rpm = quotas[("model", MODEL, "requests")]
    assert (model_rpm["limit"], model_rpm["used"]) == (1000, n)
    # Reading is free: the quota is where it was.
    again = {
        (q["kind"], q["name"], q["unit"]): q for q in dashboard(fleet)["rate_limits"]["quotas"]
    }
    assert again[("key", "team-a", "requests")]["used"] == n


def test_draining_shows_in_the_json(fleet: ThreadedServer) -> None:
    drained = httpx.post(
        f"{fleet.url}/admin/deployments/flaky/drain", headers=ADMIN, json={}
    ).raise_for_status()
    assert drained.json()["draining"] is True
    by_id = {d["id"]: d for d in dashboard(fleet)["deployments"]}
    assert by_id["flaky"]["draining"] is True and by_id["steady"]["draining"] is False


def test_the_json_needs_the_admin_key(fleet: ThreadedServer) -> None:
    url = f"{fleet.url}/admin/dashboard.json"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(url, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    client = httpx.get(url, headers=CLIENT)
    assert client.status_code == 403 and client.json()["error"]["code"] == "admin_only"


def test_the_page_is_open_holds_no_data_and_pins_its_inline_code(fleet: ThreadedServer) -> None:
    page = httpx.get(f"{fleet.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "/admin/dashboard.json" in html and "steady" not in html  # no data in the page
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy
    # Nothing from elsewhere (the SVG namespace is a name, not a fetch).
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"]


def test_both_answer_403_when_the_admin_api_is_disabled(
    start_backend: Start, start_gateway: Start
) -> None:
    backend = start_backend(seed=1)
    gateway = start_gateway(
        {"models": [{"name": MODEL, "deployments": [deployment(backend.url, "a")]}]}
    )
    for path in ("/dashboard", "/admin/dashboard.json"):
        response = httpx.get(f"{gateway.url}{path}", headers=ADMIN)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "admin_disabled"


def test_quota_use_with_no_quotas_is_an_empty_list(
    start_backend: Start, start_gateway: Start
) -> None:
    backend = start_backend(seed=1)
    gateway = start_gateway(
        {
            "models": [{"name": MODEL, "deployments": [deployment(backend.url, "a")]}],
            "auth": {"admin_key": ADMIN_KEY},
        }
    )
    data = dashboard(gateway)
    assert data["rate_limits"] == {"quotas": [], "error": None}
    assert [d["id"] for d in data["deployments"]] == ["a"]
