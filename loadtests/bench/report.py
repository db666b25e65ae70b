"""The sweep's report: one Markdown file (tables) and one JSON file (everything).

With several seeds the main table holds, per (policy, scenario), the median over seeds of
every figure, with the spread ``median [min-max]`` (an en dash in the text) of the noisy
ones; every run stays in the "Per-seed runs" table and in the JSON. With one seed the main
table is the runs themselves. Then ``auto`` against every other policy (bench.aggregate).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .aggregate import (
    LatencyComparison,
    PolicyAggregate,
    ScenarioComparison,
    Spread,
    aggregate,
    compare,
    spread,
)
from .stats import CPU_STARVED, GATEWAY_BOUND, RunSummary, gateway_bound, machine_share
from .sweep import ALL_POLICIES, SweepResult, scenario_key

__all__ = ["markdown", "to_json", "write_reports"]

_TO = "\u2013"  # en dash, between the ends of a range: 0.70 to 1.10


def _f(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _spread(value: Spread | None, digits: int = 2, scale: float = 1.0, ranged: bool = True) -> str:
    """``median [min-max]``, or the median alone when not ``ranged``."""
    if value is None:
        return "-"
    median = _f(value.median, digits, scale)
    if not ranged:
        return median
    return f"{median} [{_f(value.low, digits, scale)}{_TO}{_f(value.high, digits, scale)}]"


def _rank(policy: str) -> int:
    return ALL_POLICIES.index(policy) if policy in ALL_POLICIES else len(ALL_POLICIES)


def _order(a: PolicyAggregate) -> tuple[Any, ...]:
    sc = a.scenario
    return (sc.straggler, sc.workload, sc.arrival, sc.load, _rank(a.policy))


def _multi_seed(result: SweepResult) -> bool:
    """Whether runs of more than one seed are in: the tables then show spreads."""
    return len({s.seed for s in result.summaries}) > 1


_HEAD = (
    "| req/s | TTFT p50 / p90 / p99 (s) | TTFT mean (s) | TPOT p50 / p99 (ms) "
    "| E2E p50 / p99 (s) | out tok/s | goodput (req/s) | failed % | prefix hit % "
    "| in-flight max/mean |"
)
_ALIGN = "---:|---|---:|---|---|---:|---:|---:|---:|---:|"


def results_table(result: SweepResult) -> list[str]:
    """One row per (policy, scenario): medians over seeds, spreads when several seeds ran."""
    ranged = _multi_seed(result)
    seeds = ("| seeds ", "---:|") if ranged else ("", "")
    rows = [
        f"| policy | workload | arrivals | load {seeds[0]}{_HEAD}",
        f"|---|---|---|---:|{seeds[1]}{_ALIGN}",
    ]
    for a in sorted(aggregate(result.summaries), key=_order):
        extra = [str(len(a.seeds))] if ranged else []
        rows.append(_row(a, _suffix(result, a.scenario.straggler), ranged, extra))
    return rows


def per_seed_table(result: SweepResult) -> list[str]:
    """Every run, one row each, in the order of the main table then by seed."""
    rows = [
        f"| policy | workload | arrivals | load | seed {_HEAD}",
        f"|---|---|---|---:|---:|{_ALIGN}",
    ]
    runs = [(aggregate([s])[0], s.seed) for s in result.summaries]
    for a, seed in sorted(runs, key=lambda r: (_order(r[0]), r[1])):
        rows.append(_row(a, _suffix(result, a.scenario.straggler), False, [str(seed)]))
    return rows


def _suffix(result: SweepResult, straggler: bool) -> str:
    return f" + x{result.config.straggler_factor:g} straggler" if straggler else ""


def _row(a: PolicyAggregate, suffix: str, ranged: bool, extra: list[str]) -> str:
    m, sc = a.median, a.scenario
    tpot = f"{_f(m('tpot_p50'), 0, 1000)} / {_f(m('tpot_p99'), 0, 1000)}"
    p99 = _spread(a.get("ttft_p99"), ranged=ranged)
    cells = [
        a.policy,
        sc.workload,
        f"{sc.arrival}{suffix}",
        f"{sc.load:.0%}",
        *extra,
        _f(m("rate"), 1),
        f"{_f(m('ttft_p50'))} / {_f(m('ttft_p90'))} / {p99}",
        _spread(a.get("ttft_mean"), ranged=ranged),
        tpot,
        f"{_f(m('e2e_p50'), 1)} / {_f(m('e2e_p99'), 1)}",
        _spread(a.get("output_tokens_per_s"), 0, ranged=ranged),
        _f(m("goodput"), 1),
        _spread(a.get("failed_pct"), 1, ranged=ranged),
        _spread(a.get("prefix_hit_rate"), 1, 100, ranged=ranged),
        _f(m("imbalance_mean")),
    ]
    return f"| {' | '.join(cells)} |"


def _gpu_class(backend: str) -> str:
    """``h100`` of the backend id ``h100-1`` (the fleet names backends profile-index)."""
    return backend.rsplit("-", 1)[0]


def placement_table(result: SweepResult) -> list[str]:
    """Per (policy, scenario) and GPU class: requests in flight per engine over the window
    and the class's share of the dispatches, medians over seeds."""
    classes = list(dict.fromkeys(result.config.profiles))
    groups: dict[tuple[Any, ...], list[RunSummary]] = {}
    for s in result.summaries:
        key = (s.straggler, s.workload, s.arrival, s.load, _rank(s.policy), s.policy)
        groups.setdefault(key, []).append(s)
    rows = [
        "| policy | workload | arrivals | load | "
        + " | ".join(f"{c}: in flight per engine (share)" for c in classes)
        + " |",
        "|---|---|---|---:|" + "---:|" * len(classes),
    ]
    for key in sorted(groups):
        runs = groups[key]
        cells = []
        for c in classes:
            per_engine, shares = [], []
            for s in runs:
                engines = [b for b in s.in_flight_mean if _gpu_class(b) == c]
                if engines:
                    per_engine.append(sum(s.in_flight_mean[b] for b in engines) / len(engines))
                shares.append(sum(v for b, v in s.dispatch_share.items() if _gpu_class(b) == c))
            held, share = spread(per_engine), spread(shares)
            cells.append(
                "-" if held is None or share is None else f"{held.median:.1f} ({share.median:.0%})"
            )
        first = runs[0]
        suffix = _suffix(result, first.straggler)
        head = [first.policy, first.workload, f"{first.arrival}{suffix}", f"{first.load:.0%}"]
        rows.append(f"| {' | '.join([*head, *cells])} |")
    return rows


