"""CPU cost of one proxied request through the gateway (the bare path), measured with wrk.

    ./dev bench-proxy [--seconds 10] [--connections 64] [--stream] [--vs-bare 3]

Setup, as the core issue prescribes: the gateway (`aigw serve`) pinned alone on core 0; a
canned upstream (static_upstream.py) and wrk pinned on core 1; 64 connections. Result:
(utime + stime of the gateway's process tree, read from /proc, over the measured window)
divided by the requests wrk completed in that window. ``--vs-bare N`` interleaves N runs
with the same measurement of loadtests/bare_proxy.py (Starlette + uvicorn + aiohttp, no
features): this machine's speed drifts, so the figure that counts is aigw / bare in one run.
Bounded in time; every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its live descendants (children's reaped time included)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        # fields[11..14] = utime, stime, cutime, cstime (after pid and comm)
        total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        pending.extend(int(c) for c in children)
    return total


def wait_http(url: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[int, int, str]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return requests, int(bad.group(1)) if bad else 0, errors.group(0) if errors else ""


BENCH_KEY = "sk-bench-0123456789"  # a local benchmark gateway on 127.0.0.1 only


def _beside_python(tool: str) -> Path | str:
    """A console script of this venv (not necessarily on PATH), else the name for PATH."""
    path = Path(sys.executable).with_name(tool)
    return path if path.exists() else tool


def _redis_pid(url: str) -> int | None:
    """The redis-server's pid when it runs on this machine (to measure its CPU too)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if Path(f"/proc/{pid}").exists() else None


def _config(args: argparse.Namespace, upstream_port: int) -> str:
    deployment = f"{{id: upstream, base_url: 'http://127.0.0.1:{upstream_port}/v1', model: bench"
    deployment += ", max_concurrency: 1000}" if args.features else "}"
    text = f"models:\n  - name: bench\n    policy: {args.policy}\n    deployments:\n      - {deployment}\n"
    if args.features:
        text += (
            "auth:\n  keys:\n    - {name: bench, key: " + BENCH_KEY + ", rpm: 100000000, "
            "tpm: 10000000000, max_parallel: 1000}\n"
        )
    if args.redis:
        text += f"state: {{backend: redis, url: '{args.redis}'}}\n"
    return text


@dataclass(frozen=True, slots=True)
class Measured:
    server: str
    requests: int
    bad: int
    socket_errors: str
    cpu_us: float  # per request
    redis_cpu_us: float


def measure(args: argparse.Namespace, server: str) -> Measured:
    """One measured wrk run through ``server`` ("aigw" or "bare", the reference proxy)."""
    upstream_port, gateway_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(_config(args, upstream_port))
        body = '{"model": "bench", "messages": [{"role": "user", "content": "ping"}]'
        body += ', "stream": true}' if args.stream else "}"
        script = Path(tmp) / "post.lua"
        script.write_text(
            f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n"
            + (f"wrk.headers['Authorization'] = 'Bearer {BENCH_KEY}'\n" if args.features else "")
        )
        try:
            processes.append(
                subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "1",
                        sys.executable,
                        str(ROOT / "loadtests/static_upstream.py"),
                        "--port",
                        str(upstream_port),
                    ]
                )
            )
            if server == "bare":
                command = [
                    sys.executable,
                    str(ROOT / "loadtests/bare_proxy.py"),
                    *("--port", str(gateway_port)),
                    *("--upstream", f"http://127.0.0.1:{upstream_port}"),
                ]
            else:
                command = [
                    args.python,
                    *("-m", "aigw", "--log-level", "warning", "serve"),
                    *("--config", str(config), "--port", str(gateway_port)),
                ]
            gateway = subprocess.Popen(
                ["taskset", "-c", "0", *command],
                # Not the checkout: `python -m` puts the working directory first on sys.path,
                # which would run this checkout's aigw under another install's --python.
                cwd=tmp,
            )
            processes.append(gateway)
            wait_http(f"http://127.0.0.1:{gateway_port}/healthz")  # any answer: it is up
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            run_wrk(url, script, 3, args.connections)  # warm up pools and caches
            spy = None
            if args.profile and server == "aigw":
                spy = subprocess.Popen(
                    [
                        str(_beside_python("py-spy")),
                        *("record", "-p", str(gateway.pid), "-d", str(args.seconds)),
                        *("-r", "200", "-f", "raw", "-o", args.profile, "--nonblocking"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(spy)
            redis_pid = _redis_pid(args.redis) if args.redis else None
            before = tree_cpu_seconds(gateway.pid)
            redis_before = tree_cpu_seconds(redis_pid) if redis_pid else 0.0
            requests, bad, socket_errors = run_wrk(url, script, args.seconds, args.connections)
            used = tree_cpu_seconds(gateway.pid) - before
            redis_used = tree_cpu_seconds(redis_pid) - redis_before if redis_pid else 0.0
            if spy is not None:
                spy.wait(30)
        finally:
            for process in processes:
                process.send_signal(signal.SIGINT)
            for process in processes:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    return Measured(
        server,
        requests,
        bad,
        socket_errors,
        used / max(requests, 1) * 1e6,
        redis_used / max(requests, 1) * 1e6,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--policy", default="auto", help="routing preset of the benchmark model")
    parser.add_argument(
        "--stream", action="store_true", help="streamed chat (8 chunks) instead of JSON"
    )
    parser.add_argument(
        "--features",
        action="store_true",
        help="an API key with rpm, tpm and max_parallel, and max_concurrency on the deployment "
        "(limits high enough never to refuse): the whole pipeline's cost",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="state.backend: redis at URL (e.g. redis://127.0.0.1:6379/9)"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter of the gateway (another install)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also sample the gateway with py-spy during the measured run (collapsed stacks)",
    )
    parser.add_argument(
        "--vs-bare",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="interleave ROUNDS runs of aigw with ROUNDS of the bare reference proxy "
        "(loadtests/bare_proxy.py) and print each one's median and aigw's ratio",
    )
    args = parser.parse_args()
    mode = "stream (8 chunks)" if args.stream else "non-stream JSON"
    mode += ", features on" if args.features else ""
    mode += f", redis state at {args.redis}" if args.redis else ", memory state"
    print(f"mode: {mode}, {args.connections} connections, {args.seconds} s per run")
    if args.vs_bare:
        runs: dict[str, list[Measured]] = {"aigw": [], "bare": []}
        for _ in range(args.vs_bare):
            for server in ("aigw", "bare"):
                result = measure(args, server)
                runs[server].append(result)
                _report(result, args)
        medians = {k: statistics.median(r.cpu_us for r in v) for k, v in runs.items()}
        print(
            f"median CPU-us per request: aigw {medians['aigw']:.0f}, bare {medians['bare']:.0f}"
            f" -> aigw / bare = {medians['aigw'] / medians['bare']:.2f}"
        )
        return 0 if all(r.bad == 0 for v in runs.values() for r in v) else 1
    result = measure(args, "aigw")
    _report(result, args)
    return 0 if result.bad == 0 else 1


def _report(result: Measured, args: argparse.Namespace) -> None:
    rate = result.requests / args.seconds
    print(
        f"{result.server}: {result.requests} requests ({rate:.0f}/s), non-2xx {result.bad}"
        f" {result.socket_errors} -> {result.cpu_us:.0f} CPU-us per request"
        + (f" (+ redis-server {result.redis_cpu_us:.0f})" if args.redis else "")
    )


if __name__ == "__main__":
    sys.exit(main())
