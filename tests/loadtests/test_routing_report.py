"""The routing benchmark's reports over seeds, its run order and its seed options.

Hand-built results (loadtests.bench.report, sweep, routing_bench's CLI): no process, no socket.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.bench.capacity import Capacity, CapacityFileError, load_capacities
from loadtests.bench.report import markdown, to_json
from loadtests.bench.runner import CpuUsage
from loadtests.bench.stats import RunSummary
from loadtests.bench.sweep import (
    Scenario,
    SweepConfig,
    SweepResult,
    estimate_wall_seconds,
    run_order,
)
from loadtests.routing_bench import build_config, parser

from .summaries import run

SCENARIOS = (Scenario("W1", "poisson", 0.8), Scenario("W1", "poisson", 0.8, straggler=True))


def result_of(summaries: list[RunSummary], seeds: tuple[int, ...]) -> SweepResult:
    config = SweepConfig(
        policies=("least-connections", "auto"), scenarios=SCENARIOS, out=Path("."), seeds=seeds
    )
    capacity = Capacity("W1", 9000.0, {"h100-0": 4500.0}, 340.0, 26.5, CpuUsage(1, 1, 1, 1))
    result = SweepResult(config, "test", {"cpus": 2}, capacities={"W1": capacity})
    result.summaries.extend(summaries)
    return result


def plain(markdown_text: str) -> str:
    """The report with its range dashes (en dashes) as hyphens, for readable assertions."""
    assert "\u2013" in markdown_text
    return markdown_text.replace("\u2013", "-")


def lines_under(text: str, heading: str) -> list[str]:
    """The lines of the section under ``heading``, up to the next heading."""
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("\n## ", 1)[0].strip().splitlines()


def test_one_seed_prints_the_runs_as_before_without_spreads() -> None:
    summaries = [run(policy="least-connections", ttft_p99=0.6), run(policy="auto")]
    text = plain(markdown(result_of(summaries, (1,))))

    assert "(simulated, `aigw.sim`), seed 1\n" in text
    assert "| auto | W1 | poisson | 80% | 10.0 | 0.10 / 0.20 / 0.50 | 0.15 | 30 / 40 " in text
    assert "| 5.0 / 9.0 | 7000 | 9.5 | 0.0 | 1.0 | 1.20 |" in text
    assert "[" not in "\n".join(lines_under(text, "## Results"))
    assert "## Per-seed runs" not in text
    comparison = lines_under(text, "## auto against the others")
    assert "single runs" in comparison[0]  # the one-seed caveat
    assert any(
        line.startswith("| W1/poisson/80% | least-connections | 0.500 [0.500-0.500] / 0.600")
        and "| better |" in line
        for line in comparison
    )


def test_several_seeds_give_medians_spreads_and_per_seed_rows() -> None:
    summaries = [
        run(policy=policy, seed=seed, ttft_p99=p99, output_tokens_per_s=tok)
        for seed, (lc, auto, tok) in enumerate([(0.9, 0.5, 7000), (1.1, 0.7, 7200)], 1)
        for policy, p99 in (("least-connections", lc), ("auto", auto))
    ]
    summaries.append(run(policy="auto", seed=1, straggler=True, ttft_p99=3.0))
    text = plain(markdown(result_of(summaries, (1, 2))))

    assert "seeds 1, 2 (the fleet and the capacity measurements: seed 1)" in text
    results = lines_under(text, "## Results")
    assert results[2].startswith("| policy | workload | arrivals | load | seeds | req/s |")
    assert any(
        line.startswith("| auto | W1 | poisson | 80% | 2 | 10.0 | 0.10 / 0.20 / 0.60 [0.50-0.70]")
        and "| 7100 [7000-7200] |" in line
        for line in results
    )
    assert any(
        line.startswith("| auto | W1 | poisson + x3 straggler | 80% | 1 |") for line in results
    )
    per_seed = lines_under(text, "## Per-seed runs")
    assert len([line for line in per_seed if line.startswith("| auto | W1 | poisson | 80% |")]) == 2
    assert any(
        line.startswith("| auto | W1 | poisson | 80% | 2 | 10.0 | 0.10 / 0.20 / 0.70 |")
        for line in per_seed
    )
    comparison = "\n".join(lines_under(text, "## auto against the others"))
    assert (
        "| W1/poisson/80% | least-connections | 0.600 [0.500-0.700] / 1.000 [0.900-1.100] | 0.60 "
        "| better |" in comparison
    )
    assert "| W1/poisson/80% | 7100 | auto | 7100 | +0.0% |" in comparison


def test_where_the_fleet_held_its_requests_is_reported_per_gpu_class() -> None:
    # Two h100s averaging 50 and 70 in flight (60 per engine) on seed 1, 80 on seed 2: the
    # median over seeds is 70; the l4 holds 10 and 30 (median 20).
    held = [
        (
            {"h100-0": 50.0, "h100-1": 70.0, "l4-0": 10.0},
            {"h100-0": 0.4, "h100-1": 0.5, "l4-0": 0.1},
        ),
        (
            {"h100-0": 80.0, "h100-1": 80.0, "l4-0": 30.0},
            {"h100-0": 0.4, "h100-1": 0.3, "l4-0": 0.3},
        ),
    ]
    summaries = [
        run(policy="auto", seed=seed, in_flight_mean=flights, dispatch_share=shares)
        for seed, (flights, shares) in enumerate(held, 1)
    ]
    summaries.append(run(policy="least-connections", seed=1))
    text = plain(markdown(result_of(summaries, (1, 2))))

    table = lines_under(text, "## Where the fleet held its requests")
    assert "| policy | workload | arrivals | load | h100: in flight per engine (share) " in text
    assert "| auto | W1 | poisson | 80% | 70.0 (80%) | - | 20.0 (20%) |" in table
    assert "| least-connections | W1 | poisson | 80% | 40.0 (50%) | - | 10.0 (50%) |" in table
    # the policies in the main table's order
    rows = [line for line in table if line.startswith(("| least-connections", "| auto"))]
    assert [r.split(" | ")[0] for r in rows] == ["| least-connections", "| auto"]


def test_json_keeps_every_run_with_its_seed_and_the_comparison() -> None:
    summaries = [
        run(policy=policy, seed=seed, workload="W2", ttft_p99=p99, prefix_hit_rate=hit)
        for seed in (1, 2)
        for policy, p99, hit in (("round-robin", 1.0, 0.2), ("auto", 1.0 + seed / 10, 0.6))
    ]
    result = result_of(summaries, (1, 2))
    result.prefix_profiles["W2/poisson/80%"] = {1: (0.2, 0.8), 2: (0.3, 0.8)}
    data = to_json(result)

    assert [(r["policy"], r["seed"]) for r in data["runs"]] == [
        ("round-robin", 1),
        ("auto", 1),
        ("round-robin", 2),
        ("auto", 2),
    ]
    assert data["config"]["seeds"] == [1, 2]
    assert data["config"]["budget_seconds"] == 1800.0
    assert data["prefix_profiles"]["W2/poisson/80%"]["2"] == [0.3, 0.8]
    [scenario] = data["comparison"]
    assert scenario["scenario"]["workload"] == "W2"
    [rr] = scenario["against"]
    assert rr["policy"] == "round-robin"
    assert rr["ttft_p99"]["verdict"] == "worse"
    assert rr["ttft_p99"]["reference"] == {"median": 1.15, "low": 1.1, "high": 1.2, "n": 2}
    assert scenario["prefix"]["over_baseline"] == pytest.approx(3.0)
    assert scenario["prefix"]["over_ideal"] == pytest.approx(0.75)
    text = plain(markdown(result))
    assert "W2/poisson/80% prompts (median over 2 seeds [min-max]): 25% [20%-30%]" in text
    assert "| W2/poisson/80% | 60.0 | 20.0 | 3.00 | 80.0 | 0.75 |" in text


def test_runs_go_seed_by_seed_scenario_by_scenario_policies_adjacent() -> None:
    config = SweepConfig(policies=("a", "b"), scenarios=SCENARIOS, out=Path("."), seeds=(3, 5))
    order = run_order(config, config.policies)
    assert [(seed, sc.straggler, p) for seed, sc, p in order] == [
        (3, False, "a"),
        (3, False, "b"),
        (3, True, "a"),
        (3, True, "b"),
        (5, False, "a"),
        (5, False, "b"),
        (5, True, "a"),
        (5, True, "b"),
    ]
    assert config.fleet_seed == 3
    # capacity is measured once; the runs are paid once per seed
    one = SweepConfig(policies=("a", "b"), scenarios=SCENARIOS, out=Path("."), seeds=(3,))
    runs_once = estimate_wall_seconds(one) - estimate_wall_seconds(
        SweepConfig(policies=(), scenarios=SCENARIOS, out=Path("."), seeds=(3,))
    )
    assert estimate_wall_seconds(config) - estimate_wall_seconds(one) == pytest.approx(runs_once)
    assert config.budget_seconds == 1800.0
    assert SweepConfig((), (), Path("."), seeds=(1, 2), budget=60.0).budget_seconds == 60.0
    with pytest.raises(ValueError, match="distinct"):
        SweepConfig((), (), Path("."), seeds=(1, 1))
    with pytest.raises(ValueError, match="at least one"):
        SweepConfig((), (), Path("."), seeds=())


@pytest.mark.parametrize(
    ("argv", "seeds"),
    [
        ([], (1,)),
        (["--seed", "5"], (5,)),
        (["--seeds", "3"], (1, 2, 3)),
        (["--seeds", "2,7"], (2, 7)),
        (["--seeds", "7,"], (7,)),
    ],
)
def test_seed_options(argv: list[str], seeds: tuple[int, ...]) -> None:
    assert build_config(parser().parse_args(argv)).seeds == seeds


@pytest.mark.parametrize(
    "argv",
    [["--seeds", "0"], ["--seeds", "1,1"], ["--seeds", "x"], ["--seed", "1", "--seeds", "2"]],
)
def test_bad_seed_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)


def test_quick_compares_auto_with_least_connections() -> None:
    config = build_config(parser().parse_args(["--quick", "--seeds", "2"]))
    assert config.policies == ("round-robin", "least-connections", "auto")
    assert [(s.workload, s.load, s.straggler) for s in config.scenarios] == [
        ("W1", 0.8, False),
        ("W1", 0.8, True),
    ]
    assert config.budget_seconds == 1800.0


def test_runs_that_used_most_of_the_machine_are_named_in_the_cpu_section() -> None:
    quiet = run(seed=1, cpu_pct={"fleet": 50.0, "gateway": 60.0, "loadgen": 20.0})  # 65%
    busy = run(seed=2, cpu_pct={"fleet": 78.0, "gateway": 85.0, "loadgen": 21.0})  # 92%
    cpu = lines_under(markdown(result_of([quiet, busy], (1, 2))), "## CPU")
    assert "- all of them together: at most 92% of the machine's 2 cores during a run" in cpu
    assert any(
        line.startswith(
            "- **1 of 2 runs used 85% or more of the machine** (auto W1/poisson/80% seed 2)"
        )
        for line in cpu
    )
    calm = lines_under(markdown(result_of([quiet], (1,))), "## CPU")
    assert not any("or more of the machine" in line for line in calm)


def test_runs_whose_gateway_loop_was_saturated_are_named_in_the_cpu_section() -> None:
    calm = run(seed=1, cpu_pct={"fleet": 30.0, "gateway": 69.0, "loadgen": 10.0})
    bound = run(seed=2, cpu_pct={"fleet": 30.0, "gateway": 72.0, "loadgen": 10.0})  # 56% in all
    cpu = lines_under(markdown(result_of([calm, bound], (1, 2))), "## CPU")
    assert not any("or more of the machine" in line for line in cpu)
    assert any(
        line.startswith(
            "- **1 of 2 runs had the gateway's event loop busy 70% or more of the time** "
            "(auto W1/poisson/80% seed 2)"
        )
        for line in cpu
    )
    assert not any(
        "event loop" in line for line in lines_under(markdown(result_of([calm], (1,))), "## CPU")
    )


def _saved_report(tmp_path: Path, profiles: tuple[str, ...] = ("h100", "l4")) -> Path:
    """A routing.json as a sweep writes it, with the W1 capacity of ``result_of``."""
    result = result_of([run(policy="auto")], (1,))
    result.config = replace(result.config, profiles=profiles)
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(to_json(result)))
    return path


def test_capacities_are_read_back_from_an_earlier_report(tmp_path: Path) -> None:
    path = _saved_report(tmp_path)
    [(name, capacity)] = load_capacities(path, ["W1"], ("h100", "l4"), 0.5).items()
    assert name == "W1"
    assert capacity == Capacity("W1", 9000.0, {"h100-0": 4500.0}, 340.0, 26.5, CpuUsage(1, 1, 1, 1))


@pytest.mark.parametrize(
    ("workloads", "profiles", "scale", "problem"),
    [
        (["W1", "W3"], ("h100", "l4"), 0.5, "no capacity measured for W3"),
        (["W1"], ("h100", "h100"), 0.5, "this sweep's is ['h100', 'h100']"),
        (["W1"], ("h100", "l4"), 1.0, "measured at time scale 0.5, this sweep's is 1.0"),
    ],
)
def test_capacities_from_another_fleet_or_workload_are_refused(
    tmp_path: Path, workloads: list[str], profiles: tuple[str, ...], scale: float, problem: str
) -> None:
    path = _saved_report(tmp_path)
    with pytest.raises(CapacityFileError, match=re.escape(f"{path}: ") + ".*" + re.escape(problem)):
        load_capacities(path, workloads, profiles, scale)


def test_capacity_from_option_checks_the_file_before_anything_starts(tmp_path: Path) -> None:
    path = _saved_report(tmp_path, profiles=SweepConfig((), (), Path(".")).profiles)
    config = build_config(parser().parse_args(["--workloads", "W1", "--capacity-from", str(path)]))
    assert config.capacity_from == path
    measuring = build_config(parser().parse_args(["--workloads", "W1"]))
    # the capacity measurement's share of the estimate is gone
    assert estimate_wall_seconds(config) < estimate_wall_seconds(measuring) - 5
    text = markdown(replace(result_of([run(policy="auto")], (1,)), config=config))
    assert f"as measured by the sweep of `{path}`" in text
    assert "Measured capacity" not in text

    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(SystemExit, match=r"--capacity-from: .*junk\.json: not a routing benchmark"):
        build_config(parser().parse_args(["--capacity-from", str(tmp_path / "junk.json")]))
    with pytest.raises(SystemExit, match="no capacity measured for W3"):
        build_config(parser().parse_args(["--workloads", "W3", "--capacity-from", str(path)]))
