from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aigw.configfile import load_config, parse_config
from aigw.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"


def minimal(**deployment: Any) -> dict[str, Any]:
    dep = {"id": "a", "base_url": "http://127.0.0.1:9001/v1", "model": "m", **deployment}
    return {"models": [{"name": "chat", "deployments": [dep]}]}


def problems(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="gw.yaml")
    return info.value.problems


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VLLM_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "AIGW_TEAM_A_KEY",
        "AIGW_TEAM_B_KEY",
    ):
        monkeypatch.setenv(name, "secret")
    assert load_config(path).models


def test_defaults() -> None:
    config = parse_config(minimal())
    dep = config.models[0].deployments[0]
    assert config.state.backend == "memory"
    assert dep.provider == "openai" and dep.api_key is None
    assert dep.timeouts.first_byte == 60.0
    assert config.models[0].policy == "auto"


def test_env_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "s3cret")
    config = parse_config(minimal(api_key="${KEY}", headers={"x-team": "${TEAM:-ml}"}))
    dep = config.models[0].deployments[0]
    assert dep.api_key is not None and dep.api_key.get_secret_value() == "s3cret"
    assert dep.headers == {"x-team": "ml"}


def test_missing_env_var_names_file_field_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    [problem] = problems(minimal(api_key="${NOPE_KEY}"))
    assert problem.startswith("gw.yaml: models[0].deployments[0].api_key: ")
    assert "NOPE_KEY is not set" in problem


def test_every_problem_is_reported_with_its_path() -> None:
    raw = minimal(provider="vllm", base_url="localhost:9000", max_concurency=3)
    raw["server"] = {"port": "eighty"}
    found = problems(raw)
    assert len(found) == 4
    assert any(p.startswith("gw.yaml: server.port: ") for p in found)
    assert any(
        "models[0].deployments[0].provider: expected one of openai, anthropic (got 'vllm')" in p
        for p in found
    )
    assert any(
        "models[0].deployments[0].base_url: expected an http:// or https:// URL" in p for p in found
    )
    assert any("models[0].deployments[0].max_concurency: unknown field" in p for p in found)


def test_cross_references() -> None:
    raw = minimal()
    raw["models"][0]["fallbacks"] = ["ghost"]
    raw["models"].append(
        {"name": "chat", "deployments": [{"id": "a", "base_url": "http://x/v1", "model": "m"}]}
    )
    found = problems(raw)
    assert "gw.yaml: models[1].name: duplicate model name 'chat'" in found
    assert any("models[1].deployments[0].id: deployment ids must be unique" in p for p in found)
    assert any(
        "models[0].fallbacks[0]: expected the name of a configured model (got 'ghost')" in p
        for p in found
    )


def test_unknown_policy() -> None:
    raw = minimal()
    raw["models"][0]["policy"] = "fastest"
    [problem] = problems(raw)
    assert "models[0].policy: unknown policy 'fastest'" in problem


def test_redis_backend_needs_url() -> None:
    raw = minimal()
    raw["state"] = {"backend": "redis"}
    [problem] = problems(raw)
    assert "state: url is required when backend is redis" in problem


