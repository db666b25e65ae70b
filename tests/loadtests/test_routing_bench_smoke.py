"""The routing benchmark's machinery end to end, on a tiny fleet and a few simulated seconds.

Real processes and sockets: a fleet of two simulated backends, ``aigw serve`` with
round-robin, the open-loop load generator, the capacity measurement, a straggler run and
both reports. Fails if any piece is broken or produces nonsense numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.bench.report import write_reports
from loadtests.bench.sweep import Scenario, SweepConfig, run_sweep

pytestmark = pytest.mark.timeout(60)


def _ordered(*values: float | None) -> bool:
    present = [v for v in values if v is not None]
    return len(present) == len(values) and present == sorted(present)


async def test_tiny_sweep_reports_sane_numbers(tmp_path: Path) -> None:
    config = SweepConfig(
        policies=("round-robin",),
        scenarios=(
            Scenario("W1", "poisson", 0.5),
            Scenario("W1", "poisson", 0.5, straggler=True),
        ),
        out=tmp_path,
        profiles=("h100", "l4"),
        time_scale=0.5,
        warmup=1.0,
        window=3.0,
        straggler_window=6.0,
        straggler_after=2.0,
        straggler_backend="h100-0",
        capacity_warmup=3.0,  # a cold fleet spends ~2.5 s prefilling the first full batch
        capacity_window=2.0,
        ttft_timeout=5.0,
        fleet_processes=1,
        budget=120.0,
    )
    result = await run_sweep(config, "smoke", log=lambda _: None)

    capacity = result.capacities["W1"]
    assert capacity.tokens_per_s > 0 and capacity.requests_per_s > 0
    assert set(capacity.per_backend) == {"h100-0", "l4-0"}
    assert [s.straggler for s in result.summaries] == [False, True]
    for s in result.summaries:
        assert s.policy == "round-robin"
        assert s.seed == 1
        assert s.requests > 0
        assert s.completed + s.cut > 0
        assert s.failed_pct < 50
        assert _ordered(s.ttft_p50, s.ttft_p90, s.ttft_p99)
        assert s.ttft_mean is not None and 0 < s.ttft_mean < config.ttft_timeout
        assert _ordered(s.tpot_p50, s.tpot_p99)
        assert s.tpot_p50 is not None and 0 < s.tpot_p50 < 1
        assert _ordered(s.e2e_p50, s.e2e_p99)
        assert s.output_tokens_per_s > 0
        assert 0 < s.goodput <= s.rate * 3
        assert s.prefix_hit_rate is not None and 0 <= s.prefix_hit_rate <= 1
        assert s.imbalance_mean is not None and s.imbalance_mean >= 1
        assert sum(s.dispatch_share.values()) == pytest.approx(1.0)
        assert s.dispatch_share["h100-0"] == pytest.approx(0.5, abs=0.1)  # round-robin
        assert set(s.in_flight_mean) == {"h100-0", "l4-0"}
        assert s.in_flight_mean["h100-0"] > 0 and s.in_flight_mean["l4-0"] > 0
        assert s.cpu_pct["loadgen"] > 0 and s.cpu_pct["gateway"] > 0
    [straggler] = result.stragglers
    assert straggler.backend == "h100-0" and straggler.factor == 3.0
    assert straggler.share_before is not None and 0 < straggler.share_before < 1
    assert [b[0] for b in straggler.per_second] == [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    assert sum(n for _, _, n in straggler.per_second) > 0

    markdown, data = write_reports(result)
    text = markdown.read_text()
    assert "| round-robin | W1 | poisson | 50% |" in text
    assert "## Straggler" in text
    assert "| round-robin | W1 | poisson | 50% | " in "\n".join(
        text.split("## Where the fleet held its requests", 1)[1].splitlines()[:12]
    )
    assert "## Per-seed runs" not in text  # one seed: the runs are the main table
    report = json.loads(data.read_text())
    assert len(report["runs"]) == 2
    assert report["capacities"]["W1"]["requests_per_s"] == pytest.approx(capacity.requests_per_s)
    assert (tmp_path / "logs").is_dir()
