"""Start-to-ready time and idle memory of ``aigw serve`` (issue 8's startup figures).

    .venv/bin/python loadtests/startup_cost.py [--config configs/local.yaml] [--runs 5]
    .venv/bin/python loadtests/startup_cost.py --python /old/bin/python --python /new/bin/python

Each run starts ``aigw serve`` as a fresh process on a free port and polls ``GET /readyz``
every 5 ms from the moment the process is spawned: *start to ready* is spawn to the first
answer from the application (any status: readiness of the upstreams is not the gateway's
start-up). *CPU to ready* is the process's user + system time at that moment (10 ms ticks;
steadier than the wall time when the machine is busy). *Idle RSS* is the process's VmRSS one
second after that, with no traffic. The upstreams of the config need not run. Several
``--python`` interleave their runs (the order alternating from run to run: an A/B on a
machine whose speed drifts). Prints every run and the medians; every process is stopped by
PID.

The gateway starts as installed: with its modules' bytecode cached. A first start that is
not counted writes the caches where they are missing (an editable checkout), also where
``PYTHONDONTWRITEBYTECODE`` is set, as it is on the development machines: compiling aigw's
~100 modules from source costs ~300 ms per start, which no installed gateway pays. For
the deployed figure, point ``--python`` at a virtual environment holding aigw and its
runtime dependencies only (``pip install .``): test tools installed beside it are imported
by the runtime's libraries when present (httpx imports ``rich``, httpcore ``trio``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass(frozen=True)
class Start:
    ready_s: float  # spawn to the first /readyz answer
    cpu_s: float  # the process's user + system time by then
    rss_mb: float  # idle, one second later


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def one_start(python: str, config: Path, timeout: float = 30.0) -> Start:
    port = free_port()
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # see the module's docstring
    with tempfile.TemporaryDirectory() as tmp:  # not the checkout: see proxy_cpu.py
        started = time.perf_counter()
        command = [python, "-m", "aigw", "--log-level", "warning", "serve"]
        process = subprocess.Popen(
            [*command, "--config", str(config), "--port", str(port)],
            cwd=tmp,
            env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            with httpx.Client(timeout=1.0) as client:
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"aigw serve exited with {process.returncode}")
                    if time.perf_counter() - started > timeout:
                        raise RuntimeError(f"no answer from {url} within {timeout} s")
                    try:
                        client.get(url)
                        break
                    except httpx.TransportError:
                        time.sleep(0.005)
            ready = time.perf_counter() - started
            cpu = cpu_seconds(process.pid)
            time.sleep(1.0)
            return Start(ready, cpu, rss_mb(process.pid))
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "local.yaml")
    parser.add_argument("--runs", type=int, default=5, help="per interpreter")
    parser.add_argument(
        "--python",
        action="append",
        help="interpreter of the gateway (default: this one); repeat to compare installs",
    )
    args = parser.parse_args(argv)
    config = args.config.resolve()
    pythons: list[str] = args.python or [sys.executable]
    starts: dict[str, list[Start]] = {python: [] for python in pythons}
    for python in pythons:
        one_start(python, config)  # not counted: writes missing bytecode caches
    for run in range(args.runs):
        for python in pythons if run % 2 == 0 else pythons[::-1]:
            start = one_start(python, config)
            starts[python].append(start)
            label = f"{python}: " if len(pythons) > 1 else ""
            print(
                f"{label}run {run + 1}: start to ready {start.ready_s * 1000:.0f} ms, "
                f"CPU to ready {start.cpu_s * 1000:.0f} ms, idle RSS {start.rss_mb:.1f} MB"
            )
    for python, runs in starts.items():
        label = f"{python}: " if len(pythons) > 1 else ""
        print(
            f"{label}median of {args.runs}: "
            f"start to ready {statistics.median(s.ready_s for s in runs) * 1000:.0f} ms, "
            f"CPU to ready {statistics.median(s.cpu_s for s in runs) * 1000:.0f} ms, "
            f"idle RSS {statistics.median(s.rss_mb for s in runs):.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
