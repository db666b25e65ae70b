"""The health task follows a config reload: a new fleet's deployments are probed, a kept
one keeps its probe verdict (it lives in its state)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.test_reload import gateway_config, reload, reloadable, write
from tests.conftest import deployment
from tests.e2e.procs import wait_until
from tests.servers import free_port

__all__ = ["reloadable"]  # the fixture, imported

FAST_PROBE = {"interval_s": 0.05, "timeout_s": 0.2, "rise": 1, "fall": 1}


def probe_up(url: str) -> dict[str, str]:
    text = httpx.get(f"{url}/metrics").text
    prefix = "aigw_deployment_probe_up{deployment="
    return {
        line[len(prefix) :].split("}")[0].strip('"'): line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_probes_follow_a_reload(start_backend: Any, reloadable: Any) -> None:
    path, start = reloadable
    backend = start_backend()
    live = deployment(backend.url, "live", kind="gpu", health=FAST_PROBE)
    gateway = start(gateway_config(live))
    wait_until(lambda: probe_up(gateway.url).get("live") == "1.0", 5.0, "live probed up")
    dead = deployment(f"http://127.0.0.1:{free_port()}", "dead", kind="gpu", health=FAST_PROBE)
    cloud = deployment(backend.url, "cloud", kind="cloud")
    write(path, gateway_config(live, dead, cloud))
    assert reload(gateway).status_code == 200
    wait_until(lambda: probe_up(gateway.url).get("dead") == "0.0", 5.0, "dead probed down")
    seen = probe_up(gateway.url)
    assert seen["live"] == "1.0" and "cloud" not in seen  # cloud: passive only
    write(path, gateway_config(live, cloud))
    assert reload(gateway).status_code == 200
    assert "dead" not in probe_up(gateway.url)  # the old task stopped with its fleet
