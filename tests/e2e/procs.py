"""Real processes for the end-to-end tests: redis-server and ``aigw serve``, killed by PID.

Every process is started through :class:`Processes`, which kills (SIGKILL) and reaps each one
it started when the test (or module) ends, whether it passed or not. Output goes to a log file
per process, whose tail failing assertions can show. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port

__all__ = ["GatewayProcess", "Proc", "Processes", "RedisServer", "wait_until"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 20.0  # generous: three gateways starting at once share two CPUs


def wait_until(predicate: Any, deadline_s: float, what: str, interval_s: float = 0.02) -> float:
    """Poll ``predicate`` until it is true; return the seconds it took, or fail naming ``what``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s:g} s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """One child process, its log file, and a way to signal it by PID."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = dict(os.environ)
        env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO_ROOT.parent / "shared" / "tiktoken"))
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=env,
        )
        self.pid = self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL (works on a SIGSTOPped process too) and reap; safe to call twice."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(10)
        finally:
            if not self._log.closed:
                self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Processes:
    """Every process a test started; :meth:`close` kills each by PID (reverse order)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        proc = Proc(name, argv, self.directory / f"{name}-{len(self._procs)}.log")
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self._procs):
            try:
                proc.kill()
            except BaseException as exc:  # keep killing the others
                errors.append(exc)
        self._procs.clear()
        if errors:
            raise errors[0]


class RedisServer:
    """A throwaway redis-server (no persistence) on a free port, never 6379."""

    def __init__(self, processes: Processes, port: int | None = None) -> None:
        self.processes = processes
        self.port = port or _free_port_not_6379()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        self.proc = self.processes.start(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
        )
        proc = self.proc
        wait_until(
            lambda: _redis_ping(self.port) or _dead(proc),
            STARTUP_S,
            f"redis-server on port {self.port}",
        )
        if not proc.alive:
            raise RuntimeError(f"redis-server exited at startup:\n{proc.log_tail()}")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        """SIGSTOP: the process hangs, its sockets stay open (a hung Redis, not a dead one)."""
        assert self.proc is not None
        self.proc.signal(signal.SIGSTOP)

    def cont(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)


class GatewayProcess:
    """``python -m aigw serve --config F --port N`` on 127.0.0.1."""

    def __init__(
        self,
        processes: Processes,
        config: dict[str, Any],
        name: str,
        global_args: Sequence[str] = (),
        serve_args: Sequence[str] = (),
    ) -> None:
        """``global_args`` go before ``serve`` (``--log-format json``), ``serve_args`` after."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = processes.directory / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.proc = processes.start(
            name,
            [
                sys.executable,
                "-m",
                "aigw",
                *global_args,
                "serve",
                "--config",
                str(path),
                "--port",
                str(self.port),
                *serve_args,
            ],
        )

    def wait_ready(self, deadline_s: float = STARTUP_S) -> None:
        with httpx.Client(timeout=1.0) as client:

            def ready() -> bool:
                if not self.proc.alive:
                    raise RuntimeError(
                        f"{self.proc.name} exited with {self.proc.popen.returncode} at "
                        f"startup:\n{self.proc.log_tail()}"
                    )
                try:
                    return client.get(f"{self.url}/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            try:
                wait_until(ready, deadline_s, f"{self.proc.name} /healthz", interval_s=0.05)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.proc.log_tail()}") from None

    def kill(self) -> None:
        self.proc.kill()


def start_fake_backend(
    processes: Processes, name: str, port: int, model: str, time_scale: float
) -> Proc:
    """``aigw fake-backend`` serving ``model`` on ``port``, once its ``/health`` answers."""
    argv = [sys.executable, "-m", "aigw", "fake-backend", "--port", str(port)]
    proc = processes.start(name, [*argv, "--model", model, "--time-scale", str(time_scale)])

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, 20.0, f"{name} /health", interval_s=0.05)
    return proc


def start_gateways(
    processes: Processes, config: dict[str, Any], count: int, prefix: str = "gw"
) -> list[GatewayProcess]:
    """``count`` gateways from one config, started together, each ready on return."""
    gateways = [GatewayProcess(processes, config, f"{prefix}{i}") for i in range(count)]
    for gateway in gateways:
        gateway.wait_ready()
    return gateways


def _free_port_not_6379() -> int:
    while True:
        port = free_port()
        if port != 6379:
            return port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _dead(proc: Proc) -> bool:
    return not proc.alive
