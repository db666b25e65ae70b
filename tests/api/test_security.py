"""Security regressions: secrets in URLs and admin output, no redirects, admin POSTs need JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aigw.api.admin import redact_url
from aigw.configfile import parse_config
from aigw.errors import ConfigError
from tests.conftest import deployment
from tests.servers import ThreadedServer

MODEL = "llama-3-8b"
ADMIN = {"authorization": "Bearer admin-0123456789"}
PASSWORD = "hunter2-pw"


@pytest.fixture
def backend(start_backend: Callable[..., ThreadedServer]) -> ThreadedServer:
    return start_backend(seed=1)


def config(backend: ThreadedServer, **dep: Any) -> dict[str, Any]:
    return {
        "models": [{"name": MODEL, "deployments": [deployment(backend.url, "a", **dep)]}],
        "auth": {"admin_key": "admin-0123456789"},
    }


@pytest.mark.parametrize("field", ["base_url", "metrics_url"])
@pytest.mark.parametrize(
    "url", [f"http://user:{PASSWORD}@127.0.0.1:9/v1", f"https://{PASSWORD}@127.0.0.1/v1"]
)
def test_credentials_in_a_deployment_url_are_refused_without_echoing_them(
    field: str, url: str
) -> None:
    dep = {"id": "a", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "k"}
    dep[field] = url
    with pytest.raises(ConfigError) as info:
        parse_config({"models": [{"name": "chat", "deployments": [dep]}]}, source="gw.yaml")
    assert info.value.problems == [
        f"gw.yaml: models[0].deployments[0].{field}: credentials in the URL are not allowed; "
        "put the key in api_key (or headers)"
    ]
    assert PASSWORD not in str(info.value)


def test_a_url_with_a_wrong_scheme_and_credentials_is_not_echoed() -> None:
    dep = {"id": "a", "base_url": f"ftp://u:{PASSWORD}@127.0.0.1/v1", "model": "m"}
    with pytest.raises(ConfigError) as info:
        parse_config({"models": [{"name": "chat", "deployments": [dep]}]}, source="gw.yaml")
    assert "credentials in the URL" in str(info.value) and PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://u:{PASSWORD}@h.example:8000/v1", "http://h.example:8000/v1"),
        (f"https://h.example/v1?key={PASSWORD}#frag", "https://h.example/v1?redacted"),
        (f"http://[::1]:80/v1?{PASSWORD}", "http://[::1]:80/v1?redacted"),
        ("http://h.example:notaport/v1", "redacted"),
        (None, None),
    ],
)
def test_redact_url_drops_userinfo_and_query(url: str | None, shown: str | None) -> None:
    assert redact_url(url) == shown


def test_admin_output_never_shows_api_key_header_values_or_url_secrets(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    gateway = start_gateway(
        config(
            backend,
            base_url=f"{backend.url}/v1?api-key={PASSWORD}-q",
            api_key=f"{PASSWORD}-key",
            headers={"x-upstream-token": f"{PASSWORD}-header"},
        )
    )
    reply = httpx.get(f"{gateway.url}/admin/deployments", headers=ADMIN)
    assert reply.status_code == 200
    assert PASSWORD not in reply.text
    [shown] = reply.json()["data"]
    assert shown["base_url"] == f"{backend.url}/v1?redacted"
    assert shown["header_names"] == ["x-upstream-token"] and shown["has_api_key"] is True


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/embeddings/"),
        ("GET", "/v1/models/"),
        ("GET", "/healthz/"),
        ("GET", "/admin/deployments/"),
        ("POST", "/admin/deployments/a/drain/"),
    ],
)
def test_a_trailing_slash_is_never_redirected_to_the_clients_host(
    backend: ThreadedServer,
    start_gateway: Callable[..., ThreadedServer],
    method: str,
    path: str,
) -> None:
    gateway = start_gateway(config(backend))
    reply = httpx.request(
        method,
        f"{gateway.url}{path}",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"host": "evil.example", **ADMIN},
    )
    assert not reply.is_redirect and "location" not in reply.headers
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {}, {"content-type": "application/x-www-form-urlencoded"}],
    ids=["text-plain", "none", "form"],
)
def test_admin_posts_without_json_content_type_get_415_and_change_nothing(
    backend: ThreadedServer,
    start_gateway: Callable[..., ThreadedServer],
    headers: dict[str, str],
) -> None:
    gateway = start_gateway(config(backend))
    admin = f"{gateway.url}/admin/deployments"
    reply = httpx.post(f"{admin}/a/drain", content=b"{}", headers={**ADMIN, **headers})
    assert reply.status_code == 415
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_media_type"
    assert httpx.get(admin, headers=ADMIN).json()["data"][0]["draining"] is False
    ok = httpx.post(
        f"{admin}/a/drain",
        content=b"{}",
        headers={**ADMIN, "content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200 and ok.json()["draining"] is True


def test_admin_auth_is_checked_before_the_content_type(
    backend: ThreadedServer, start_gateway: Callable[..., ThreadedServer]
) -> None:
    gateway = start_gateway(config(backend))
    reply = httpx.post(
        f"{gateway.url}/admin/deployments/a/drain", headers={"content-type": "text/plain"}
    )
    assert reply.status_code == 401
