"""Routing benchmark: every routing policy against a heterogeneous simulated GPU fleet.

    .venv/bin/python loadtests/routing_bench.py            # the default sweep (< 10 min, 2 cores)
    .venv/bin/python loadtests/routing_bench.py --seeds 3  # the same over seeds 1..3 (~26 min)
    .venv/bin/python loadtests/routing_bench.py --quick    # a one-minute look
    .venv/bin/python loadtests/routing_bench.py --quick --seeds 1,2,3  # three seeds of it
    .venv/bin/python loadtests/routing_bench.py --policies all --loads 0.3,0.5,0.8,1.0,1.1 \\
        --workloads W1,W2,W3 --arrivals poisson,gamma      # the full grid (hours)

Starts simulated backends (default 2xh100, 2xa100, 2xl4; ``aigw.sim``) in child processes,
measures the fleet's capacity per workload, then for each policy and scenario starts a
gateway (``aigw serve``) and drives it open loop with streamed chat completions: Poisson or
bursty Gamma (CV 3) arrivals, ShareGPT-like lengths, three workloads (W1 independent, W2
prefix-heavy conversations, W3 mixed long/short), plus one run where a backend slows x3.

``--seeds`` repeats every run with each seed's schedule (arrivals, lengths, conversations);
the report then gives medians over seeds with their spread, and ranks ``auto`` against each
other policy only where the spreads do not overlap. Runs go seed by seed, scenario by
scenario, every policy back to back, so drift of the machine hits every policy alike.

Simulated time runs ``--time-scale`` times slower than wall time (0.5: twice as fast); every
reported latency is in simulated seconds. Writes ``routing.md`` and ``routing.json`` to
``--out`` (default ``results/routing/``), and the child processes' logs under ``logs/``.
Every child process is stopped by PID at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests.bench.capacity import CapacityFileError, load_capacities  # noqa: E402
from loadtests.bench.report import markdown, write_reports  # noqa: E402
from loadtests.bench.sweep import (  # noqa: E402
    ALL_POLICIES,
    BUDGET_PER_SEED,
    DEFAULT_POLICIES,
    DEFAULT_SCENARIOS,
    Scenario,
    SweepConfig,
    SweepResult,
    estimate_wall_seconds,
    parse_scenarios,
    run_sweep,
)
from loadtests.bench.workload import ARRIVALS, WORKLOADS  # noqa: E402


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _loads(value: str) -> list[float]:
    loads = [float(v) for v in _csv(value)]
    if not loads or any(not 0 < v <= 3 for v in loads):
        raise argparse.ArgumentTypeError("loads are fractions of capacity in (0, 3], e.g. 0.3,0.8")
    return loads


def _seeds(value: str) -> tuple[int, ...]:
    """``1,2,5`` (a list; ``7,`` is the single seed 7) or ``3`` (seeds 1, 2, 3)."""
    try:
        if "," in value:
            seeds = tuple(int(v) for v in _csv(value))
        else:
            seeds = tuple(range(1, int(value) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed list or count: {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and at least one: {value!r}")
    return seeds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--policies",
        type=_csv,
        help=f"comma-separated presets, or 'all' (default: {','.join(DEFAULT_POLICIES)})",
    )
    p.add_argument("--loads", type=_loads, help="fractions of measured capacity, e.g. 0.3,0.8,1.1")
    p.add_argument("--workloads", type=_csv, help=f"subset of {','.join(WORKLOADS)}")
    p.add_argument("--arrivals", type=_csv, help=f"subset of {','.join(ARRIVALS)}")
    p.add_argument("--no-straggler", action="store_true", help="leave out the x3 straggler run")
    p.add_argument("--duration", type=float, help="measured window per run, simulated s (15)")
    p.add_argument("--warmup", type=float, help="warm-up per run after priming, simulated s (5)")
    p.add_argument("--time-scale", type=float, help="wall seconds per simulated second (0.5)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="round-robin, least-connections and auto, W1 at 80%% plus the straggler, "
        "short windows",
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "routing")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="one seed (default 1)")
    seeds.add_argument(
        "--seeds",
        type=_seeds,
        help="several seeds: a comma-separated list (1,2,3; '7,' is the one seed 7), or a "
        "count N for seeds 1..N. The fleet and the capacity use the first",
    )
    p.add_argument(
        "--budget",
        type=float,
        help="wall seconds; runs that would end past it are skipped "
        f"(default {BUDGET_PER_SEED:.0f} x the number of seeds)",
    )
    p.add_argument("--fleet", type=_csv, help="GPU profiles, e.g. h100,a100,l4 (default 2 of each)")
    p.add_argument(
        "--capacity-from",
        type=Path,
        metavar="ROUTING_JSON",
        help="reuse the capacities an earlier sweep measured (its routing.json; same fleet and "
        "time scale) instead of measuring them: the same arrival rates, so two commits or "
        "variants compare run for run",
    )
    return p


def build_config(args: argparse.Namespace) -> SweepConfig:
    grid = args.loads or args.workloads or args.arrivals
    if args.quick:
        # least-connections: the policy the issue compares auto against
        policies: Sequence[str] = ("round-robin", "least-connections", "auto")
        scenarios: tuple[Scenario, ...] = (
            Scenario("W1", "poisson", 0.8),
            Scenario("W1", "poisson", 0.8, straggler=True),
        )
    else:
        policies = DEFAULT_POLICIES
        scenarios = DEFAULT_SCENARIOS
    if args.policies:
        policies = ALL_POLICIES if args.policies == ["all"] else tuple(args.policies)
    if grid:
        for name in args.workloads or ():
            if name not in WORKLOADS:
                raise SystemExit(f"unknown workload {name!r}; expected one of {WORKLOADS}")
        for name in args.arrivals or ():
            if name not in ARRIVALS:
                raise SystemExit(f"unknown arrival process {name!r}; expected one of {ARRIVALS}")
        scenarios = parse_scenarios(
            args.workloads or ["W1"],
            args.arrivals or ["poisson"],
            args.loads or [0.8],
            straggler=not args.no_straggler,
        )
    elif args.no_straggler:
        scenarios = tuple(s for s in scenarios if not s.straggler)
    config = SweepConfig(
        policies=tuple(policies),
        scenarios=scenarios,
        out=args.out,
        seeds=args.seeds or (1 if args.seed is None else args.seed,),
        budget=args.budget,
    )
    if args.quick:
        config = replace(
            config,
            warmup=3.0,
            window=8.0,
            straggler_window=14.0,
            straggler_after=4.0,
            capacity_window=4.0,
        )
    if args.fleet:
        config = replace(config, profiles=tuple(args.fleet), straggler_backend=f"{args.fleet[0]}-0")
    if args.duration is not None:
        config = replace(
            config,
            window=args.duration,
            straggler_window=max(args.duration, config.straggler_after + 10),
        )
    if args.warmup is not None:
        config = replace(config, warmup=args.warmup)
    if args.time_scale is not None:
        config = replace(config, time_scale=args.time_scale)
    if args.capacity_from is not None:
        config = replace(config, capacity_from=args.capacity_from)
        workloads = {s.workload for s in config.scenarios}
        try:  # checked before any process starts
            load_capacities(args.capacity_from, workloads, config.profiles, config.time_scale)
        except CapacityFileError as exc:
            raise SystemExit(f"--capacity-from: {exc}") from None
    return config


async def _stoppable(sweep: Coroutine[Any, Any, SweepResult]) -> SweepResult:
    """``sweep``, cancelled by SIGTERM as by Ctrl-C: cancellation unwinds through the
    sweep's context managers, which stop every child process by PID."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await sweep
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _run(sweep: Coroutine[Any, Any, SweepResult]) -> SweepResult:
    """Run on uvloop when installed (cheaper per streamed chunk), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_stoppable(sweep))
    return uvloop.run(_stoppable(sweep))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = build_config(args)
    command = shlex.join(["loadtests/routing_bench.py", *(sys.argv[1:] if argv is None else argv)])
    print(
        f"routing benchmark: {len(config.policies)} policies x {len(config.scenarios)} scenarios "
        f"x {len(config.seeds)} seeds; 1 simulated s = {config.time_scale:g} wall s; "
        f"budget {config.budget_seconds:.0f} s; "
        f"estimated wall time {estimate_wall_seconds(config) / 60:.1f} min",
        flush=True,
    )

    def save(result: SweepResult) -> None:
        write_reports(result)

    sweep = run_sweep(config, command, lambda m: print(m, flush=True), save)
    try:
        result = _run(sweep)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"interrupted: child processes stopped; partial reports (if any) are in {config.out}",
            file=sys.stderr,
        )
        return 130
    md, js = write_reports(result)
    print()
    print(markdown(result))
    print(f"\nwrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
