"""The runner's measured window: what it counts from the end of the warm-up, not before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loadtests.bench.runner import RunSpec, Timing, _drive

SCALE = 0.2  # wall seconds per simulated second: the 3 simulated seconds take 0.6 s


class _Client:
    tokens = 0


class _Run:
    """The parts of an open-loop run ``_drive`` reads: a clock, the client, samples."""

    def __init__(self) -> None:
        self.spec = RunSpec("auto", "W2", "poisson", 0.8, 1.0, warmup=1.0, window=2.0)
        self.timing = Timing(SCALE, sample_interval=0.5)
        self.scale = SCALE
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.client = _Client()
        self.samples: list[float] = []

    def now(self) -> float:
        return (self.loop.time() - self.t0) / self.scale

    def sample(self) -> None:
        self.samples.append(self.now())


class _Fleet:
    """Prefix counters that grow 100 queried and 60 hit tokens per simulated second, as an
    engine's would; the first second (priming, warm-up) is cold: queried, never hit."""

    backends: list[Any] = []

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.asked_at: list[float] = []

    async def stats(self, control: Any) -> dict[str, dict[str, int]]:
        t = self.run.now()
        self.asked_at.append(t)
        hits = int(60 * max(0.0, t - 1.0))
        return {"b0": {"prefix_cache_hits": hits, "prefix_cache_queries": int(100 * t)}}


async def test_prefix_counters_are_read_when_the_warm_up_ends() -> None:
    run = _Run()
    fleet = _Fleet(run)
    seconds, tokens, (hits, queries) = await _drive(run, fleet, control=None)  # type: ignore[arg-type]
    [asked] = fleet.asked_at  # once, at the start of the window
    assert 1.0 <= asked < 1.5
    assert queries == int(100 * asked) and hits == int(60 * (asked - 1.0))
    assert seconds == pytest.approx(2.0, abs=0.5) and tokens == 0
