"""Child processes of the benchmark: start, wait for, stop by PID, and read their CPU time.

Every process is started in its own session so that a stray signal to the benchmark's
terminal does not reach it twice, and is stopped by its PID (SIGTERM, then SIGKILL after a
grace period) from :class:`ChildProcesses`, which the benchmark uses as a context manager so
that children are stopped on success, exception, Ctrl-C and SIGTERM alike; should the
benchmark itself be killed outright, Linux sends each child SIGTERM (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ROOT", "ChildProcesses", "cpu_seconds", "self_cpu_seconds"]

ROOT = Path(__file__).resolve().parents[2]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the benchmark dies, so that not
    even a SIGKILLed benchmark leaves backends or gateways behind (no-op elsewhere)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds (0.0 once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    # After pid and (comm): fields[11] utime, fields[12] stime, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    """CPU time of this process (all threads), in seconds."""
    return time.process_time()


class ChildProcesses:
    """The processes this benchmark started; ``stop_all`` ends each one by its PID."""

    def __init__(self, grace_seconds: float = 5.0) -> None:
        self._grace = grace_seconds
        self._children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` from the repository root; stdout+stderr go to ``log_path``."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        offline = ROOT.parent / "shared" / "tiktoken"  # as ./dev does: no downloads offline
        if "TIKTOKEN_CACHE_DIR" not in env and offline.is_dir():
            env["TIKTOKEN_CACHE_DIR"] = str(offline)
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> None:
        """SIGTERM, wait up to the grace period, then SIGKILL; always reaps the child."""
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            try:
                child.wait(self._grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.wait(self._grace)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
