"""Headless Locust run with reports and a pass/fail exit code (what loadtests/run.sh runs).

Without --url it starts `aigw demo` on a free 127.0.0.1 port, waits for /readyz, and kills
the demo by PID at the end, pass or fail. With --url it drives that gateway (send load only to
gateways you run). Locust writes `report.html` and `locust_stats.csv`,
`locust_stats_history.csv`, `locust_failures.csv`, `locust_exceptions.csv` into --out; the
demo's log goes there too.

Exit code: Locust's, which the locustfile sets from the thresholds (0: met, 1: breached; see
loadtests/thresholds.py); 2 when the demo does not start; 124 when Locust overruns
--run-time by more than a minute and is killed. Options default from LOCUST_USERS,
LOCUST_SPAWN_RATE, LOCUST_RUN_TIME, AIGW_URL and AIGW_LOADTEST_OUT; arguments after `--` go
to Locust unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
LOCUSTFILE = HERE / "locustfile.py"
DEMO_START_S = 30.0  # a cold start on two busy CPUs takes a few seconds
OVERRUN_S = 60.0  # beyond --run-time, Locust's stop and report writing
_BANNER = re.compile(rb"gateway at (http://127\.0\.0\.1:\d+)/v1")
_DURATION = re.compile(r"(\d+)([hms])")


class DemoError(Exception):
    """The demo did not come up."""


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop Locust and the demo.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    parser = _parser()
    args, locust_args = parser.parse_known_args(argv)
    locust_args = [a for a in locust_args if a != "--"]
    try:
        run_s = run_time_seconds(args.run_time)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out) if args.out else HERE / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    demo: subprocess.Popen[bytes] | None = None
    try:
        url = args.url
        if not url:
            demo, url = start_demo(out / "demo.log")
            print(f"aigw demo (pid {demo.pid}) at {url}", flush=True)
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", _base(url),
            "--headless", "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", args.run_time, "--only-summary",
            "--csv", str(out / "locust"), "--html", str(out / "report.html"),
            *locust_args,
        ]  # fmt: skip
        code = run_bounded(command, run_s + OVERRUN_S)
    except DemoError as exc:
        print(f"locust_run: {exc}", file=sys.stderr)
        code = 2
    finally:
        if demo is not None:
            stop(demo)
    print(f"reports in {out} (exit code {code})", flush=True)
    return code


def _base(url: str) -> str:
    """The locustfile's paths start with /v1: accept the gateway's URL with or without it."""
    return url.rstrip("/").removesuffix("/v1")


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviation must not swallow one of Locust's own options
    )
    parser.add_argument(
        "--url", default=env.get("AIGW_URL"), help="gateway to drive (default: start a demo)"
    )
    parser.add_argument(
        "-u", "--users", type=int, default=int(env.get("LOCUST_USERS", 10)), help="default 10"
    )
    parser.add_argument(
        "-r",
        "--spawn-rate",
        type=float,
        default=float(env.get("LOCUST_SPAWN_RATE", 5)),
        help="users started per second (default 5)",
    )
    parser.add_argument(
        "-t", "--run-time", default=env.get("LOCUST_RUN_TIME", "60s"), help="default 60s"
    )
    parser.add_argument(
        "--out",
        default=env.get("AIGW_LOADTEST_OUT"),
        help="report directory (default: loadtests/reports/<date-time>)",
    )
    return parser


def run_time_seconds(text: str) -> float:
    """Locust's --run-time (`90`, `45s`, `2m`, `1h30m`) in seconds; ValueError otherwise."""
    if text.isdigit():
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"--run-time must look like 30s, 2m or 1h30m (got {text!r})")
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts))


def start_demo(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`aigw demo` on port 0 (the kernel picks a free port, no race), its URL read from the
    banner; returns once /readyz answers 200. Kills the demo and raises DemoError otherwise."""
    with log_path.open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "aigw", "demo", "--host", "127.0.0.1", "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
    deadline = time.monotonic() + DEMO_START_S
    url = None
    try:
        while time.monotonic() < deadline:
            if demo.poll() is not None:
                raise DemoError(f"aigw demo exited with {demo.returncode}; see {log_path}")
            if url is None and (match := _BANNER.search(log_path.read_bytes())):
                url = match.group(1).decode()
            if url is not None and _ready(url):
                return demo, url
            time.sleep(0.1)
        raise DemoError(f"aigw demo not ready after {DEMO_START_S:g} s; see {log_path}")
    except BaseException:
        stop(demo)
        raise


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_bounded(command: list[str], limit_s: float) -> int:
    """Run Locust in the foreground; kill it by PID if it outlives ``limit_s``."""
    locust = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    try:
        return locust.wait(limit_s)
    except subprocess.TimeoutExpired:
        print(f"locust_run: Locust still running after {limit_s:g} s; killed", file=sys.stderr)
        stop(locust)
        return 124
    finally:
        stop(locust)  # on Ctrl-C as well


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; reaps. Safe on a process that already ended."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
