"""The simulated GPU fleet: backends served from one or more child processes.

``python -m loadtests.bench.fleet --time-scale S --ready-file F --backend h100 --backend l4``
serves one simulated vLLM backend per ``--backend`` (``profile`` or ``profile:seed``) on free
127.0.0.1 ports, all in one event loop (:func:`aigw.serving.serve_together`), and writes their
ports as JSON to ``F`` once every server has started. SIGTERM stops it.

:class:`Fleet` is the parent's handle: it spreads the backends over ``processes`` children
(one core each at most; the engines' step loops and per-token SSE writes are the fleet's
CPU), waits for them, and talks to the backends' test endpoints (``/sim/stats``,
``/sim/faults``, ``/sim/reset``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .procs import ChildProcesses, cpu_seconds

__all__ = ["Backend", "Fleet", "FleetSpec", "control_client"]

UPSTREAM_MODEL = "sim-llama-3-8b"


def control_client() -> httpx.AsyncClient:
    """A client for the backends' test endpoints. Idle connections are dropped after 1 s:
    uvicorn closes them after 5 s, and reusing one just as it does fails the request."""
    return httpx.AsyncClient(
        timeout=10.0,
        limits=httpx.Limits(keepalive_expiry=1.0),
        transport=httpx.AsyncHTTPTransport(retries=2),
    )


@dataclass(frozen=True, slots=True)
class Backend:
    """One running simulated backend."""

    id: str  # e.g. "h100-0": the gateway's deployment id
    profile: str
    url: str  # http://127.0.0.1:PORT
    pid: int  # the fleet process serving it


@dataclass(frozen=True, slots=True)
class FleetSpec:
    profiles: tuple[str, ...]  # one entry per backend, e.g. ("h100", "h100", "a100", ...)
    time_scale: float
    seed: int
    processes: int = 2


class Fleet:
    """Simulated backends in child processes, stopped with the benchmark's children."""

    def __init__(self, spec: FleetSpec, children: ChildProcesses, workdir: Path) -> None:
        self.spec = spec
        self._children = children
        self._workdir = workdir
        self.backends: list[Backend] = []
        self.pids: list[int] = []

    def start(self, timeout: float = 30.0) -> None:
        groups: list[list[int]] = [[] for _ in range(max(1, self.spec.processes))]
        for index in range(len(self.spec.profiles)):
            groups[index % len(groups)].append(index)
        pending: list[tuple[Path, list[int], int]] = []
        for g, members in enumerate(groups):
            if not members:
                continue
            ready = self._workdir / f"fleet-{g}.json"
            ready.unlink(missing_ok=True)
            argv = [sys.executable, "-m", "loadtests.bench.fleet"]
            argv += ["--time-scale", repr(self.spec.time_scale), "--ready-file", str(ready)]
            for i in members:
                argv += ["--backend", f"{self.spec.profiles[i]}:{self.spec.seed * 1000 + i}"]
            child = self._children.start(argv, self._workdir / f"fleet-{g}.log")
            self.pids.append(child.pid)
            pending.append((ready, members, child.pid))
        found: dict[int, Backend] = {}
        deadline = time.monotonic() + timeout
        for ready, members, pid in pending:
            while not ready.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fleet process {pid} did not start; see {ready}.log")
                time.sleep(0.05)
            ports = json.loads(ready.read_text())["ports"]
            for i, port in zip(members, ports, strict=True):
                profile = self.spec.profiles[i]
                same = sum(1 for j in range(i) if self.spec.profiles[j] == profile)
                found[i] = Backend(f"{profile}-{same}", profile, f"http://127.0.0.1:{port}", pid)
        self.backends = [found[i] for i in range(len(self.spec.profiles))]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    async def stats(self, client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
        replies = await asyncio.gather(*(client.get(f"{b.url}/sim/stats") for b in self.backends))
        return {b.id: r.json() for b, r in zip(self.backends, replies, strict=True)}

    async def reset(self, client: httpx.AsyncClient) -> None:
        """Zero the counters and clear every fault (slowdown back to 1)."""
        await asyncio.gather(
            *(client.post(f"{b.url}/sim/faults", json={"slowdown": 1.0}) for b in self.backends)
        )
        await asyncio.gather(*(client.post(f"{b.url}/sim/reset") for b in self.backends))

    async def set_slowdown(
        self, client: httpx.AsyncClient, backend: Backend, factor: float
    ) -> None:
        reply = await client.post(f"{backend.url}/sim/faults", json={"slowdown": factor})
        reply.raise_for_status()

    async def wait_idle(self, client: httpx.AsyncClient, limit_s: float) -> bool:
        """Wait until no backend runs or queues anything; False after ``limit_s`` seconds."""
        deadline = time.monotonic() + limit_s
        while True:
            stats = await self.stats(client)
            if all(s["running"] == 0 and s["waiting"] == 0 for s in stats.values()):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)


# -- the child process ---------------------------------------------------------------------


def _serve(backends: Sequence[str], time_scale: float, ready_file: Path) -> None:
    from aigw.serving import bind, serve_together
    from aigw.sim.server import BackendSettings, create_app

    apps = []
    for spec in backends:
        profile, _, seed = spec.partition(":")
        settings = BackendSettings(
            model=UPSTREAM_MODEL, profile=profile, time_scale=time_scale, seed=int(seed or 0)
        )
        apps.append((create_app(settings), bind("127.0.0.1", 0)))
    ports = [sock.getsockname()[1] for _, sock in apps]

    def announce() -> None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ports": ports}))
        tmp.replace(ready_file)  # atomic: the parent never reads half a file

    options: dict[str, Any] = {"timeout_graceful_shutdown": 1}
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ImportError:
        pass
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    runner(serve_together(apps, on_started=announce, **options))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulated GPU backends for the benchmark")
    parser.add_argument("--backend", action="append", required=True, help="PROFILE[:SEED]")
    parser.add_argument("--time-scale", type=float, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    _serve(args.backend, args.time_scale, args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
