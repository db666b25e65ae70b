"""One benchmark run: an open-loop schedule through the gateway, and capacity measurement.

Clock: the simulator's engines sleep ``step x time_scale`` wall seconds per simulated step, so
one simulated second lasts ``time_scale`` wall seconds. The runner schedules arrivals at
``t0 + at x time_scale`` and converts every measured time back with ``(wall - t0) /
time_scale``: everything it returns is in simulated seconds.

End of a run: arrivals stop after ``warmup + window``; the run is then cut as soon as every
measured request has its first token or has failed (at most ``ttft_timeout`` later). Requests
still streaming at the cut are *cut*, not failed: their TTFT and time per output token are
known, and their end-to-end latency is extrapolated as TTFT + (output tokens - 1) x TPOT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .client import HttpTarget, Outcome, StreamClient
from .fleet import Fleet, control_client
from .procs import self_cpu_seconds
from .workload import PlannedRequest, Schedule

__all__ = [
    "CpuUsage",
    "RequestRecord",
    "RunData",
    "RunSpec",
    "StragglerSpec",
    "Timing",
    "run_open_loop",
]


@dataclass(frozen=True, slots=True)
class StragglerSpec:
    backend: str  # backend id that slows down
    at: float  # simulated seconds after the first arrival
    factor: float


@dataclass(frozen=True, slots=True)
class RunSpec:
    policy: str
    workload: str
    arrival: str
    load: float  # fraction of the measured capacity
    rate: float  # requests per simulated second
    warmup: float  # simulated seconds of unmeasured arrivals
    window: float  # simulated seconds of measured arrivals
    straggler: StragglerSpec | None = None
    seed: int = 1  # the seed its schedule was drawn with (reported, not used here)

    @property
    def label(self) -> str:
        extra = "/straggler" if self.straggler else ""
        return (
            f"{self.policy} {self.workload}/{self.arrival}/{self.load:.0%}{extra} seed {self.seed}"
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """How simulated time maps to wall time, and the client's limits (simulated seconds)."""

    time_scale: float
    ttft_timeout: float = 10.0
    request_timeout: float = 300.0
    sample_interval: float = 0.5


@dataclass(frozen=True, slots=True)
class RequestRecord:
    at: float  # planned arrival (simulated seconds after the first arrival)
    sent: float
    measured: bool  # arrived in the measured window (not warm-up)
    deployment: str | None
    error: str | None  # None: completed; "cut": still streaming when the run ended
    ttft: float | None
    tpot: float | None
    e2e: float | None
    e2e_extrapolated: bool
    tokens: int  # output tokens received
    output_tokens: int  # requested (exact with ignore_eos)
    prompt_tokens: int

    @property
    def failed(self) -> bool:
        return self.error is not None and self.error != "cut"


@dataclass(frozen=True, slots=True)
class CpuUsage:
    wall_seconds: float
    fleet_seconds: float
    gateway_seconds: float
    client_seconds: float


@dataclass(frozen=True, slots=True)
class RunData:
    spec: RunSpec
    records: tuple[RequestRecord, ...]
    window_tokens: int  # output tokens received during the measured window
    window_seconds: float  # its actual length (simulated), within one polling interval
    samples: tuple[tuple[int, ...], ...]  # in-flight per backend (fleet order), sampled
    backend_ids: tuple[str, ...]
    # prefix-cache tokens the engines hit / looked up from the end of the warm-up to the end
    # of the drain: the prompts of the measured window's arrivals (give or take the few in
    # prefill at its start), the population of the ideal bound (workload.prefix_profile);
    # not the priming burst, a run's cold start that no router could serve from cache
    prefix_hits: int
    prefix_queries: int
    preemptions: int
    cpu: CpuUsage
    cut_at: float  # simulated seconds after the first arrival