def test_several_workers_need_redis_state() -> None:
    raw = minimal()
    raw["server"] = {"workers": 4}
    [problem] = problems(raw)
    assert problem.startswith("gw.yaml:")
    assert "server.workers: 4 workers need state.backend: redis" in problem
    raw["state"] = {"backend": "redis", "url": "redis://127.0.0.1:6390/0"}
    assert parse_config(raw).server.workers == 4


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:3:")
    assert "invalid YAML" in info.value.problems[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read config file" in info.value.problems[0]


def test_top_level_must_be_mapping() -> None:
    assert problems(["models"]) == ["gw.yaml: expected a mapping at the top level (got list)"]


def test_keys_need_exactly_one_secret_and_name_their_field() -> None:
    raw = minimal()
    raw["auth"] = {
        "keys": [
            {"name": "a"},
            {"name": "b", "key": "x", "key_sha256": "0" * 64},
            {"name": "c", "key_sha256": "XYZ"},
            {"name": "c", "key": "y", "models": ["nope"]},
            {"name": "d", "key": "z", "priority": "high"},
        ]
    }
    found = "\n".join(problems(raw))
    assert "gw.yaml: auth.keys[0]: expected exactly one of key" in found
    assert "auth.keys[1]: expected exactly one of key" in found
    assert "auth.keys[2].key_sha256" in found
    assert "auth.keys[4].priority" in found


def test_key_cross_references() -> None:
    raw = minimal()
    raw["auth"] = {
        "keys": [{"name": "a", "key": "x", "models": ["nope"]}, {"name": "a", "key": "y"}]
    }
    found = "\n".join(problems(raw))
    assert "auth.keys[1].name: duplicate key name 'a'" in found
    assert "auth.keys[0].models[0]: expected the name of a configured model (got 'nope')" in found


def test_state_fields_are_checked() -> None:
    raw = minimal()
    raw["state"] = {"backend": "redis", "url": "http://x", "timeout_s": 0, "lease_ttl_s": 0.1}
    found = "\n".join(problems(raw))
    assert "state.url: expected a redis://" in found
    assert "state.timeout_s" in found
    assert "state.lease_ttl_s" in found


def test_config_errors_never_quote_a_secret() -> None:
    """A mistake in a field that holds a secret names the field, not the value."""
    raw = minimal(
        api_key=["sk-secret-list-1"],
        headers={"x-token": 123456789},
        base_url="ftp://user:sk-secret-url-2@host/v1",
    )
    raw["state"] = {"backend": "redis", "url": "http://:sk-secret-redis-3@host:6379"}
    raw["auth"] = {"keys": [{"name": "a", "key": 987654321}], "admin_key": ["sk-secret-admin-4"]}
    found = "\n".join(problems(raw))
    for secret in ("sk-secret-list-1", "123456789", "sk-secret-url-2", "sk-secret-redis-3"):
        assert secret not in found
    assert "987654321" not in found and "sk-secret-admin-4" not in found
    assert "models[0].deployments[0].api_key: Input should be a valid string" in found
    assert "auth.keys[0].key: Input should be a valid string (got a secret, not shown)" in found
    assert "state.url: expected a redis://" in found


def sticky(**settings: Any) -> dict[str, Any]:
    raw = minimal()
    raw["models"][0]["sticky"] = settings
    return raw


def test_sticky_sessions_settings() -> None:
    assert parse_config(minimal()).models[0].sticky is None
    on = parse_config(sticky(key="header", header="X-Conversation-Id", ttl_s=60))
    assert on.models[0].sticky is not None
    assert (on.models[0].sticky.header, on.models[0].sticky.ttl_s) == ("x-conversation-id", 60)
    by_user = parse_config(sticky(key="user")).models[0].sticky
    assert by_user is not None and by_user.key == "user"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "models[0].sticky.key: required field is missing"),
        ({"key": "cookie"}, "models[0].sticky.key: "),
        ({"key": "header", "header": "x session"}, "expected an HTTP header name"),
        ({"key": "header", "header": "Authorization"}, "authorization carries credentials"),
        ({"key": "user", "header": "x-session-id"}, "header is only read with key: header"),
        ({"key": "header", "ttl_s": 0}, "models[0].sticky.ttl_s: "),
        ({"key": "header", "ttl_z": 5}, "models[0].sticky.ttl_z: unknown field"),
    ],
)
def test_sticky_sessions_errors_name_the_field(settings: dict[str, Any], expected: str) -> None:
    [problem] = problems(sticky(**settings))
    assert expected in problem, problem


def test_retry_settings_and_their_defaults() -> None:
    retry = parse_config(minimal()).retry
    assert (retry.max_attempts, retry.budget_ratio, retry.budget_min_concurrent) == (3, 0.2, 3)
    assert retry.backoff_base_s <= retry.backoff_max_s and retry.deadline_s == 600
    raw = minimal()
    raw["retry"] = {
        "budget_ratio": -0.1,
        "budget_window_s": 0,
        "deadline_s": 0,
        "backoff_base_s": 2,
        "backoff_max_s": 1,
        "max_attempts": 0,
    }
    found = "\n".join(problems(raw))
    for field in ("budget_ratio", "budget_window_s", "deadline_s", "max_attempts"):
        assert f"retry.{field}" in found
    raw["retry"] = {"backoff_base_s": 2, "backoff_max_s": 1}
    assert "backoff_max_s (1) must be at least backoff_base_s (2)" in "\n".join(problems(raw))


def test_decode_step_is_a_gpu_deployments_line() -> None:
    line = {"base_ms": 6.0, "per_seq_ms": 0.3}
    gpu = parse_config(minimal(metrics_url="http://127.0.0.1:9001/metrics", decode_step=line))
    step = gpu.models[0].deployments[0].decode_step
    assert step is not None and (step.base_ms, step.per_seq_ms) == (6.0, 0.3)

    [problem] = problems(minimal(decode_step=line))  # no metrics_url: a cloud deployment
    assert problem.startswith("gw.yaml: models[0].deployments[0]")
    assert "decode_step is for a gpu deployment with metrics_url" in problem

    [problem] = problems(
        minimal(
            metrics_url="http://127.0.0.1:9001/metrics", decode_step={"base_ms": 0, "per_seq_ms": 1}
        )
    )
    assert "decode_step.base_ms" in problem and "greater than 0" in problem
