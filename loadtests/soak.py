"""A soak of the gateway: minutes of steady mixed load; memory, fds and tasks must stay flat.

    .venv/bin/python loadtests/soak.py [--minutes 10] [--warmup 2] [--interval 10]

Starts a canned upstream (static_upstream.py: streams of ``--chunks`` chunks
``--chunk-delay`` s apart, so that streams are in flight for a while; a 500 with OpenAI's
error JSON for ``--error-share`` of its requests) and ``aigw serve`` (memory state; one model,
one deployment to that upstream; an API key whose RPM/TPM limits never refuse this load).
Then ``--concurrency`` aiohttp clients send chat completions back to back for ``--minutes``
(warm-up included): ``--stream-share`` of them streamed, ``--abandon-share`` of the streams
closed by the client after their first chunk. The gateway's single deployment cannot fail
over, so an injected 500 reaches the client as the upstream's own 500 (counted as an upstream
error when it carries the injected message; anything else unexpected is a failure).

Every ``--interval`` s it samples the gateway: VmRSS and open fds of its process tree (from
/proc), ``aigw_asyncio_tasks`` and ``aigw_deployment_in_flight`` (from /metrics), and the
client's counts. Verdicts: RSS and fds grew by less than ``--growth-limit`` over the steady
part (median of the last 3 samples against the first 3 after the warm-up); ``--settle`` s
after the load stopped, the event loop is back to its idle task count and nothing is in
flight; no unexpected failure. Prints the samples and the verdicts, writes ``soak.json`` and
``soak.md`` (plus the config and both logs) to ``--out``; exit code 0 only when every verdict
passes. Bounded by time and by ``--max-requests``; every process it starts is stopped by PID,
on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests.bench.procs import ChildProcesses  # noqa: E402
from loadtests.soak_report import (  # noqa: E402
    ABANDONED,
    JSON_OK,
    STREAM_OK,
    UPSTREAM_ERROR,
    Sample,
    SoakResult,
    Tally,
    Verdict,
    growth_verdict,
    number,
    sample_header,
    sample_row,
    settle_verdicts,
    write_reports,
)
from loadtests.static_upstream import INJECTED  # noqa: E402

__all__ = ["SoakSettings", "main", "run_soak"]

MODEL = "soak"
KEY = "sk-soak-0123456789"  # a local gateway on 127.0.0.1 only
_HEADERS = {"authorization": f"Bearer {KEY}"}
_MESSAGES = [{"role": "user", "content": "ping"}]


@dataclass(frozen=True, slots=True)
class SoakSettings:
    minutes: float = 10.0  # the whole load, warm-up included
    warmup: float = 2.0  # minutes
    interval: float = 10.0  # seconds between samples
    concurrency: int = 16
    stream_share: float = 0.5
    abandon_share: float = 0.05  # of the streams
    error_share: float = 0.02  # of the upstream's requests
    chunks: int = 16
    chunk_delay: float = 0.01  # seconds
    max_requests: int = 2_000_000
    growth_limit: float = 0.05
    settle: float = 2.0  # seconds from the end of the load to the last task count
    seed: int = 1
    out: Path = Path("results/soak")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                pending.extend(int(c) for c in children)
    return found


def _rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _fds(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """From /metrics: tasks, in flight (all deployments), upstream attempts by outcome."""
    async with session.get(f"{url}/metrics") as response:
        response.raise_for_status()
        text = await response.text()
    tasks, in_flight = -1, 0
    attempts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "aigw_asyncio_tasks":
                tasks = int(s.value)
            elif s.name == "aigw_deployment_in_flight":
                in_flight += int(s.value)
            elif s.name == "aigw_upstream_attempts_total":
                outcome = s.labels["outcome"]
                attempts[outcome] = attempts.get(outcome, 0) + s.value
    return {"tasks": tasks, "in_flight": in_flight, "attempts": attempts}


async def _one(session: aiohttp.ClientSession, url: str, stream: bool, abandon: bool) -> str:
    """One chat completion; its outcome for :class:`Tally` (a failure: its description)."""
    body: dict[str, Any] = {"model": MODEL, "messages": _MESSAGES, "max_tokens": 16}
    if stream:
        body["stream"] = True
    async with session.post(url, json=body, headers=_HEADERS) as response:
        if response.status != 200:
            text = await response.text()
            if response.status >= 500 and INJECTED in text:
                return UPSTREAM_ERROR
            return f"status {response.status}: {text[:300]}"
        if not stream:
            reply = await response.json()
            return JSON_OK if reply.get("choices") else f"a reply without choices: {reply}"
        done = False
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            if abandon:
                response.close()  # the client leaves mid-stream: the gateway must notice
                return ABANDONED
            done = done or line.strip() == b"data: [DONE]"
        # Read to the end of the body, not only to [DONE]: leaving before the chunked
        # encoding's last chunk closes the connection, which the gateway rightly counts as
        # one more abandoned stream.
        return STREAM_OK if done else "a stream that ended without data: [DONE]"


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    settings: SoakSettings,
    rng: random.Random,
    tally: Tally,
    stop: asyncio.Event,
) -> None:
    """Requests back to back until ``stop`` or ``max_requests`` started (all clients)."""
    while not stop.is_set() and tally.started < settings.max_requests:
        tally.started += 1
        stream = rng.random() < settings.stream_share
        abandon = stream and rng.random() < settings.abandon_share
        try:
            outcome = await _one(session, url, stream, abandon)
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        tally.count(outcome)


def _config(upstream_port: int, gateway_port: int) -> dict[str, Any]:
    deployment = {
        "id": "upstream",
        "provider": "openai",
        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
        "model": MODEL,
    }
    return {
        "server": {
            "host": "127.0.0.1",
            "port": gateway_port,
            "drain_seconds": 1,
            "shutdown_delay_s": 0,
        },
        "state": {"backend": "memory"},
        "models": [{"name": MODEL, "deployments": [deployment]}],
        "auth": {"keys": [{"name": "soak", "key": KEY, "rpm": 100_000_000, "tpm": 10_000_000_000}]},
    }


async def _wait_ready(
    session: aiohttp.ClientSession, url: str, child: Any, log: Path, within: float = 30.0
) -> None:
    deadline = time.monotonic() + within
    while True:
        if child.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({child.returncode}); see {log}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} was not ready within {within:.0f} s; see {log}")
        await asyncio.sleep(0.1)


async def _idle_tasks(session: aiohttp.ClientSession, url: str, reads: int) -> list[int]:
    counts = []
    for i in range(reads):
        if i:
            await asyncio.sleep(0.5)
        counts.append((await _metrics(session, url))["tasks"])
    return counts


async def run_soak(settings: SoakSettings, command: str = "") -> SoakResult:
    """The whole soak; see the module docstring. Writes nothing (see write_reports)."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    upstream_port, gateway_port = _free_port(), _free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    config = out / "gateway.yaml"
    config.write_text(yaml.safe_dump(_config(upstream_port, gateway_port), sort_keys=False))
    error_every = round(1 / settings.error_share) if settings.error_share > 0 else 0
    logs = {name: out / f"{name}.log" for name in ("upstream", "gateway")}
    for log in logs.values():
        log.write_text("")
    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with ChildProcesses() as children:
        upstream = children.start(
            [
                *(sys.executable, str(ROOT / "loadtests/static_upstream.py")),
                *("--port", str(upstream_port), "--chunks", str(settings.chunks)),
                *("--error-every", str(error_every)),
                *("--chunk-delay", str(settings.chunk_delay)),
            ],
            logs["upstream"],
        )
        gateway = children.start(
            [
                *(sys.executable, "-m", "aigw", "--log-level", "warning"),
                *("serve", "--config", str(config)),
            ],
            logs["gateway"],
        )
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=1)  # one steady connection for the samples
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as probe:
            upstream_stats = f"http://127.0.0.1:{upstream_port}/stats"
            await _wait_ready(probe, upstream_stats, upstream, logs["upstream"])
            await _wait_ready(probe, f"{gateway_url}/readyz", gateway, logs["gateway"])
            await asyncio.sleep(1.0)  # start-up work (the token encoding's parse) is over
            idle = await _idle_tasks(probe, gateway_url, 3)
            tally = Tally()
            samples, load_seconds, stopped_by = await _load(
                settings, gateway_url, gateway.pid, probe, tally
            )
            await asyncio.sleep(settings.settle)
            after = await _idle_tasks(probe, gateway_url, 1)
            for _ in range(4):  # a periodic background task may be alive for a moment
                if min(after) <= max(idle):
                    break
                after += await _idle_tasks(probe, gateway_url, 2)
            final = await _metrics(probe, gateway_url)
            async with probe.get(upstream_stats) as response:
                served = await response.json()
    steady = [s for s in samples if s.steady]
    verdicts = [
        growth_verdict("RSS KiB", [s.rss_kib for s in steady], settings.growth_limit),
        growth_verdict("open fds", [s.fds for s in steady], settings.growth_limit),
        *settle_verdicts(idle, after, final["in_flight"]),
        Verdict("unexpected failures", 0, tally.failed, "must be 0", tally.failed == 0),
    ]
    settings_dict = {**asdict(settings), "out": str(settings.out), "error_every": error_every}
    return SoakResult(
        settings_dict,
        command,
        started_at,
        samples,
        idle,
        after,
        tally,
        final["attempts"],
        served,
        verdicts,
        load_seconds,
        stopped_by,
    )