def straggler_table(result: SweepResult) -> list[str]:
    if not result.stragglers:
        return []
    seed = ("| seed ", "---:|") if len({r.seed for r in result.stragglers}) > 1 else ("", "")
    first = result.stragglers[0]
    c = result.config
    after = c.straggler_window - c.straggler_after
    rows = [
        f"Backend `{first.backend}` slows x{first.factor:g} {c.straggler_after:g} s into the "
        f"measured window (W1, Poisson, 80% load) and stays slow for the remaining {after:g} s. "
        f"Shares are of the requests dispatched in each interval. Its fair share is its share "
        f"of the measured capacity, {first.fair_share:.3f} (x{first.factor:g} slower, its "
        f"capacity share would be {first.ideal_after:.3f}). *Below fair/2 after*: the first "
        "second T after the slowdown from which its share is below half its fair share over "
        "[T, T+2 s) and over the rest of the run.",
        "",
        f"| policy {seed[0]}| share before | 0-2 s after | 2-5 s after | last 5 s "
        "| below fair/2 after (s) |",
        f"|---|{seed[1]}---:|---:|---:|---:|---:|",
    ]
    for r in sorted(result.stragglers, key=lambda r: (_rank(r.policy), r.seed)):
        moved = "not within the run" if r.seconds_to_move is None else f"{r.seconds_to_move:.0f}"
        rows.append(
            f"| {r.policy} {f'| {r.seed} ' if seed[0] else ''}| {_f(r.share_before, 3)} "
            f"| {_f(r.share_0_2s, 3)} | {_f(r.share_2_5s, 3)} | {_f(r.share_last_5s, 3)} "
            f"| {moved} |"
        )
    return rows


