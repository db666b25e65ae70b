"""Fixtures of the end-to-end tests: a process group killed by PID, Redis, counting backends."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import Processes, RedisServer


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def redis_server(processes: Processes) -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    return RedisServer(processes).start()
