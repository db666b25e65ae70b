"""``aigw serve --workers N``: N gateway processes on one listening socket, and their supervisor.

One Python process serves one core. The supervisor binds the port once and forks N workers
that accept from the same socket (the kernel spreads connections); each worker builds its
own app, so nothing per request crosses a process boundary. What must be exact across
workers (queues, rate limits, sessions, ejections) lives in Redis, which is why more than
one worker needs ``state.backend: redis`` (config validation says so).

The supervisor owns the signals: SIGTERM/SIGINT are passed once to every worker, which
drains as a single ``aigw serve`` does (a second signal closes at once, as there); SIGHUP is
passed on, so every worker reloads the config. Workers run in their own process group, so a
terminal's Ctrl-C reaches them once, through the supervisor, and they die with it
(``PR_SET_PDEATHSIG``) should it be killed. A worker that dies while serving (a crash, the
OOM killer) is started again after a pause; one that could not start (exit status 1: the
config, Redis or the port) stops the whole server with status 1, as a restart would fail too.

Metrics: prometheus_client's multiprocess mode (a directory of memory-mapped files, one set
per worker, created and removed by the supervisor), so counters and histograms on
``/metrics`` sum every worker whichever one answers the scrape.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["Supervisor", "use_metrics_dir"]

log = logging.getLogger("aigw")

# A worker that dies this soon after its start counts towards a crash loop...
_QUICK_DEATH_S = 10.0
# ...and this many quick deaths in a row stop the server.
_CRASH_LOOP = 5
_RESTART_PAUSE_S = 1.0
_FAILED_START = 1  # what a worker's serve returns when its server never started
_PR_SET_PDEATHSIG = 1

Worker = Callable[[socket.socket, int], int]


def use_metrics_dir(path: str) -> None:
    """Make prometheus_client keep metric values in ``path`` (multiprocess mode).

    prometheus_client chooses how values are stored from ``PROMETHEUS_MULTIPROC_DIR`` when it
    is first imported; it is chosen again here so that the order of imports cannot matter."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class Supervisor:
    """Runs ``count`` workers, each ``serve(sock, index)`` in a forked process, until told to
    stop; :meth:`run` returns the server's exit status."""

    def __init__(self, count: int, sock: socket.socket, serve: Worker) -> None:
        self._count = count
        self._sock = sock
        self._serve = serve
        self._workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
        self._stopping = False
        self._status = 0
        self._quick_deaths = 0

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="aigw-metrics-")
        use_metrics_dir(metrics_dir)
        self._sock.listen(2048)
        self._sock.set_inheritable(True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            for index in range(self._count):
                self._spawn(index)
            gc.enable()  # off for ``aigw serve``'s start-up; each worker's settle_heap turns its own on
            log.info(
                "aigw supervisor (pid %d): %d workers on %s",
                os.getpid(),
                self._count,
                _address(self._sock),
            )
            while self._workers:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                self._reap(pid, os.waitstatus_to_exitcode(status))
        finally:
            self._stop_all(signal.SIGTERM)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return self._status

    def _reap(self, pid: int, code: int) -> None:
        entry = self._workers.pop(pid, None)
        if entry is None:
            return
        index, started_at = entry
        if self._stopping:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                log.warning("worker %d (pid %d) ended with status %d", index, pid, code)
            return
        if code == _FAILED_START:
            log.error("worker %d (pid %d) could not start: stopping the server", index, pid)
            self._fail()
            return
        lived = time.monotonic() - started_at
        self._quick_deaths = self._quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
        if self._quick_deaths >= _CRASH_LOOP:
            log.error("workers keep dying within %gs of starting: stopping", _QUICK_DEATH_S)
            self._fail()
            return
        log.error(
            "worker %d (pid %d) died (status %d) after %.0fs: starting it again",
            index,
            pid,
            code,
            lived,
        )
        time.sleep(_RESTART_PAUSE_S)  # a stop signal meanwhile is handled; then don't restart
        if not self._stopping:
            self._spawn(index)

    def _fail(self) -> None:
        self._status = 1
        self._stopping = True
        self._stop_all(signal.SIGTERM)

    def _spawn(self, index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        supervisor = os.getpid()
        pid = os.fork()
        if pid:
            self._workers[pid] = (index, time.monotonic())
            if self._stopping:  # a stop signal came in between: it missed this worker
                os.kill(pid, signal.SIGTERM)
            return
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.setpgid(0, 0)
            _die_with_parent(supervisor)
            code = self._serve(self._sock, index)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        # The first signal drains every worker, a second closes them at once (as they do).
        self._stopping = True
        self._stop_all(signal.Signals(signum))

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self._stop_all(signal.SIGHUP)

    def _stop_all(self, sig: signal.Signals) -> None:
        for pid in list(self._workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _die_with_parent(supervisor: int) -> None:
    """Linux: this process gets SIGTERM when the supervisor dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before prctl took effect
            os._exit(1)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"
