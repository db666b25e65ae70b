"""Shared fixtures: simulated GPU backends and gateways on real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from aigw.app import create_app
from aigw.configfile import parse_config
from aigw.serving import gateway_protocol
from aigw.sim.server import BackendSettings, Faults
from aigw.sim.server import create_app as create_backend
from tests.servers import ThreadedServer, serve_in_thread

UPSTREAM_MODEL = "sim-llama"
FAST = 0.01  # simulated time scale: a request takes milliseconds


@pytest.fixture
def servers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def start_backend(servers: ExitStack) -> Callable[..., ThreadedServer]:
    """Start a simulated GPU backend; keyword arguments go to BackendSettings (faults=...)."""

    def start(**settings: Any) -> ThreadedServer:
        settings.setdefault("model", UPSTREAM_MODEL)
        settings.setdefault("time_scale", FAST)
        if isinstance(settings.get("faults"), dict):
            settings["faults"] = Faults(**settings["faults"])
        return servers.enter_context(serve_in_thread(create_backend(BackendSettings(**settings))))

    return start


def deployment(backend_url: str, id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "provider": "openai",
        "base_url": f"{backend_url}/v1",
        "model": UPSTREAM_MODEL,
        **extra,
    }


@pytest.fixture
def start_gateway(servers: ExitStack) -> Callable[..., ThreadedServer]:
    """Start a gateway from a config mapping (as YAML would give it)."""

    def start(config: dict[str, Any]) -> ThreadedServer:
        parsed = parse_config(config, source="<test>")
        app = create_app(parsed, seed=0)
        # The protocol `aigw serve` runs, with the config's connection limits.
        return servers.enter_context(serve_in_thread(app, http=gateway_protocol(parsed.server)))

    return start
