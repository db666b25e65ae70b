"""Config reload: POST /admin/reload (in process) and SIGHUP (a real ``aigw serve``)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.app import create_app
from aigw.configfile import load_config
from aigw.serving import gateway_protocol
from tests.conftest import deployment
from tests.e2e.procs import GatewayProcess, Processes, wait_until
from tests.servers import ThreadedServer, serve_in_thread

MODEL = "m"
ADMIN_KEY = "sk-admin-reload-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def gateway_config(*deployments: dict[str, Any], **server: Any) -> dict[str, Any]:
    return {
        "server": {"drain_seconds": 1, "shutdown_delay_s": 0, **server},
        "auth": {"admin_key": ADMIN_KEY},
        "models": [{"name": MODEL, "policy": "round-robin", "deployments": list(deployments)}],
    }


def write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(json.dumps(config))  # JSON is YAML


@pytest.fixture
def reloadable(tmp_path: Path, servers: ExitStack) -> Iterator[tuple[Path, Any]]:
    path = tmp_path / "aigw.yaml"

    def start(config: dict[str, Any]) -> ThreadedServer:
        write(path, config)
        parsed = load_config(path)
        app = create_app(parsed, seed=0, load=lambda: load_config(path))
        return servers.enter_context(serve_in_thread(app, http=gateway_protocol(parsed.server)))

    yield path, start


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.close()


def deployments(gateway: ThreadedServer) -> dict[str, dict[str, Any]]:
    listing = httpx.get(f"{gateway.url}/admin/deployments", headers=ADMIN).json()
    return {d["id"]: d for d in listing["data"]}


def reload(gateway: ThreadedServer) -> httpx.Response:
    return httpx.post(f"{gateway.url}/admin/reload", headers=ADMIN, timeout=10)


class Load:
    """One thread sending requests back to back (streamed and not) until stopped (bounded)."""

    def __init__(self, url: str, limit: int = 5000) -> None:
        self.url = url
        self.limit = limit
        self.statuses: list[int | str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(self.limit):
                if self.stop.is_set():
                    return
                body = {**BODY, "stream": i % 2 == 0}
                try:
                    reply = client.post(f"{self.url}/v1/chat/completions", json=body)
                    ok = reply.status_code == 200 and b'"error"' not in reply.content
                    self.statuses.append(200 if ok else f"{reply.status_code} {reply.text[:200]}")
                except httpx.TransportError as exc:
                    self.statuses.append(repr(exc))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)


def test_reload_under_load_removes_and_adds_deployments_without_a_failed_request(
    start_backend: Any, reloadable: tuple[Path, Any]
) -> None:
    path, start = reloadable
    backend = start_backend()
    a, b, c = (deployment(backend.url, name) for name in ("a", "b", "c"))
    gateway = start(gateway_config(a, b))
    with Load(gateway.url) as load:
        wait_until(lambda: len(load.statuses) >= 20, 10, "traffic before the reload")
        before = deployments(gateway)["a"]["requests"]
        write(path, gateway_config(a, c))  # b removed, c added
        reply = reload(gateway)
        assert reply.status_code == 200, reply.text
        seen = len(load.statuses)
        wait_until(lambda: len(load.statuses) >= seen + 20, 10, "traffic after the reload")
    assert reply.json() == {
        "status": "reloaded",
        "models": [MODEL],
        "deployments": {"added": ["c"], "removed": ["b"], "kept": ["a"], "replaced": []},
    }
    failed = [s for s in load.statuses if s != 200]
    assert not failed, failed[:5]
    after = deployments(gateway)
    assert set(after) == {"a", "c"}
    assert after["a"]["requests"] > before  # a kept its counters and went on
    assert after["c"]["requests"] > 0  # the new deployment takes traffic


def test_a_bad_config_is_refused_with_its_problems_and_changes_nothing(
    start_backend: Any, reloadable: tuple[Path, Any]
) -> None:
    path, start = reloadable
    backend = start_backend()
    gateway = start(gateway_config(deployment(backend.url, "a")))
    bad = gateway_config(deployment(backend.url, "b"))
    bad["models"][0]["deployments"][0]["provider"] = "nobody"
    write(path, bad)
    reply = reload(gateway)
    assert reply.status_code == 400
    body = reply.json()
    assert body["error"]["code"] == "invalid_config"
    assert len(body["problems"]) == 1, body["problems"]
    assert "deployments[0].provider: expected one of" in body["problems"][0]
    assert set(deployments(gateway)) == {"a"}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY).status_code == 200


def test_settings_that_cannot_change_live_are_refused(
    start_backend: Any, reloadable: tuple[Path, Any]
) -> None:
    path, start = reloadable
    backend = start_backend()
    gateway = start(gateway_config(deployment(backend.url, "a")))
    write(path, gateway_config(deployment(backend.url, "b"), max_body_bytes=1000))
    reply = reload(gateway)
    assert reply.status_code == 400
    assert reply.json()["problems"] == [
        "server.max_body_bytes: cannot change while the gateway runs (restart it to apply "
        "this change; nothing was reloaded)"
    ]
    assert set(deployments(gateway)) == {"a"}


def test_reload_needs_the_admin_key_and_json(
    start_backend: Any, reloadable: tuple[Path, Any]
) -> None:
    _, start = reloadable
    gateway = start(gateway_config(deployment(start_backend().url, "a")))
    assert httpx.post(f"{gateway.url}/admin/reload").status_code == 401
    plain = {"authorization": ADMIN["authorization"], "content-type": "text/plain"}
    assert httpx.post(f"{gateway.url}/admin/reload", headers=plain).status_code == 415


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_sighup_reloads_a_running_aigw_serve(start_backend: Any, processes: Processes) -> None:
    backend = start_backend()
    first = gateway_config(deployment(backend.url, "a"))
    gateway = GatewayProcess(processes, first, "gw")
    gateway.wait_ready()
    path = processes.directory / "gw.yaml"
    bad = {"models": []}
    write(path, bad)
    gateway.proc.signal(signal.SIGHUP)
    wait_until(lambda: "config reload refused" in gateway.proc.log_text(), 10, "the refusal logged")
    assert gateway.proc.alive
    write(path, gateway_config(deployment(backend.url, "a"), deployment(backend.url, "b")))
    gateway.proc.signal(signal.SIGHUP)
    wait_until(lambda: set(deployments_of(gateway.url)) == {"a", "b"}, 10, "b after SIGHUP")
    assert "config reloaded" in gateway.proc.log_text()
    gateway.proc.signal(signal.SIGTERM)
    assert gateway.proc.popen.wait(15) == 0


def deployments_of(url: str) -> list[str]:
    listing = httpx.get(f"{url}/admin/deployments", headers=ADMIN).json()
    return [d["id"] for d in listing["data"]]
