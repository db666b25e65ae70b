"""The soak (loadtests/soak.py): its verdicts, the upstream's injected errors and paced streams,
and a few seconds of the real thing (real processes and sockets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtests import soak
from loadtests.soak_report import Tally, growth_verdict, settle_verdicts
from loadtests.static_upstream import INJECTED, create_app


def test_growth_compares_medians_of_the_first_and_last_three() -> None:
    flat = growth_verdict("RSS", [100, 140, 100, 101, 100, 90, 104, 103, 104], 0.05)
    assert (flat.first, flat.last, flat.passed) == (100, 104, True)  # 140 and 90: damped
    grown = growth_verdict("RSS", [100, 100, 100, 104, 105, 106], 0.05)
    assert (grown.last, grown.passed) == (105, False)
    short = growth_verdict("fds", [10, 11], 0.05)  # fewer than 6: one against one
    assert (short.first, short.last, short.passed) == (10, 11, False)
    assert not growth_verdict("fds", [10], 0.05).passed  # nothing to compare


def test_tasks_must_come_back_to_the_idle_count() -> None:
    tasks, in_flight = settle_verdicts([7, 8, 7], [9, 8], 0)
    assert tasks.passed and in_flight.passed  # 8 seen idle: a periodic task
    tasks, in_flight = settle_verdicts([7, 7, 7], [9, 9], 2)
    assert not tasks.passed and not in_flight.passed


def test_tally_counts_each_outcome() -> None:
    tally = Tally()
    for outcome in ("json", "stream", "stream", "abandoned", "upstream_error", "status 503: x"):
        tally.count(outcome)
    assert (tally.json_ok, tally.stream_ok, tally.abandoned, tally.upstream_errors) == (1, 2, 1, 1)
    assert (tally.failed, tally.failures, tally.finished) == (1, ["status 503: x"], 6)


async def _call(app: Any, method: str, path: str, body: bytes, leave: bool = False) -> Any:
    """Drive the ASGI app in process; ``leave``: the client disconnects after the first
    body chunk. Returns (status, body chunks)."""
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    left = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if leave and message["type"] == "http.response.body":
            left.set()

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent[0]["status"], [m["body"] for m in sent[1:]]


async def test_upstream_injects_every_nth_error_and_paces_streams() -> None:
    app = create_app(chunks=4, error_every=3, chunk_delay=0.001)
    chat = b'{"model": "m", "messages": []}'
    stream = b'{"model": "m", "messages": [], "stream": true}'
    assert (await _call(app, "POST", "/v1/chat/completions", chat))[0] == 200
    status, chunks = await _call(app, "POST", "/v1/chat/completions", stream)
    assert status == 200 and len(chunks) == 6  # 4 chunks, [DONE], the end
    assert chunks[-2] == b"data: [DONE]\n\n"
    status, chunks = await _call(app, "POST", "/v1/chat/completions", chat)
    assert status == 500 and orjson.loads(chunks[0])["error"]["message"] == INJECTED
    status, chunks = await _call(app, "POST", "/v1/chat/completions", stream, leave=True)
    assert status == 200 and len(chunks) == 1  # it stopped once the client left
    status, chunks = await _call(app, "GET", "/stats", b"")
    stats = orjson.loads(chunks[0])
    assert stats == {"requests": 4, "errors": 1, "streams": 2, "streams_cut": 1}


def test_upstream_default_stays_one_write_per_stream() -> None:
    app = create_app(chunks=8)
    stream = b'{"model": "m", "messages": [], "stream": true}'
    status, chunks = asyncio.run(_call(app, "POST", "/v1/chat/completions", stream))
    assert status == 200 and len(chunks) == 1 and chunks[0].count(b"data: ") == 9


@pytest.mark.e2e
@pytest.mark.timeout(40)
def test_a_short_soak_serves_every_kind_of_traffic_and_reports(tmp_path: Path) -> None:
    argv = [
        *("--minutes", "0.15", "--warmup", "0.02", "--interval", "1", "--settle", "1"),
        *("--concurrency", "8", "--abandon-share", "0.2", "--error-share", "0.05"),
        *("--chunks", "8", "--chunk-delay", "0.01"),
        *("--growth-limit", "10", "--out", str(tmp_path)),  # a few seconds: not judged on growth
    ]
    assert soak.main(argv) == 0
    result = json.loads((tmp_path / "soak.json").read_text())
    tally = result["tally"]
    assert tally["json_ok"] > 0 and tally["stream_ok"] > 0
    assert tally["abandoned"] > 0 and tally["upstream_errors"] > 0
    assert tally["failed"] == 0, tally["failures"]
    # The gateway saw both: the injected 500s failed their attempts (one deployment: no
    # failover, the upstream's own 500 reached the client, one for one) and the abandoned
    # streams were counted as such and cut upstream.
    attempts, upstream = result["gateway_attempts"], result["upstream"]
    assert upstream["errors"] == tally["upstream_errors"]
    assert attempts["error"] + attempts.get("rejected", 0) == upstream["errors"]
    assert attempts["abandoned"] == tally["abandoned"]
    assert upstream["streams_cut"] > 0
    samples = result["samples"]
    assert len(samples) >= 6 and any(not s["steady"] for s in samples)
    assert all(s["rss_kib"] > 0 and s["fds"] > 0 and s["tasks"] > 0 for s in samples)
    assert samples[-1]["finished"] > samples[0]["finished"]
    figures = {v["figure"]: v["passed"] for v in result["verdicts"]}
    assert set(figures) == {
        "RSS KiB",
        "open fds",
        "asyncio tasks after the load",
        "in flight after the load",
        "unexpected failures",
    }
    assert all(figures.values())
    md = (tmp_path / "soak.md").read_text()
    assert md.startswith("# Soak: PASS") and "## Samples" in md and "## Verdicts" in md
