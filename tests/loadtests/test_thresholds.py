"""loadtests/thresholds.py: the pass/fail rules of a Locust run."""

from __future__ import annotations

import pytest

from loadtests.thresholds import EntryStats, Thresholds, breaches

TTFT = EntryStats("chat (stream) ttft", requests=100, failures=0, p99_ms=120.0)
TOTAL = EntryStats("Aggregated", requests=200, failures=1, p99_ms=900.0)


def test_defaults_pass_a_healthy_run() -> None:
    assert Thresholds.from_env({}) == Thresholds(0.01, 10_000.0, (), 1)
    assert breaches(Thresholds(), TOTAL, [TTFT]) == []


def test_each_rule() -> None:
    strict = Thresholds(max_fail_ratio=0.001, max_p99_ms=500.0, min_requests=1000)
    assert breaches(strict, TOTAL, [TTFT]) == [
        "200 requests, fewer than 1000",
        "failure ratio 0.0050 (1/200) above 0.001",
        "p99 900 ms over all entries, above 500",
    ]


def test_per_entry_limits_and_unknown_entries() -> None:
    thresholds = Thresholds.from_env(
        {"AIGW_MAX_P99_MS": "off", "AIGW_MAX_P99_MS_BY_ENTRY": "chat (stream) ttft=100, nope=5"}
    )
    assert thresholds.max_p99_ms is None
    assert breaches(thresholds, TOTAL, [TTFT]) == [
        "'chat (stream) ttft' p99 120 ms, above 100",
        "'nope' has a p99 limit but recorded no requests",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AIGW_MAX_FAIL_RATIO", "lots"),
        ("AIGW_MAX_P99_MS", "-1"),
        ("AIGW_MAX_P99_MS_BY_ENTRY", "chat"),
        ("AIGW_MAX_P99_MS_BY_ENTRY", "chat=fast"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Thresholds.from_env({name: value})
