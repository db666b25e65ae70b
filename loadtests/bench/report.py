"""The sweep's report: one Markdown file (tables) and one JSON file (everything)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .stats import RunSummary
from .sweep import ALL_POLICIES, SweepResult

__all__ = ["markdown", "to_json", "write_reports"]


def _f(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _trio(a: float | None, b: float | None, c: float | None, digits: int = 2) -> str:
    return " / ".join(_f(v, digits) for v in (a, b, c))


def _order(s: RunSummary) -> tuple[Any, ...]:
    rank = ALL_POLICIES.index(s.policy) if s.policy in ALL_POLICIES else len(ALL_POLICIES)
    return (s.workload, s.arrival, s.load, rank)


def results_table(result: SweepResult) -> list[str]:
    rows = [
        "| policy | workload | arrivals | load | req/s | TTFT p50 / p90 / p99 (s) | TTFT mean (s) "
        "| TPOT p50 / p99 (ms) | E2E p50 / p99 (s) | out tok/s | goodput (req/s) | failed % "
        "| prefix hit % | in-flight max/mean |",
        "|---|---|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    factor = f"{result.config.straggler_factor:g}"
    for s in sorted(result.summaries, key=lambda s: (s.straggler, *_order(s))):
        rows.append(_row(s, f" + x{factor} straggler" if s.straggler else ""))
    return rows


def _row(s: RunSummary, suffix: str = "") -> str:
    tpot = f"{_f(s.tpot_p50, 0, 1000)} / {_f(s.tpot_p99, 0, 1000)}"
    hit = _f(s.prefix_hit_rate, 1, 100)
    return (
        f"| {s.policy} | {s.workload} | {s.arrival}{suffix} | {s.load:.0%} | {s.rate:.1f} "
        f"| {_trio(s.ttft_p50, s.ttft_p90, s.ttft_p99)} | {_f(s.ttft_mean)} | {tpot} "
        f"| {_f(s.e2e_p50, 1)} / {_f(s.e2e_p99, 1)} | {s.output_tokens_per_s:.0f} "
        f"| {s.goodput:.1f} | {s.failed_pct:.1f} | {hit} | {_f(s.imbalance_mean)} |"
    )


def straggler_table(result: SweepResult) -> list[str]:
    if not result.stragglers:
        return []
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
        "| policy | share before | 0-2 s after | 2-5 s after | last 5 s | below fair/2 after (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result.stragglers:
        moved = "not within the run" if r.seconds_to_move is None else f"{r.seconds_to_move:.0f}"
        rows.append(
            f"| {r.policy} | {_f(r.share_before, 3)} | {_f(r.share_0_2s, 3)} "
            f"| {_f(r.share_2_5s, 3)} | {_f(r.share_last_5s, 3)} | {moved} |"
        )
    return rows


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
    return out


def markdown(result: SweepResult) -> str:
    c = result.config
    m = result.machine
    scale = c.time_scale
    lines = [
        "# Routing benchmark results",
        "",
        f"- Command: `{result.command}`",
        f"- Machine: {m.get('cpus')} CPUs ({m.get('cpu_model') or 'unknown model'}), "
        f"{m.get('memory_gib')} GiB, Python {m.get('python')}",
        f"- Fleet: {', '.join(c.profiles)} (simulated, `aigw.sim`), seed {c.seed}",
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
        "Measured capacity (every backend saturated directly, closed loop):",
        "",
        "| workload | req/s | output tok/s | mean output tokens |",
        "|---|---:|---:|---:|",
    ]
    for name, cap in sorted(result.capacities.items()):
        lines.append(
            f"| {name} | {cap.requests_per_s:.1f} | {cap.tokens_per_s:.0f} | {cap.mean_output:.0f} |"
        )
    for key, (system, ideal) in sorted(result.prefix_profiles.items()):
        lines += [
            "",
            f"{key} prompts: {system:.0%} of prompt tokens are shared system prompts; an ideal "
            f"affinity router (each conversation on one backend, unbounded cache) could serve "
            f"{ideal:.0%} from the prefix cache.",
        ]
    lines += ["", "## Results", "", *results_table(result), ""]
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


def to_json(result: SweepResult) -> dict[str, Any]:
    return {
        "command": result.command,
        "machine": result.machine,
        "config": _plain(result.config),
        "wall_seconds": result.wall_seconds,
        "capacities": _plain(result.capacities),
        "prefix_profiles": _plain(result.prefix_profiles),
        "runs": [_plain(s) for s in result.summaries],
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