def _record(
    plan: PlannedRequest, outcome: Outcome, t0: float, scale: float, warmup: float, cut_wall: float
) -> RequestRecord:
    def sim(wall: float) -> float:
        return (wall - t0) / scale

    error = outcome.error
    if outcome.done_at is None:  # never reported back (a connect cancelled by the cut)
        error = error or "cut"
    ttft = tpot = e2e = None
    extrapolated = False
    if outcome.first_token_at is not None:
        ttft = (outcome.first_token_at - outcome.sent_at) / scale
        if outcome.tokens >= 2 and outcome.last_token_at is not None:
            tpot = (outcome.last_token_at - outcome.first_token_at) / scale / (outcome.tokens - 1)
    elif error == "cut":
        error = "first-token timeout"  # waited until the cut without a token: a failure
        ttft = (cut_wall - outcome.sent_at) / scale  # a lower bound
    if error is None and outcome.done_at is not None and outcome.last_token_at is not None:
        e2e = (outcome.last_token_at - outcome.sent_at) / scale
    elif error == "cut" and ttft is not None and tpot is not None:
        e2e = ttft + (plan.output_tokens - 1) * tpot
        extrapolated = True
    return RequestRecord(
        at=plan.at,
        sent=sim(outcome.sent_at),
        measured=plan.at >= warmup,
        deployment=outcome.deployment,
        error=error,
        ttft=ttft,
        tpot=tpot,
        e2e=e2e,
        e2e_extrapolated=extrapolated,
        tokens=outcome.tokens,
        output_tokens=plan.output_tokens,
        prompt_tokens=plan.prompt_tokens,
    )


class _OpenLoop:
    """The state of one open-loop run: which requests were started, which are in flight."""

    def __init__(
        self,
        spec: RunSpec,
        schedule: Schedule,
        gateway: HttpTarget,
        backends: list[str],
        timing: Timing,
    ) -> None:
        self.spec = spec
        self.plans = schedule.requests
        self.timing = timing
        self.scale = timing.time_scale
        self.loop = asyncio.get_running_loop()
        self.backends = backends
        self._index = {b: i for i, b in enumerate(backends)}
        self.outcomes: dict[int, Outcome] = {}
        self._in_flight: dict[int, Outcome] = {}
        # Measured requests that have neither a first token nor an end yet.
        self._pending = {i for i, p in enumerate(self.plans) if p.at >= spec.warmup}
        self.client = StreamClient(gateway, self._done)
        self.samples: list[tuple[int, ...]] = []
        self.t0 = 0.0
        self._handles: list[asyncio.TimerHandle] = []

    def now(self) -> float:
        """Simulated seconds since the first arrival."""
        return (self.loop.time() - self.t0) / self.scale

    def schedule_arrivals(self, lead: float = 0.2) -> None:
        self.t0 = self.loop.time() + lead
        self._handles = [
            self.loop.call_at(self.t0 + plan.at * self.scale, self._start, i)
            for i, plan in enumerate(self.plans)
        ]

    def _start(self, i: int) -> None:
        timing = self.timing
        outcome = self.client.start(
            i,
            self.plans[i].body,
            timing.ttft_timeout * self.scale,
            timing.request_timeout * self.scale,
        )
        self.outcomes[i] = outcome
        if outcome.done_at is None:
            self._in_flight[i] = outcome

    def _done(self, outcome: Outcome) -> None:
        self._in_flight.pop(outcome.index, None)
        self._pending.discard(outcome.index)

    def sample(self) -> None:
        """Record the client-side in-flight count per backend."""
        counts = [0] * len(self.backends)
        for outcome in self._in_flight.values():
            if outcome.deployment is not None:
                counts[self._index[outcome.deployment]] += 1
        self.samples.append(tuple(counts))

    def drained(self) -> bool:
        """True once every measured request has its first token or has ended."""
        for i in [i for i in self._pending if i in self.outcomes]:
            if self.outcomes[i].first_token_at is not None:
                self._pending.discard(i)
        return not self._pending

    def cut(self) -> float:
        """Stop arrivals and abort what is in flight; the wall time of the cut."""
        for handle in self._handles:
            handle.cancel()
        cut_wall = self.loop.time()
        self.client.close()
        return cut_wall

    def records(self, cut_wall: float) -> tuple[RequestRecord, ...]:
        return tuple(
            _record(self.plans[i], outcome, self.t0, self.scale, self.spec.warmup, cut_wall)
            for i, outcome in sorted(self.outcomes.items())
        )


