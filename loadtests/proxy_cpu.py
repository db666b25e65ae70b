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


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_PERCENTILE = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def wrk_latencies(out: str) -> dict[str, float]:
    """p50 and p99 in ms from wrk's --latency distribution ({} without it)."""
    return {f"p{q}": float(v) * _UNIT_MS[unit] for q, v, unit in _PERCENTILE.findall(out)}


def run_wrk(
    url: str, script: Path, seconds: int, connections: int
) -> tuple[int, int, str, dict[str, float]]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
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
    return (
        requests,
        int(bad.group(1)) if bad else 0,
        errors.group(0) if errors else "",
        wrk_latencies(out),
    )


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
    cpu_us: float  # per request; nan for "direct" (the upstream's CPU is not the proxy's)
    redis_cpu_us: float
    seconds: float = 1.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def measure(
    args: argparse.Namespace,
    server: str,
    stream: bool | None = None,
    connections: int | None = None,
    workers: int = 1,
) -> Measured:
    """One measured wrk run through ``server``: "aigw", "bare" (the reference proxy) or
    "direct" (wrk straight to the upstream: the latency floor). ``stream`` and
    ``connections`` default to the command line's; ``workers``: ``aigw serve --workers``
    (every worker pinned to the gateway's core: the CPU of the whole process tree counts)."""
    stream = args.stream if stream is None else stream
    connections = args.connections if connections is None else connections
    upstream_port, gateway_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(_config(args, upstream_port))
        body = '{"model": "bench", "messages": [{"role": "user", "content": "ping"}]'
        body += ', "stream": true}' if stream else "}"
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
            if server == "direct":
                command = []
            elif server == "bare":
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
                    *(("--workers", str(workers)) if workers > 1 else ()),
                ]
            if command:
                gateway = subprocess.Popen(
                    ["taskset", "-c", "0", *command],
                    # Not the checkout: `python -m` puts the working directory first on
                    # sys.path, which would run this checkout's aigw under another install.
                    cwd=tmp,
                )
                processes.append(gateway)
            else:
                gateway = processes[0]  # direct: the upstream is the server
                gateway_port = upstream_port
            wait_http(f"http://127.0.0.1:{gateway_port}/healthz")  # any answer: it is up
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            run_wrk(url, script, 3, connections)  # warm up pools and caches
            spy = None
            if args.profile and server in ("aigw", "bare"):
                spy = subprocess.Popen(
                    [
                        str(_beside_python("py-spy")),
                        *("record", "-p", str(gateway.pid), "-d", str(args.seconds)),
                        *("-r", "200", "-f", "raw", "--nonblocking"),
                        *("-o", args.profile + (".bare" if server == "bare" else "")),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(spy)
            redis_pid = _redis_pid(args.redis) if args.redis and server == "aigw" else None
            before = tree_cpu_seconds(gateway.pid)
            redis_before = tree_cpu_seconds(redis_pid) if redis_pid else 0.0
            requests, bad, socket_errors, latency = run_wrk(url, script, args.seconds, connections)
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
        float("nan") if server == "direct" else used / max(requests, 1) * 1e6,
        redis_used / max(requests, 1) * 1e6,
        float(args.seconds),
        latency.get("p50", float("nan")),
        latency.get("p99", float("nan")),
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
        "--workers",
        type=_counts,
        default=[1],
        metavar="N[,N...]",
        help="aigw serve --workers N (needs --redis); a list (1,2) measures each, interleaved "
        "with --vs-bare",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter of the gateway (another install)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also sample the gateway with py-spy during the measured run (collapsed stacks; "
        "with --vs-bare, the bare proxy's go to FILE.bare)",
    )
    parser.add_argument(
        "--vs-bare",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="interleave ROUNDS runs of aigw with ROUNDS of the bare reference proxy "
        "(loadtests/bare_proxy.py) and print each one's median and aigw's ratio",
    )
    parser.add_argument(
        "--table",
        type=int,
        metavar="ROUNDS",
        default=0,
        help="the overhead table: direct, bare and aigw for JSON and streamed replies at 1, 16 "
        "and 64 connections, ROUNDS interleaved rounds, medians (CPU-us/req, req/s, p50/p99)",
    )
    args = parser.parse_args()
    if args.table:
        return overhead_table(args)
    mode = "stream (8 chunks)" if args.stream else "non-stream JSON"
    mode += ", features on" if args.features else ""
    mode += f", redis state at {args.redis}" if args.redis else ", memory state"
    print(f"mode: {mode}, {args.connections} connections, {args.seconds} s per run")
    if any(n > 1 for n in args.workers) and not args.redis:
        parser.error("--workers above 1 needs --redis (aigw refuses several workers otherwise)")
    if args.vs_bare:
        return vs_bare(args)
    result = measure(args, "aigw", workers=args.workers[0])
    _report(result, args)
    return 0 if result.bad == 0 else 1


def vs_bare(args: argparse.Namespace) -> int:
    """aigw (at each worker count) and the bare proxy, ``args.vs_bare`` interleaved rounds."""
    names = {n: "aigw" if args.workers == [1] else f"aigw x{n}" for n in args.workers}
    runs: dict[str, list[Measured]] = {name: [] for name in [*names.values(), "bare"]}
    for _ in range(args.vs_bare):
        for workers, name in names.items():
            result = measure(args, "aigw", workers=workers)
            runs[name].append(result)
            _report(result, args, name)
        result = measure(args, "bare")
        runs["bare"].append(result)
        _report(result, args)
    medians = {k: statistics.median(r.cpu_us for r in v) for k, v in runs.items()}
    bare = medians["bare"]
    for name in names.values():
        redis = statistics.median(r.redis_cpu_us for r in runs[name])
        print(
            f"median CPU-us per request: {name} {medians[name]:.0f}, bare {bare:.0f}"
            f" -> {name} / bare = {medians[name] / bare:.2f}"
            + (f" (+ redis-server {redis:.0f})" if args.redis else "")
        )
    if len(names) > 1:
        first = medians[names[args.workers[0]]]
        for name in list(names.values())[1:]:
            print(f"{name} / {names[args.workers[0]]} = {medians[name] / first:.3f}")
    return 0 if all(r.bad == 0 for v in runs.values() for r in v) else 1


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (got {text!r})") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1 (got {text!r})")
    return counts


def overhead_table(args: argparse.Namespace) -> int:
    """Every (reply kind, connections, server) measured ``args.table`` times, interleaved
    (this machine's speed drifts: each round measures everything once, back to back), then
    one Markdown table of the medians."""
    servers = ("direct", "bare", "aigw")
    cells = [(stream, conns) for stream in (False, True) for conns in (1, 16, 64)]
    runs: dict[tuple[bool, int, str], list[Measured]] = {}
    for round_no in range(args.table):
        for stream, conns in cells:
            for server in servers:
                result = measure(args, server, stream, conns)
                runs.setdefault((stream, conns, server), []).append(result)
                kind = "stream" if stream else "json"
                print(
                    f"round {round_no + 1} {kind} c{conns} {server}: {result.rps:.0f} req/s, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                    f"{result.cpu_us:.0f} CPU-us, non-2xx {result.bad} {result.socket_errors}",
                    flush=True,
                )
    print()
    print(table_markdown(runs))
    return 0 if all(r.bad == 0 for v in runs.values() for r in v) else 1


def table_markdown(runs: dict[tuple[bool, int, str], list[Measured]]) -> str:
    """Medians per cell; aigw's CPU over bare's and its latency over direct's."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    lines = [
        "| reply | conns | server | req/s | p50 ms | p99 ms | CPU-us/req | vs bare | "
        "added p50 / p99 ms | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for (stream, conns, server), results in runs.items():
        direct = runs.get((stream, conns, "direct"), [])
        bare = runs.get((stream, conns, "bare"), [])
        cpu = med([r.cpu_us for r in results])
        ratio = "-"
        if server == "aigw" and bare:
            ratio = f"{cpu / med([r.cpu_us for r in bare]):.2f}x"
        added = "-"
        if server != "direct" and direct:
            p50 = med([r.p50_ms for r in results]) - med([r.p50_ms for r in direct])
            p99 = med([r.p99_ms for r in results]) - med([r.p99_ms for r in direct])
            added = f"+{p50:.2f} / +{p99:.2f}"
        lines.append(
            f"| {'8-chunk stream' if stream else 'JSON'} | {conns} | {server} "
            f"| {med([r.rps for r in results]):.0f} | {med([r.p50_ms for r in results]):.2f} "
            f"| {med([r.p99_ms for r in results]):.2f} "
            f"| {'-' if server == 'direct' else f'{cpu:.0f}'} | {ratio} | {added} "
            f"| {sum(r.bad for r in results)} |"
        )
    return "\n".join(lines)


def _report(result: Measured, args: argparse.Namespace, name: str | None = None) -> None:
    rate = result.requests / args.seconds
    print(
        f"{name or result.server}: {result.requests} requests ({rate:.0f}/s), non-2xx {result.bad}"
        f" {result.socket_errors} -> {result.cpu_us:.0f} CPU-us per request"
        + (f" (+ redis-server {result.redis_cpu_us:.0f})" if args.redis else "")
    )


if __name__ == "__main__":
    sys.exit(main())