def comparison_lines(result: SweepResult, comparisons: list[ScenarioComparison]) -> list[str]:
    """The reference policy against each other one: latency verdicts, throughput, prefix."""
    if not comparisons:
        return []
    ref = comparisons[0].reference
    seeds = len({s.seed for s in result.summaries})
    lines = [
        f"Medians over {seeds} seed{'s' if seeds > 1 else ''} (`median [min{_TO}max]`); ratio: "
        f"{ref}'s median / the other's. Verdict: *better* only when {ref}'s worst seed beats "
        f"the other policy's best seed, *worse* when its best seed is behind the other's "
        "worst, otherwise *overlap*: the spreads overlap and the two are not ranked.",
    ]
    if seeds == 1:
        lines[0] += (
            " With one seed each spread is a single run and a verdict compares single runs: "
            "`--seeds N` ranks over N seeds."
        )
    lines += [
        "",
        f"| scenario | against | TTFT p99 {ref} / other (s) | ratio | verdict "
        f"| TTFT mean {ref} / other (s) | ratio | verdict |",
        "|---|---|---|---:|---|---|---:|---|",
    ]
    for c in comparisons:
        for p in c.against:
            lines.append(
                f"| {scenario_key(c.scenario)} | {p.policy} "
                f"| {_latency_cells(p.ttft_p99)} | {_latency_cells(p.ttft_mean)} |"
            )
    lines += [
        "",
        f"Throughput: {ref}'s median output tok/s against the best median of the scenario; "
        f"then, seed by seed (every policy of a seed ran the same schedule), {ref} against "
        f"the best other policy: median [min{_TO}max] of the per-seed differences.",
        "",
        f"| scenario | {ref} | best policy | best | {ref} vs best | per seed, vs |",
        "|---|---:|---|---:|---:|---|",
    ]
    for c in comparisons:
        t = c.throughput
        if t is not None:
            per_seed = "-"
            if t.paired_pct is not None and t.rival is not None:
                d = t.paired_pct
                per_seed = f"{d.median:+.1f}% [{d.low:+.1f}{_TO}{d.high:+.1f}] vs {t.rival}"
            lines.append(
                f"| {scenario_key(c.scenario)} | {t.reference:.0f} | {t.best_policy} "
                f"| {t.best:.0f} | {t.difference_pct:+.1f}% | {per_seed} |"
            )
    prefix = [(c.scenario, c.prefix) for c in comparisons if c.prefix is not None]
    if prefix:
        lines += [
            "",
            "Prefix cache hit rate (medians over seeds); the ideal bound is that of an "
            "affinity router keeping each conversation on one backend, unbounded cache.",
            "",
            f"| scenario | {ref} % | round-robin % | {ref} / round-robin | ideal % "
            f"| {ref} / ideal |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for scenario, x in prefix:
            lines.append(
                f"| {scenario_key(scenario)} | {_f(x.reference, 1, 100)} | {_f(x.baseline, 1, 100)} "
                f"| {_f(x.over_baseline)} | {_f(x.ideal, 1, 100)} | {_f(x.over_ideal)} |"
            )
    return lines


def _latency_cells(c: LatencyComparison | None) -> str:
    if c is None:
        return "- | - | -"
    # 3 digits: at low load TTFTs are tens of ms, and 2 digits hid what decided a verdict
    return f"{_spread(c.reference, 3)} / {_spread(c.other, 3)} | {_f(c.ratio)} | {c.verdict}"


def cpu_lines(result: SweepResult) -> list[str]:
    """The busiest run per process group, and the median CPU cost per output token."""
    out = []
    for group, name in (
        ("gateway", "gateway"),
        ("fleet", "fleet (all backend processes)"),
        ("loadgen", "load generator"),
    ):
        peak = max(s.cpu_pct[group] for s in result.summaries)
        costs = sorted(s.cpu_us_per_token[group] for s in result.summaries)
        median = costs[len(costs) // 2]
        out.append(
            f"- {name}: at most {peak:.0f}% of one core during a run; "
            f"median {median:.0f} CPU-µs per output token"
        )
    cores = int(result.machine.get("cpus") or 1)
    shares = [(machine_share(s, cores), s) for s in result.summaries]
    out.append(
        f"- all of them together: at most {max(share for share, _ in shares):.0%} of the "
        f"machine's {cores} cores during a run"
    )
    starved = [s for share, s in shares if share >= CPU_STARVED]
    if starved:
        labels = _run_labels(starved)
        out.append(
            f"- **{len(starved)} of {len(shares)} runs used {CPU_STARVED:.0%} or more of the "
            f"machine** ({labels}): their processes queued for a core, so their latencies and "
            "failures measure the machine as much as the policy; compare them only with runs "
            "as busy, or re-run on a bigger machine or with a larger `--time-scale`"
        )
    bound = [s for s in result.summaries if gateway_bound(s)]
    if bound:
        out.append(
            f"- **{len(bound)} of {len(shares)} runs had the gateway's event loop busy "
            f"{GATEWAY_BOUND:.0%} or more of the time** ({_run_labels(bound)}): saturated "
            "through the bursts, its own queueing is in their TTFTs; re-run them with a larger "
            "`--time-scale` before ranking policies on them"
        )
    return out


def _run_labels(runs: list[RunSummary]) -> str:
    return ", ".join(
        f"{s.policy} {s.workload}/{s.arrival}/{s.load:.0%} seed {s.seed}" for s in runs
    )


def _seeds_text(result: SweepResult) -> str:
    seeds = result.config.seeds
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    listed = ", ".join(str(s) for s in seeds)
    return f"seeds {listed} (the fleet and the capacity measurements: seed {seeds[0]})"


def _header(result: SweepResult) -> list[str]:
    c = result.config
    m = result.machine
    scale = c.time_scale
    return [
        "# Routing benchmark results",
        "",
        f"- Command: `{result.command}`",
        f"- Machine: {m.get('cpus')} CPUs ({m.get('cpu_model') or 'unknown model'}), "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}",
        f"- Fleet: {', '.join(c.profiles)} (simulated, `aigw.sim`), {_seeds_text(result)}",
        f"- Time scale: 1 simulated second = {scale:g} wall seconds. All latencies and rates below "
        "are in simulated seconds; the gateway's scrape interval "
        f"({c.gateway_timing.scrape_interval:g} s), timeouts and the policies' time constants "
        "are scaled the same way.",
        f"- Each run: priming to steady state, {c.warmup:g} s warm-up, {c.window:g} s of measured "
        f"arrivals ({c.straggler_window:g} s for the straggler run), then a drain of at most "
        f"{c.ttft_timeout:g} s (the client's first-token timeout).",
        "- Goodput: requests per second with TTFT ≤ 2 s and TPOT ≤ 200 ms. Failed: errors, "
        f"and requests without a first token after {c.ttft_timeout:g} s (the client gives up; "
        "such requests enter the TTFT percentiles at that value, a lower bound).",
        f"- Sweep wall time: {result.wall_seconds:.0f} s.",
        "",
        (
            "Measured capacity (every backend saturated directly, closed loop):"
            if c.capacity_from is None
            else f"Capacity (every backend saturated directly, closed loop), as measured by the "
            f"sweep of `{c.capacity_from}` (reused, so that both ran the same arrival rates):"
        ),
        "",
        "| workload | req/s | output tok/s | mean output tokens |",
        "|---|---:|---:|---:|",
    ]


def _percent(values: list[float]) -> str:
    """``23%`` for one value; ``23% [22%-24%]`` (median, range) for several."""
    found = spread(values)
    if found is None:
        return "-"
    if found.n == 1:
        return f"{found.median:.0%}"
    return f"{found.median:.0%} [{found.low:.0%}{_TO}{found.high:.0%}]"


def _prefix_lines(result: SweepResult) -> list[str]:
    lines = []
    for key, per_seed in sorted(result.prefix_profiles.items()):
        systems = [system for system, _ in per_seed.values()]
        ideals = [ideal for _, ideal in per_seed.values()]
        over = f" (median over {len(per_seed)} seeds [min{_TO}max])" if len(per_seed) > 1 else ""
        lines += [
            "",
            f"{key} prompts{over}: {_percent(systems)} of prompt tokens are shared system "
            "prompts; an ideal affinity router (each conversation on one backend, unbounded "
            f"cache) could serve {_percent(ideals)} from the prefix cache.",
        ]
    return lines


def markdown(result: SweepResult) -> str:
    lines = _header(result)
    for name, cap in sorted(result.capacities.items()):
        lines.append(
            f"| {name} | {cap.requests_per_s:.1f} | {cap.tokens_per_s:.0f} | {cap.mean_output:.0f} |"
        )
    lines += _prefix_lines(result)
    lines += ["", "## Results", ""]
    if _multi_seed(result):
        lines += [
            "Per policy and scenario, the median over seeds of every figure; "
            f"`median [min{_TO}max]` "
            "for TTFT p99, TTFT mean, output tok/s, failed % and prefix hit %. Every run is in "
            "*Per-seed runs* below.",
            "",
        ]
    lines += [*results_table(result), ""]
    comparisons = _comparisons(result)
    if comparisons:
        ref = comparisons[0].reference
        lines += [f"## {ref} against the others", "", *comparison_lines(result, comparisons), ""]
    if result.summaries:
        lines += [
            "## Where the fleet held its requests",
            "",
            "Per GPU class: requests in flight per engine, averaged over the measured window "
            "(client side), and in brackets the class's share of the window's dispatches; "
            "medians over seeds. At overload the fleet's throughput is the sum of each "
            "engine's batch over its step time, so the split of the work between the classes "
            "is what separates the policies' output tok/s.",
            "",
            *placement_table(result),
            "",
        ]
    if _multi_seed(result):
        lines += ["## Per-seed runs", "", *per_seed_table(result), ""]
    straggler = straggler_table(result)
    if straggler:
        lines += ["## Straggler", "", *straggler, ""]
    if result.summaries:
        lines += ["## CPU", "", *cpu_lines(result), ""]
    if result.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in result.notes], ""]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _comparisons(result: SweepResult) -> list[ScenarioComparison]:
    return compare(aggregate(result.summaries), result.prefix_profiles)


def to_json(result: SweepResult) -> dict[str, Any]:
    """Everything: the configuration, every run (with its seed), the medians and spreads per
    (policy, scenario) ("aggregates") and auto against the others ("comparison")."""
    aggregates = aggregate(result.summaries)
    return {
        "command": result.command,
        "machine": result.machine,
        "config": {**_plain(result.config), "budget_seconds": result.config.budget_seconds},
        "wall_seconds": result.wall_seconds,
        "capacities": _plain(result.capacities),
        "prefix_profiles": _plain(result.prefix_profiles),
        "runs": [_plain(s) for s in result.summaries],
        "aggregates": [_plain(a) for a in aggregates],
        "comparison": [_plain(c) for c in compare(aggregates, result.prefix_profiles)],
        "stragglers": [_plain(r) for r in result.stragglers],
        "notes": list(result.notes),
    }


def write_reports(result: SweepResult) -> tuple[Path, Path]:
    out = result.config.out
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "routing.md", out / "routing.json"
    md.write_text(markdown(result) + "\n")
    js.write_text(json.dumps(to_json(result), indent=1) + "\n")
    return md, js