def _prefix_counts(stats: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(hit tokens, queried tokens) of the prefix caches, summed over the fleet."""
    hits = sum(s["prefix_cache_hits"] for s in stats.values())
    return hits, sum(s["prefix_cache_queries"] for s in stats.values())


async def _drive(
    run: _OpenLoop, fleet: Fleet, control: httpx.AsyncClient
) -> tuple[float, int, tuple[int, int]]:
    """Sample until the last arrival (slowing the straggler on time); the measured window's
    actual length, the output tokens received in it, and the fleet's prefix-cache counters
    (hits, queries) at its start."""
    spec, timing = run.spec, run.timing
    end_arrivals = spec.warmup + spec.window
    straggler = spec.straggler
    slow = next(b for b in fleet.backends if b.id == straggler.backend) if straggler else None
    window_start: tuple[float, int] | None = None  # (simulated time, tokens) at warm-up end
    prefix_start = (0, 0)
    next_sample = spec.warmup
    while (now := run.now()) < end_arrivals:
        if slow is not None and straggler is not None and now >= straggler.at:
            await fleet.set_slowdown(control, slow, straggler.factor)
            slow = None
        if window_start is None and now >= spec.warmup:
            window_start = (now, run.client.tokens)
            prefix_start = _prefix_counts(await fleet.stats(control))
        if window_start is not None and now >= next_sample:
            run.sample()
            next_sample += timing.sample_interval
        await asyncio.sleep(min(0.05, timing.sample_interval * run.scale / 2))
    if window_start is None:  # a warm-up of zero and a window shorter than one poll
        window_start = (spec.warmup, 0)
    return now - window_start[0], run.client.tokens - window_start[1], prefix_start


async def run_open_loop(
    spec: RunSpec,
    schedule: Schedule,
    gateway: HttpTarget,
    fleet: Fleet,
    gateway_cpu: Callable[[], float],
    timing: Timing,
) -> RunData:
    """Send ``schedule`` open loop through the gateway; see the module docstring."""
    async with control_client() as control:
        await fleet.reset(control)
        run = _OpenLoop(spec, schedule, gateway, [b.id for b in fleet.backends], timing)
        cpu0 = (fleet.cpu_seconds(), gateway_cpu(), self_cpu_seconds(), run.loop.time())
        run.schedule_arrivals()
        try:
            window_seconds, window_tokens, prefix_start = await _drive(run, fleet, control)
            limit = spec.warmup + spec.window + timing.ttft_timeout + 1
            while True:  # polled: a first token does not call back
                if run.drained() or run.now() >= limit:
                    break
                await asyncio.sleep(0.05)
        finally:
            cut_wall = run.cut()
        await asyncio.sleep(0)  # let cancelled connects report
        cpu1 = (fleet.cpu_seconds(), gateway_cpu(), self_cpu_seconds(), run.loop.time())
        stats = await fleet.stats(control)
        await fleet.wait_idle(control, limit_s=30.0)
    return RunData(
        spec=spec,
        records=run.records(cut_wall),
        window_tokens=window_tokens,
        window_seconds=window_seconds,
        samples=tuple(run.samples),
        backend_ids=tuple(run.backends),
        prefix_hits=_prefix_counts(stats)[0] - prefix_start[0],
        prefix_queries=_prefix_counts(stats)[1] - prefix_start[1],
        preemptions=sum(s["preemptions"] for s in stats.values()),
        cpu=CpuUsage(
            wall_seconds=cpu1[3] - cpu0[3],
            fleet_seconds=cpu1[0] - cpu0[0],
            gateway_seconds=cpu1[1] - cpu0[1],
            client_seconds=cpu1[2] - cpu0[2],
        ),
        cut_at=(cut_wall - run.t0) / run.scale,
    )
