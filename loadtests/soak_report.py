"""The soak's figures and verdicts (loadtests/soak.py): samples, growth checks, the reports.

Pure: no processes, no sockets. A *sample* is what the soak reads of the gateway every
``--interval`` seconds under load; the verdicts compare the steady part of the run (after the
warm-up) and the idle gateway before and after the load.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Sample",
    "SoakResult",
    "Tally",
    "Verdict",
    "growth_verdict",
    "markdown",
    "number",
    "sample_header",
    "sample_row",
    "settle_verdicts",
    "write_reports",
]

# Outcomes of one client request, as the load counts them.
JSON_OK, STREAM_OK, ABANDONED, UPSTREAM_ERROR = "json", "stream", "abandoned", "upstream_error"


@dataclass(slots=True)
class Tally:
    """Client-side counts of the load so far (one event loop: no locking)."""

    started: int = 0
    json_ok: int = 0
    stream_ok: int = 0
    abandoned: int = 0
    upstream_errors: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, to read

    def count(self, outcome: str) -> None:
        """``outcome``: one of the four kinds above, else a failure's description."""
        if outcome == JSON_OK:
            self.json_ok += 1
        elif outcome == STREAM_OK:
            self.stream_ok += 1
        elif outcome == ABANDONED:
            self.abandoned += 1
        elif outcome == UPSTREAM_ERROR:
            self.upstream_errors += 1
        else:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(outcome)

    @property
    def finished(self) -> int:
        return self.json_ok + self.stream_ok + self.abandoned + self.upstream_errors + self.failed


@dataclass(frozen=True, slots=True)
class Sample:
    """The gateway at ``t`` seconds into the load."""

    t: float
    steady: bool  # after the warm-up
    rss_kib: int  # VmRSS of the gateway's process tree
    fds: int  # open file descriptors of the tree
    tasks: int  # aigw_asyncio_tasks
    in_flight: int  # sum of aigw_deployment_in_flight
    finished: int  # client requests finished so far, any outcome
    failed: int  # ... that failed unexpectedly
    abandoned: int
    upstream_errors: int
    rps: float  # finished per second since the previous sample


@dataclass(frozen=True, slots=True)
class Verdict:
    figure: str
    first: float
    last: float
    detail: str
    passed: bool


def growth_verdict(figure: str, values: Sequence[float], limit: float) -> Verdict:
    """Median of the last 3 values over the median of the first 3 (fewer when there are
    fewer than 6): passes when it grew by less than ``limit`` (0.05: 5%)."""
    k = min(3, len(values) // 2)
    if k == 0:
        return Verdict(figure, 0.0, 0.0, "too few samples after the warm-up", False)
    first = statistics.median(values[:k])
    last = statistics.median(values[-k:])
    growth = last / first - 1 if first else float("inf")
    detail = f"{growth:+.1%} (limit < {limit:.0%}; medians of the first and last {k})"
    return Verdict(figure, first, last, detail, growth < limit)


def settle_verdicts(
    idle_tasks: Sequence[int], after_tasks: Sequence[int], after_in_flight: int
) -> list[Verdict]:
    """After the load: the event loop's tasks back to their idle count (the lowest count read
    once the load stopped against the highest read before it started: periodic background
    tasks come and go), and nothing left in flight."""
    idle, after = max(idle_tasks), min(after_tasks)
    tasks = Verdict(
        "asyncio tasks after the load",
        idle,
        after,
        f"idle before {list(idle_tasks)}, after {list(after_tasks)}",
        after <= idle,
    )
    in_flight = Verdict(
        "in flight after the load", 0, after_in_flight, "must be 0", after_in_flight == 0
    )
    return [tasks, in_flight]


@dataclass(slots=True)
class SoakResult:
    settings: dict[str, Any]
    command: str
    started_at: str
    samples: list[Sample]
    idle_tasks: list[int]
    after_tasks: list[int]
    tally: Tally
    gateway_attempts: dict[str, float]  # aigw_upstream_attempts_total by outcome, at the end
    upstream: dict[str, int]  # static_upstream's /stats at the end
    verdicts: list[Verdict]
    load_seconds: float
    stopped_by: str  # "time" or "max_requests"

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.passed for v in self.verdicts)


def number(value: float) -> str:
    """An integer as one (RSS in KiB), else two decimals."""
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def sample_header() -> str:
    return (
        "|     t s | phase  | RSS MiB | fds | tasks | in flight | finished |  req/s | "
        "failed | abandoned | upstream errors |"
    )


def sample_row(s: Sample) -> str:
    return (
        f"| {s.t:7.1f} | {'steady' if s.steady else 'warmup'} | {s.rss_kib / 1024:7.1f} "
        f"| {s.fds:3d} | {s.tasks:5d} | {s.in_flight:9d} | {s.finished:8d} | {s.rps:6.1f} "
        f"| {s.failed:6d} | {s.abandoned:9d} | {s.upstream_errors:15d} |"
    )


def markdown(result: SoakResult) -> str:
    t = result.tally
    s = result.settings
    lines = [
        f"# Soak: {'PASS' if result.passed else 'FAIL'}",
        "",
        f"Command: `{result.command}`  ",
        f"Started {result.started_at}; load {result.load_seconds:.0f} s (stopped by "
        f"{result.stopped_by}), warm-up {s['warmup'] * 60:.0f} s, a sample every "
        f"{s['interval']:g} s; {s['concurrency']} concurrent clients, "
        f"{s['stream_share']:.0%} streamed ({s['chunks']} chunks, {s['chunk_delay'] * 1000:g} ms "
        f"apart), {s['abandon_share']:.0%} of streams abandoned after the first chunk, "
        f"{s['error_share']:.0%} upstream errors (500).",
        "",
        f"Client: {t.finished} requests finished ({t.finished / max(result.load_seconds, 1e-9):.0f}"
        f" req/s): {t.json_ok} JSON, {t.stream_ok} streams, {t.abandoned} abandoned streams, "
        f"{t.upstream_errors} upstream errors relayed, {t.failed} unexpected failures.",
        "Gateway attempts (aigw_upstream_attempts_total): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(result.gateway_attempts.items())),
        "Upstream: " + ", ".join(f"{k} {v}" for k, v in result.upstream.items()),
        "",
        "## Verdicts",
        "",
        "| figure | first | last | check | verdict |",
        "|---|---:|---:|---|---|",
    ]
    for v in result.verdicts:
        lines.append(
            f"| {v.figure} | {number(v.first)} | {number(v.last)} | {v.detail} | "
            f"{'pass' if v.passed else '**FAIL**'} |"
        )
    lines += [
        "",
        "## Samples",
        "",
        sample_header(),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [sample_row(sample) for sample in result.samples]
    if t.failures:
        lines += ["", "## First failures", ""] + [f"- {f}" for f in t.failures]
    return "\n".join(lines) + "\n"


def write_reports(result: SoakResult, out: Path) -> tuple[Path, Path]:
    """``soak.json`` and ``soak.md`` in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "passed": result.passed,
        "command": result.command,
        "started_at": result.started_at,
        "settings": result.settings,
        "load_seconds": result.load_seconds,
        "stopped_by": result.stopped_by,
        "tally": {**asdict(result.tally), "finished": result.tally.finished},
        "gateway_attempts": result.gateway_attempts,
        "upstream": result.upstream,
        "idle_tasks": result.idle_tasks,
        "after_tasks": result.after_tasks,
        "verdicts": [asdict(v) for v in result.verdicts],
        "samples": [asdict(s) for s in result.samples],
    }
    json_path, md_path = out / "soak.json", out / "soak.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path
