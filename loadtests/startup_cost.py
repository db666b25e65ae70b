"""Start-to-ready time and idle memory of ``aigw serve`` (issue 8's startup figures).

    .venv/bin/python loadtests/startup_cost.py [--config configs/local.yaml] [--runs 5]
    .venv/bin/python loadtests/startup_cost.py --python /other/venv/bin/python   # A/B

Each run starts ``aigw serve`` as a fresh process on a free port and polls ``GET /readyz``
every 5 ms from the moment the process is spawned: *start to ready* is spawn to the first
answer from the application (any status: readiness of the upstreams is not the gateway's
start-up). *Idle RSS* is the process's VmRSS one second after that, with no traffic. The
upstreams of the config need not run. Prints every run and the medians; every process is
stopped by PID.
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


def one_start(python: str, config: Path, timeout: float = 30.0) -> tuple[float, float]:
    """(seconds from spawn to the first /readyz answer, idle RSS in MB one second later)."""
    port = free_port()
    env = dict(os.environ)
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
            time.sleep(1.0)
            return ready, rss_mb(process.pid)
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
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the gateway")
    args = parser.parse_args(argv)
    config = args.config.resolve()
    readies, rsss = [], []
    for run in range(args.runs):
        ready, rss = one_start(args.python, config)
        readies.append(ready)
        rsss.append(rss)
        print(f"run {run + 1}: start to ready {ready * 1000:.0f} ms, idle RSS {rss:.1f} MB")
    print(
        f"median of {args.runs}: start to ready {statistics.median(readies) * 1000:.0f} ms, "
        f"idle RSS {statistics.median(rsss):.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
