"""API keys, rate limits and the admission queue, through the real OpenAI SDK on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from aigw.sim.server import BackendSettings
from aigw.sim.server import create_app as create_backend
from tests.conftest import UPSTREAM_MODEL, deployment
from tests.servers import ThreadedServer, serve_in_thread

MODEL = "llama-3-8b"
OTHER = "other-model"
TEAM_A = "sk-team-a-0123456789"
TEAM_B = "sk-team-b-0123456789"
ADMIN = "admin-0123456789"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]


def keyed_config(backend: ThreadedServer, **extra: Any) -> dict[str, Any]:
    keys = extra.pop(
        "keys",
        [
            {"name": "team-a", "key": TEAM_A, "models": [MODEL], "rpm": 3},
            {"name": "team-b", "key": TEAM_B},
        ],
    )
    dep_extra = extra.pop("deployment", {})
    return {
        "models": [
            {"name": MODEL, "deployments": [deployment(backend.url, "gpu-a", **dep_extra)]},
            {"name": OTHER, "deployments": [deployment(backend.url, "gpu-b")]},
        ],
        "auth": {"keys": keys, **extra.pop("auth", {})},
        **extra,
    }


@pytest.fixture
def backend(start_backend: Callable[..., ThreadedServer]) -> ThreadedServer:
    return start_backend(seed=1)


def sdk(gateway: ThreadedServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def test_missing_and_wrong_keys_get_one_identical_401(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    gateway = start_gateway(keyed_config(backend))
    url = f"{gateway.url}/v1/chat/completions"
    body = {"model": MODEL, "messages": HELLO}
    missing = httpx.post(url, json=body)
    wrong = httpx.post(url, json=body, headers={"authorization": "Bearer sk-nope"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == wrong.json()
    assert missing.json()["error"]["code"] == "invalid_api_key"
    with sdk(gateway, "sk-nope") as client, pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.code == "invalid_api_key"
    # A key is checked before the body is read, and before the x-aigw-* headers: a malformed
    # body or header gets the same 401.
    assert httpx.post(url, content=b"{not json").json() == missing.json()
    assert httpx.post(url, json=body, headers={"x-aigw-priority": "x"}).json() == missing.json()


def test_a_key_may_use_only_its_models_and_sees_only_them(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    gateway = start_gateway(keyed_config(backend))
    with sdk(gateway, TEAM_A) as team_a, sdk(gateway, TEAM_B) as team_b:
        assert team_a.chat.completions.create(model=MODEL, messages=HELLO).choices
        with pytest.raises(openai.PermissionDeniedError) as info:
            team_a.chat.completions.create(model=OTHER, messages=HELLO)
        assert info.value.code == "model_not_allowed"
        assert TEAM_A not in str(info.value)
        assert [m.id for m in team_a.models.list()] == [MODEL]
        assert sorted(m.id for m in team_b.models.list()) == sorted([MODEL, OTHER])
        with pytest.raises(openai.PermissionDeniedError) as denied:
            team_a.models.retrieve(OTHER)
        assert denied.value.code == "model_not_allowed"
        with pytest.raises(openai.AuthenticationError):
            sdk(gateway, "sk-nope").models.list()


def test_admin_api_is_disabled_without_an_admin_key_and_closed_to_client_keys(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    disabled = start_gateway(keyed_config(backend))
    assert httpx.get(f"{disabled.url}/admin/deployments").status_code == 403
    gateway = start_gateway(keyed_config(backend, auth={"admin_key": ADMIN}))
    admin = f"{gateway.url}/admin/deployments"
    assert httpx.get(admin).status_code == 401
    assert httpx.get(admin, headers={"authorization": "Bearer wrong"}).status_code == 401
    client = httpx.get(admin, headers={"authorization": f"Bearer {TEAM_B}"})
    assert client.status_code == 403
    ok = httpx.get(admin, headers={"authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200
    assert ok.json()["data"][0]["id"] == "gpu-a"


def test_rpm_limit_answers_429_with_retry_after_and_openai_headers(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    gateway = start_gateway(keyed_config(backend))
    with sdk(gateway, TEAM_A) as client:
        remaining = []
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-reset-requests"].endswith(("s", "ms"))
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.code == "rate_limit_exceeded"
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 61  # 1 s buckets: a charge counts for 60 to 61 s
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_counts_prompt_and_max_tokens_and_refuses_what_can_never_fit(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    keys = [{"name": "team-a", "key": TEAM_A, "tpm": 500}]
    gateway = start_gateway(keyed_config(backend, keys=keys))
    with sdk(gateway, TEAM_A) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, max_tokens=20
        )
        reply = raw.parse()
        assert reply.usage is not None
        # Reconciled with the real usage: what remains is the limit minus what was used.
        after = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, max_tokens=1
        )
        remaining = int(after.headers["x-ratelimit-remaining-tokens"])
        assert remaining <= 500 - reply.usage.total_tokens
        assert remaining >= 500 - reply.usage.total_tokens - 40  # the second reservation
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10_000)
        assert info.value.code == "request_too_large"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-aigw-priority", "high"),
        ("x-aigw-priority", "99999"),
        ("x-aigw-priority", "--5"),
        ("x-aigw-queue-timeout", "-1"),
        ("x-aigw-queue-timeout", "1e9"),
        ("x-aigw-queue-timeout", "nan"),
    ],
)
def test_malformed_admission_headers_are_a_400_naming_the_header(
    backend: ThreadedServer,
    start_gateway: Callable[..., ThreadedServer],
    header: str,
    value: str,
) -> None:
    gateway = start_gateway(keyed_config(backend))
    with sdk(gateway, TEAM_B) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers={header: value})
    assert info.value.param == header


class ConcurrencyProbe:
    """ASGI middleware in front of a backend: the most requests it ever had at once."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now = 0
        self.most = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        counted = scope["type"] == "http" and scope["path"].endswith("/chat/completions")
        if counted:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.now -= 1


async def test_requests_beyond_max_concurrency_queue_instead_of_failing(
    servers: ExitStack, start_gateway: Callable[..., ThreadedServer]
) -> None:
    probe = ConcurrencyProbe(
        create_backend(BackendSettings(model=UPSTREAM_MODEL, time_scale=0.2, seed=1))
    )
    slow = servers.enter_context(serve_in_thread(probe))
    gateway = start_gateway(keyed_config(slow, deployment={"max_concurrency": 1}))
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=TEAM_B, max_retries=0
    ) as client:
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
                for _ in range(6)
            )
        )
    assert all(r.choices[0].message.content for r in replies)
    assert probe.most == 1  # they waited their turn in the gateway, one at a time upstream
