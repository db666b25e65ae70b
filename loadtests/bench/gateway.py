"""The gateway under test, as a child process (``aigw serve``), configured for one policy.

Every duration the gateway knows is wall-clock; the benchmark states its scenario in
simulated seconds, so :func:`gateway_config` multiplies each one by the simulator's
``time_scale`` (scrape interval, timeouts, ejection times): the gateway then sees the same
dynamics, relative to the simulated GPUs, as it would at ``time_scale`` 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from aigw.sim.profiles import get_profile

from .fleet import UPSTREAM_MODEL, Backend
from .procs import ChildProcesses, cpu_seconds

__all__ = [
    "MODEL",
    "GatewayHandle",
    "GatewayStartError",
    "GatewayTiming",
    "gateway_config",
    "start_gateway",
]

MODEL = "bench-llama"
ADMIN_KEY = "bench-admin"  # a local benchmark gateway on 127.0.0.1 only
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}


class GatewayStartError(RuntimeError):
    """The gateway exited or did not become ready (its log names the reason)."""


@dataclass(frozen=True, slots=True)
class GatewayTiming:
    """Gateway durations in *simulated* seconds (converted to wall seconds in the config)."""

    scrape_interval: float = 0.5
    latency_tau: float = 10.0  # the gateway's default peak-EWMA time constant
    first_byte_timeout: float = 120.0
    idle_timeout: float = 60.0
    total_timeout: float = 600.0
    base_ejection: float = 5.0
    max_ejection: float = 60.0


def gateway_config(
    policy: str | dict[str, Any],
    backends: Sequence[Backend],
    port: int,
    time_scale: float,
    timing: GatewayTiming,
) -> dict[str, Any]:
    """The ``aigw serve`` config: one model, one deployment per backend, scaled timings."""

    def wall(sim_seconds: float) -> float:
        return round(sim_seconds * time_scale, 6)

    deployments = [
        {
            "id": b.id,
            "provider": "openai",
            "base_url": f"{b.url}/v1",
            "model": UPSTREAM_MODEL,
            "metrics_url": f"{b.url}/metrics",
            "decode_step": get_profile(b.profile).decode_step(time_scale=time_scale),
            "timeouts": {
                "connect": max(1.0, wall(5.0)),
                "first_byte": wall(timing.first_byte_timeout),
                "idle": wall(timing.idle_timeout),
                "total": wall(timing.total_timeout),
            },
        }
        for b in backends
    ]
    return {
        "server": {"host": "127.0.0.1", "port": port, "drain_seconds": 1},
        "models": [{"name": MODEL, "policy": policy, "deployments": deployments}],
        "routing": {
            "scrape_interval": wall(timing.scrape_interval),
            "latency_tau_s": wall(timing.latency_tau),
        },
        "auth": {"admin_key": ADMIN_KEY},  # the benchmark reads /admin/deployments
        "health": {
            "consecutive_failures": 3,
            "base_ejection_seconds": wall(timing.base_ejection),
            "max_ejection_seconds": wall(timing.max_ejection),
        },
    }


@dataclass(frozen=True, slots=True)
class GatewayHandle:
    policy: str
    url: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def wait_scraped(self, timeout: float) -> bool:
        """Wait until the gateway holds an engine snapshot of every deployment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = httpx.get(
                f"{self.url}/admin/deployments", headers=ADMIN_HEADERS, timeout=2.0
            ).json()["data"]
            if all(d["engine"] is not None for d in data):
                return True
            time.sleep(0.02)
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gateway(
    children: ChildProcesses,
    workdir: Path,
    policy: str,
    policy_value: str | dict[str, Any],
    backends: Sequence[Backend],
    time_scale: float,
    timing: GatewayTiming,
    timeout: float = 30.0,
) -> GatewayHandle:
    """Start ``aigw serve`` for ``policy`` (its config value: ``policy_value``) and wait
    until ``/readyz`` answers 200."""
    port = _free_port()
    config = gateway_config(policy_value, backends, port, time_scale, timing)
    path = workdir / f"gateway-{policy}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "aigw", "--log-level", "warning", "serve", "--config", str(path)]
    log = workdir / f"gateway-{policy}.log"
    child = children.start(argv, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            children.stop(child)
            raise GatewayStartError(f"the gateway exited with status {child.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return GatewayHandle(policy, url, port, child)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            children.stop(child)
            raise GatewayStartError(f"the gateway was not ready within {timeout} s; see {log}")
        time.sleep(0.05)
