"""loadtests/run.sh end to end: Locust against a demo it starts, reports, thresholds.

Real processes and sockets on 127.0.0.1: the runner starts `aigw demo` on a free port, runs
Locust headless for a few seconds, kills the demo by PID. Checks that streams are reported as
separate time-to-first-token and whole-stream entries, and that the thresholds set the exit
code. About 15 s.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SH = REPO_ROOT / "loadtests" / "run.sh"
ENTRIES = (
    "chat (stream) ttft",
    "chat (stream) total",
    "chat (session) ttft",
    "chat (session) total",
    "chat",
    "embeddings",
)
# Short think times and even task weights, so that a few seconds reach every entry.
QUICK = {
    "AIGW_THINK_MIN": "0.05",
    "AIGW_THINK_MAX": "0.2",
    "AIGW_WEIGHT_STREAM": "3",
    "AIGW_WEIGHT_CHAT": "2",
    "AIGW_WEIGHT_EMBEDDINGS": "2",
    "AIGW_WEIGHT_SESSION": "2",
    "AIGW_SESSION_TURNS": "2",
}


def _run(out: Path, run_time: str, users: int, **env: str) -> tuple[int, str]:
    """run.sh against a demo; its exit code and output. Asserts the demo was stopped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AIGW_", "LOCUST_"))}
    environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO_ROOT.parent / "shared" / "tiktoken"))
    environ.update(QUICK, PYTHON=sys.executable, **env)
    argv = ["bash", str(RUN_SH), "--run-time", run_time, "--users", str(users)]
    argv += ["--spawn-rate", str(users), "--out", str(out)]
    log_path = out.parent / f"{out.name}.log"
    with log_path.open("wb") as log:
        runner = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            code = runner.wait(40)
        except subprocess.TimeoutExpired:
            runner.terminate()  # the runner stops Locust and the demo on SIGTERM
            runner.wait(15)
            pytest.fail(f"run.sh overran:\n{log_path.read_text()[-3000:]}")
    output = log_path.read_text()
    match = re.search(r"aigw demo \(pid (\d+)\)", output)
    assert match, output[-3000:]
    pid = int(match.group(1))
    assert _gone(pid), f"the demo (pid {pid}) is still running"
    return code, output


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    os.kill(pid, signal.SIGKILL)  # do not leak it, then fail
    return False


def _stats(out: Path) -> dict[str, dict[str, str]]:
    with (out / "locust_stats.csv").open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_streams_get_ttft_and_total_entries(tmp_path: Path) -> None:
    out = tmp_path / "pass"
    code, output = _run(out, "6s", 4)
    assert code == 0, output[-3000:]
    stats = _stats(out)
    for name in ENTRIES:
        assert name in stats, f"{name!r} missing: {sorted(stats)}"
        assert int(stats[name]["Request Count"]) > 0, name
        assert int(stats[name]["Failure Count"]) == 0, (name, output[-3000:])
    for kind in ("chat (stream)", "chat (session)"):
        ttft, total = stats[f"{kind} ttft"], stats[f"{kind} total"]
        assert ttft["Request Count"] == total["Request Count"]  # one of each per stream
        assert float(ttft["Median Response Time"]) < float(total["Median Response Time"])
    assert "thresholds met" in output
    assert (out / "report.html").stat().st_size > 0
    assert (out / "demo.log").exists()


def test_a_breached_threshold_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "breach"
    code, output = _run(out, "3s", 2, AIGW_MAX_P99_MS="1")
    assert code == 1, output[-3000:]
    assert re.search(r"threshold breached: p99 [\d.]+ ms over all entries, above 1\b", output)
    assert int(_stats(out)["Aggregated"]["Request Count"]) > 0