async def _load(
    settings: SoakSettings, url: str, pid: int, probe: aiohttp.ClientSession, tally: Tally
) -> tuple[list[Sample], float, str]:
    """The load, sampled every ``interval`` s from its start to its end (both included)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(settings.seed)
    stop = asyncio.Event()
    duration = settings.minutes * 60
    samples: list[Sample] = []
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=settings.concurrency)
    print(sample_header(), flush=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        chat = f"{url}/v1/chat/completions"
        start = loop.time()
        clients = [
            asyncio.create_task(_client(session, chat, settings, rng, tally, stop))
            for _ in range(settings.concurrency)
        ]
        try:
            previous = (0.0, 0)
            for i in range(int(duration // settings.interval) + 1):
                await asyncio.sleep(max(0.0, start + i * settings.interval - loop.time()))
                if all(c.done() for c in clients):
                    break  # max_requests reached (or every client crashed: see below)
                t = loop.time() - start
                scraped = await _metrics(probe, url)
                pids = _tree(pid)
                finished = tally.finished
                rps = (finished - previous[1]) / (t - previous[0]) if t > previous[0] else 0.0
                previous = (t, finished)
                sample = Sample(
                    round(t, 2),
                    t >= settings.warmup * 60,
                    _rss_kib(pids),
                    _fds(pids),
                    scraped["tasks"],
                    scraped["in_flight"],
                    finished,
                    tally.failed,
                    tally.abandoned,
                    tally.upstream_errors,
                    round(rps, 1),
                )
                samples.append(sample)
                print(sample_row(sample), flush=True)
            await asyncio.sleep(max(0.0, start + duration - loop.time()))
        finally:
            stop.set()
            _, pending = await asyncio.wait(clients, timeout=30)
            for client in pending:
                client.cancel()
            results = await asyncio.gather(*clients, return_exceptions=True)
        load_seconds = loop.time() - start
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result  # a bug of the harness, not of the gateway
    stopped_by = "max_requests" if tally.started >= settings.max_requests else "time"
    return samples, load_seconds, stopped_by


def parser() -> argparse.ArgumentParser:
    d = SoakSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=d.minutes, help="the load, warm-up included")
    p.add_argument("--warmup", type=float, default=d.warmup, help="minutes not judged")
    p.add_argument("--interval", type=float, default=d.interval, help="seconds between samples")
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--stream-share", type=float, default=d.stream_share)
    p.add_argument("--abandon-share", type=float, default=d.abandon_share, help="of streams")
    p.add_argument("--error-share", type=float, default=d.error_share, help="upstream 500s")
    p.add_argument("--chunks", type=int, default=d.chunks, help="chunks per stream")
    p.add_argument("--chunk-delay", type=float, default=d.chunk_delay, help="seconds apart")
    p.add_argument("--max-requests", type=int, default=d.max_requests)
    p.add_argument("--growth-limit", type=float, default=d.growth_limit, help="0.05: 5%%")
    p.add_argument("--settle", type=float, default=d.settle, help="seconds after the load")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out, help="soak.json, soak.md, logs")
    return p


def settings_from(args: argparse.Namespace) -> SoakSettings:
    if min(args.interval, args.minutes, args.concurrency, args.max_requests) <= 0:
        raise SystemExit("--interval, --minutes, --concurrency and --max-requests must be positive")
    for share in (args.stream_share, args.abandon_share, args.error_share):
        if not 0 <= share <= 1:
            raise SystemExit("shares are between 0 and 1")
    return SoakSettings(
        minutes=args.minutes,
        warmup=args.warmup,
        interval=args.interval,
        concurrency=args.concurrency,
        stream_share=args.stream_share,
        abandon_share=args.abandon_share,
        error_share=args.error_share,
        chunks=args.chunks,
        chunk_delay=args.chunk_delay,
        max_requests=args.max_requests,
        growth_limit=args.growth_limit,
        settle=args.settle,
        seed=args.seed,
        out=args.out,
    )


async def _stoppable(soak: Coroutine[Any, Any, SoakResult]) -> SoakResult:
    """``soak``, cancelled by SIGTERM as by Ctrl-C: cancellation unwinds through
    ChildProcesses, which stops every child by PID."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await soak
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(parser().parse_args(argv))
    command = shlex.join(["loadtests/soak.py", *(sys.argv[1:] if argv is None else argv)])
    print(
        f"soak: {settings.minutes:g} min of load ({settings.warmup:g} warm-up), "
        f"{settings.concurrency} clients, a sample every {settings.interval:g} s",
        flush=True,
    )
    try:
        result = asyncio.run(_stoppable(run_soak(settings, command)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    json_path, md_path = write_reports(result, settings.out)
    print()
    for v in result.verdicts:
        print(
            f"{'pass' if v.passed else 'FAIL'}  {v.figure}: {number(v.first)} -> "
            f"{number(v.last)}, {v.detail}"
        )
    t = result.tally
    print(
        f"{t.finished} requests: {t.json_ok} JSON, {t.stream_ok} streams, {t.abandoned} "
        f"abandoned, {t.upstream_errors} upstream errors, {t.failed} failed"
    )
    print(f"soak: {'PASS' if result.passed else 'FAIL'}; reports: {md_path}, {json_path}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
