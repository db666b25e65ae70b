"""RateLimits.usage (the dashboard's headroom) on both limiters: reads without charging."""

from __future__ import annotations

from aigw.configfile import parse_config
from aigw.limits import RateLimits
from aigw.types import Principal
from tests.state.conftest import Backend


def limits(backend: Backend) -> RateLimits:
    config = parse_config(
        {
            "models": [
                {
                    "name": "m",
                    "rpm": 100,
                    "deployments": [
                        {"id": "d", "base_url": "http://127.0.0.1:9/v1", "model": "m", "tpm": 50}
                    ],
                }
            ],
            "auth": {
                "keys": [
                    {"name": "team-a", "key": "sk-a", "rpm": 3, "tpm": 1000},
                    {"name": "team-b", "key": "sk-b"},  # no quota: not listed
                ]
            },
        },
        source="<test>",
    )
    return RateLimits(backend.limiter, config)


async def test_usage_lists_every_quota_and_charges_nothing(backend: Backend) -> None:
    rate_limits = limits(backend)
    before = {(u.kind, u.name, u.unit): u for u in await rate_limits.usage()}
    assert set(before) == {
        ("key", "team-a", "requests"),
        ("key", "team-a", "tokens"),
        ("model", "m", "requests"),
        ("deployment", "d", "tokens"),
    }
    assert all(u.remaining == u.limit for u in before.values())
    plan = rate_limits.plan(Principal("team-a", rpm=3, tpm=1000), "m")
    assert plan is not None
    for i in range(3):
        await rate_limits.reserve(f"r{i}", plan, 10)
    for _ in range(2):  # reading twice: the reads themselves use nothing
        now = {(u.kind, u.name, u.unit): u for u in await rate_limits.usage()}
        assert now[("key", "team-a", "requests")].remaining == 0  # full, and still listed
        assert 0 < now[("key", "team-a", "requests")].reset_s <= 61
        assert now[("key", "team-a", "tokens")].remaining == 1000 - 30
        assert now[("model", "m", "requests")].remaining == 97
        assert now[("deployment", "d", "tokens")].remaining == 50
