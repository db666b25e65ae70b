"""The sweep: which runs, in which order, and running them all with one fleet.

One fleet process group serves every run; each run gets a fresh gateway (so that no run
inherits another's EWMAs, ejections or prefix memory) and fresh prompt salts (so that no run
hits prefixes cached by another). The fleet is seeded, and capacity measured once per workload
in the plan, with the first of ``seeds``; each run's schedule is drawn with its own seed.

Order: for each seed, for each scenario, every policy back to back. Policies compared on one
scenario run minutes apart at most, so drift of the machine (thermal, other load) between the
start and the end of a sweep hits every policy alike instead of favouring the ones run first.

Every run is bounded: its arrivals are finite, its drain ends ``ttft_timeout`` after the last
arrival at the latest, and the sweep skips runs once the budget (wall seconds) is spent.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .capacity import (
    Capacity,
    fill_seconds,
    load_capacities,
    measure_capacity,
    saturating_concurrency,
)
from .client import HttpTarget
from .fleet import UPSTREAM_MODEL, Fleet, FleetSpec
from .gateway import MODEL, GatewayStartError, GatewayTiming, start_gateway
from .procs import ChildProcesses
from .runner import RunSpec, StragglerSpec, Timing, run_open_loop
from .stats import CPU_STARVED, RunSummary, gateway_bound, machine_share, summarize
from .straggler import StragglerReport, analyse_straggler
from .workload import Priming, Schedule, build_schedule, prefix_profile

__all__ = [
    "ALL_POLICIES",
    "BUDGET_PER_SEED",
    "DEFAULT_POLICIES",
    "DEFAULT_SCENARIOS",
    "Scenario",
    "SweepConfig",
    "SweepResult",
    "available_policies",
    "estimate_wall_seconds",
    "run_order",
    "run_sweep",
    "scenario_key",
]

DEFAULT_POLICIES = ("round-robin", "least-connections", "least-latency", "gpu-aware", "auto")
ALL_POLICIES = (
    "round-robin",
    "weighted",
    "random",
    "least-connections",
    "least-latency",
    "hash",
    "cost",
    "gpu-aware",
    "auto",
)
BUDGET_PER_SEED = 900.0  # wall seconds: the default sweep with one seed fits in it
# Tuning parameters that are durations in seconds: scaled with the simulator's clock.
_TIME_PARAMS = ("cold_ttft_s", "kv_penalty_s", "prefill_s_per_token", "tpot_s")


@dataclass(frozen=True, slots=True)
class Scenario:
    workload: str
    arrival: str
    load: float
    straggler: bool = False


DEFAULT_SCENARIOS = (
    Scenario("W1", "poisson", 0.3),
    Scenario("W1", "poisson", 0.8),
    Scenario("W1", "poisson", 1.0),
    Scenario("W1", "gamma", 0.8),
    Scenario("W2", "poisson", 0.8),
    Scenario("W3", "poisson", 0.8),
    Scenario("W1", "poisson", 0.8, straggler=True),
)


@dataclass(frozen=True, slots=True)
class SweepConfig:
    policies: tuple[str, ...]
    scenarios: tuple[Scenario, ...]
    out: Path
    profiles: tuple[str, ...] = ("h100", "h100", "a100", "a100", "l4", "l4")
    time_scale: float = 0.5
    seeds: tuple[int, ...] = (1,)  # one schedule per seed; the first also seeds the fleet
    warmup: float = 5.0  # simulated seconds after priming, not measured
    window: float = 15.0  # simulated seconds of measured arrivals
    straggler_window: float = 20.0
    straggler_after: float = 6.0  # seconds into the measured window
    straggler_factor: float = 3.0
    straggler_backend: str = "h100-0"
    capacity_warmup: float = 3.0
    capacity_window: float = 5.0
    ttft_timeout: float = 10.0
    fleet_processes: int = 2
    budget: float | None = None  # wall seconds (None: 900 per seed); later runs are skipped
    priming: Priming | None = field(default_factory=Priming)
    gateway_timing: GatewayTiming = field(default_factory=GatewayTiming)
    # an earlier sweep's routing.json whose capacities this one reuses instead of measuring
    # (same fleet and time scale): the same arrival rates, so the two compare run for run
    capacity_from: Path | None = None

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, not {self.seeds}")

    @property
    def fleet_seed(self) -> int:
        """The seed of the fleet and of the capacity measurements: the first seed."""
        return self.seeds[0]

    @property
    def budget_seconds(self) -> float:
        return BUDGET_PER_SEED * len(self.seeds) if self.budget is None else self.budget


@dataclass(slots=True)
class SweepResult:
    config: SweepConfig
    command: str
    machine: dict[str, Any]
    capacities: dict[str, Capacity] = field(default_factory=dict)
    summaries: list[RunSummary] = field(default_factory=list)
    stragglers: list[StragglerReport] = field(default_factory=list)
    # scenario_key ("W2/poisson/80%") -> seed -> (shared system prompt share, ideal affinity
    # hit rate) of the measured requests' prompt tokens (workload.prefix_profile)
    prefix_profiles: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def available_policies() -> tuple[str, ...]:
    from aigw.policies import POLICIES

    return tuple(POLICIES)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's limit),
    not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API on this platform
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {
        "cpus": usable_cpus(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _run_sim_seconds(config: SweepConfig, scenario: Scenario) -> float:
    window = config.straggler_window if scenario.straggler else config.window
    return config.warmup + window + 3.0  # a typical drain


def _capacity_plan(config: SweepConfig, workload: str) -> tuple[Schedule, dict[str, int], float]:
    """The requests, streams per profile and warm-up of one capacity measurement."""
    # The rate only shapes W2's conversations; the closed loop ignores arrival times.
    schedule = build_schedule(
        workload, "poisson", 30.0, 60.0, config.fleet_seed, UPSTREAM_MODEL, f"cap-{workload}"
    )
    concurrency = saturating_concurrency(schedule, config.profiles)
    warmup = max(config.capacity_warmup, fill_seconds(schedule, concurrency) + 1.0)
    return schedule, concurrency, warmup


def estimate_wall_seconds(config: SweepConfig) -> float:
    workloads = {s.workload for s in config.scenarios} if config.capacity_from is None else ()
    capacity = sum(
        (_capacity_plan(config, w)[2] + config.capacity_window) * config.time_scale + 2.0
        for w in workloads
    )
    runs = sum(_run_wall_seconds(config, s) for s in config.scenarios) * len(config.policies)
    return 3.0 + capacity + runs * len(config.seeds)


def _run_wall_seconds(config: SweepConfig, scenario: Scenario) -> float:
    return _run_sim_seconds(config, scenario) * config.time_scale + 2.5  # + gateway start/stop


def policy_spec(policy: str, time_scale: float) -> str | dict[str, Any]:
    """The config ``policy`` value: durations among the preset's tuning params are scaled
    (the gateway's clock is wall time; the policy's defaults are meant for real GPUs)."""
    try:
        from aigw.policies.presets import PRESETS
        from aigw.policies.tuning import Tuning
    except ImportError:
        return policy
    preset = PRESETS.get(policy)
    if preset is None:
        return policy
    defaults = Tuning()
    scaled = {
        name: getattr(defaults, name) * time_scale
        for name in _TIME_PARAMS
        if name in preset.params and hasattr(defaults, name)
    }
    return {"name": policy, **scaled} if scaled and time_scale != 1.0 else policy


def scenario_key(scenario: Scenario) -> str:
    """``W2/poisson/80%`` (`` + straggler`` for a straggler run): the key of prefix_profiles."""
    extra = " + straggler" if scenario.straggler else ""
    return f"{scenario.workload}/{scenario.arrival}/{scenario.load:.0%}{extra}"


def run_order(config: SweepConfig, policies: Sequence[str]) -> list[tuple[int, Scenario, str]]:
    """(seed, scenario, policy) in the order run: seed-major, then scenario, then policy, so
    that the policies compared on one scenario and seed run back to back."""
    return [(seed, sc, p) for seed in config.seeds for sc in config.scenarios for p in policies]


def _run_spec(
    config: SweepConfig, policy: str, scenario: Scenario, capacity: Capacity, seed: int
) -> RunSpec:
    rate = scenario.load * capacity.requests_per_s
    if not scenario.straggler:
        return RunSpec(
            policy,
            scenario.workload,
            scenario.arrival,
            scenario.load,
            rate,
            config.warmup,
            config.window,
            seed=seed,
        )
    straggler = StragglerSpec(
        config.straggler_backend, config.warmup + config.straggler_after, config.straggler_factor
    )
    return RunSpec(
        policy,
        scenario.workload,
        scenario.arrival,
        scenario.load,
        rate,
        config.warmup,
        config.straggler_window,
        straggler,
        seed,
    )


async def run_sweep(
    config: SweepConfig,
    command: str,
    log: Callable[[str], None] = print,
    on_result: Callable[[SweepResult], None] | None = None,
) -> SweepResult:
    """Run every (seed, scenario, policy) of ``config`` in ``run_order``; ``on_result`` after
    each run (reports)."""
    started = time.monotonic()
    result = SweepResult(config=config, command=command, machine=machine_info())
    known = available_policies()
    policies = [p for p in config.policies if p in known]
    for missing in [p for p in config.policies if p not in known]:
        note = (
            f"policy {missing!r} is not available in this build (aigw.policies.POLICIES); skipped"
        )
        result.notes.append(note)
        log(f"note: {note}")
    logs = config.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timing = Timing(config.time_scale, ttft_timeout=config.ttft_timeout)
    with ChildProcesses() as children:
        fleet = Fleet(
            FleetSpec(
                config.profiles, config.time_scale, config.fleet_seed, config.fleet_processes
            ),
            children,
            logs,
        )
        fleet.start()
        log(f"fleet: {', '.join(b.id for b in fleet.backends)} (time scale {config.time_scale})")
        await _measure_capacities(config, fleet, timing, result, log)
        budget = config.budget_seconds
        # run_no numbers every run of the sweep, across seeds: it makes each run's prompt salt
        # unique, so no run (of any seed) hits prefixes another left in the fleet's caches.
        for run_no, (seed, scenario, policy) in enumerate(run_order(config, policies), 1):
            capacity = result.capacities[scenario.workload]
            spec = _run_spec(config, policy, scenario, capacity, seed)
            per_backend = capacity.per_backend
            needed = _run_wall_seconds(config, scenario)
            if time.monotonic() - started + needed > budget:
                note = f"skipped {spec.label}: the {budget:.0f} s budget is spent"
                result.notes.append(note)
                log(f"note: {note}")
                continue
            try:
                summary, straggler, profile = await _one_run(
                    config, spec, fleet, children, logs, timing, run_no, per_backend
                )
            except (GatewayStartError, httpx.HTTPError, OSError) as exc:
                # One broken run (a gateway that would not start, a backend that did not
                # answer its test endpoint) is reported and the sweep goes on.
                note = f"run {spec.label} failed: {type(exc).__name__}: {exc}"
                result.notes.append(note)
                log(f"note: {note}")
                continue
            result.summaries.append(summary)
            if profile != (0.0, 0.0):
                result.prefix_profiles.setdefault(scenario_key(scenario), {})[seed] = profile
            if straggler is not None:
                result.stragglers.append(straggler)
            log(_progress(summary, straggler))
            result.wall_seconds = time.monotonic() - started
            if on_result is not None:
                on_result(result)
    result.wall_seconds = time.monotonic() - started
    return result


async def _measure_capacities(
    config: SweepConfig,
    fleet: Fleet,
    timing: Timing,
    result: SweepResult,
    log: Callable[[str], None],
) -> None:
    workloads = sorted({s.workload for s in config.scenarios})
    if config.capacity_from is not None:
        result.capacities.update(
            load_capacities(config.capacity_from, workloads, config.profiles, config.time_scale)
        )
        note = f"capacities read from {config.capacity_from}, not measured by this sweep"
        result.notes.append(note)
        log(f"note: {note}")
        return
    for workload in workloads:
        schedule, concurrency, warmup = _capacity_plan(config, workload)
        capacity = await measure_capacity(
            fleet, schedule, concurrency, timing, warmup, config.capacity_window
        )
        result.capacities[workload] = capacity
        per = ", ".join(f"{b} {v:.0f}" for b, v in capacity.per_backend.items())
        log(
            f"capacity {workload}: {capacity.requests_per_s:.1f} req/s = "
            f"{capacity.tokens_per_s:.0f} output tok/s (mean output {capacity.mean_output:.0f}"
            f" tokens; streams per backend {concurrency}; per backend tok/s: {per})"
        )


async def _one_run(
    config: SweepConfig,
    spec: RunSpec,
    fleet: Fleet,
    children: ChildProcesses,
    logs: Path,
    timing: Timing,
    run_no: int,
    capacity: dict[str, float],
) -> tuple[RunSummary, StragglerReport | None, tuple[float, float]]:
    """One run with a fresh gateway; its summary, straggler report and prefix profile."""
    window = spec.warmup + spec.window
    schedule = build_schedule(
        spec.workload,
        spec.arrival,
        spec.rate,
        window,
        spec.seed,
        MODEL,
        # Unique per run across seeds; fixed width: a salt is part of every prompt, so the
        # policies run on one (seed, scenario) get prompts of the same lengths.
        f"r{run_no:04d}",
        config.priming,
    )
    gateway = start_gateway(
        children,
        logs,
        spec.policy,
        policy_spec(spec.policy, config.time_scale),
        fleet.backends,
        config.time_scale,
        config.gateway_timing,
    )
    try:
        gateway.wait_scraped(timeout=10.0)
        data = await run_open_loop(
            spec,
            schedule,
            HttpTarget("127.0.0.1", gateway.port),
            fleet,
            gateway.cpu_seconds,
            timing,
        )
    finally:
        children.stop(gateway.process)
    summary = summarize(data)
    straggler = analyse_straggler(data, capacity) if spec.straggler else None
    return summary, straggler, prefix_profile(schedule, spec.warmup)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _progress(s: RunSummary, straggler: StragglerReport | None) -> str:
    line = (
        f"seed {s.seed} {s.policy:>17} {s.workload}/{s.arrival:<7} {s.load:>4.0%}: "
        f"TTFT p50/p99 {_fmt(s.ttft_p50)}/{_fmt(s.ttft_p99)} s, "
        f"TPOT p50 {_fmt(None if s.tpot_p50 is None else s.tpot_p50 * 1000, 0)} ms, "
        f"{s.output_tokens_per_s:.0f} tok/s, goodput {s.goodput:.1f}/s, "
        f"failed {s.failed_pct:.1f}%, cpu gw {s.cpu_pct['gateway']:.0f}% "
        f"loadgen {s.cpu_pct['loadgen']:.0f}% ({s.wall_seconds:.0f} s)"
    )
    share = machine_share(s, usable_cpus())
    if share >= CPU_STARVED:
        line += f"; CPU-STARVED: {share:.0%} of the machine"
    if gateway_bound(s):
        line += f"; GATEWAY-BOUND: its loop busy {s.cpu_pct['gateway']:.0f}% of the time"
    if straggler is not None:
        line += (
            f"; straggler share {_fmt(straggler.share_before)} -> "
            f"{_fmt(straggler.share_last_5s)} (fair {straggler.fair_share:.2f}), "
            f"below fair/2 after {_fmt(straggler.seconds_to_move, 0)} s"
        )
    return line


def parse_scenarios(
    workloads: Sequence[str], arrivals: Sequence[str], loads: Sequence[float], straggler: bool
) -> tuple[Scenario, ...]:
    """The full grid of the given values, plus the straggler run (W1, Poisson, 80%)."""
    grid = [Scenario(w, a, load) for w in workloads for a in arrivals for load in loads]
    if straggler:
        grid.append(Scenario("W1", "poisson", 0.8, straggler=True))
    return tuple(grid)
