"""The proxy benchmark's parsing and its overhead table (no processes)."""

from __future__ import annotations

import math

from loadtests.proxy_cpu import Measured, table_markdown, wrk_latencies

WRK = """Running 5s test @ http://127.0.0.1:8000/v1/chat/completions
  Latency Distribution
     50%  310.00us
     75%    1.20ms
     90%    2.10ms
     99%   1.23s
  9000 requests in 5.00s, 2.00MB read
"""


def test_wrk_latency_percentiles_in_ms() -> None:
    assert wrk_latencies(WRK) == {"p50": 0.31, "p99": 1230.0}
    assert wrk_latencies("no distribution printed") == {}


def run(server: str, cpu: float, p50: float, p99: float, requests: int = 1000) -> Measured:
    return Measured(server, requests, 0, "", cpu, 0.0, 5.0, p50, p99)


def test_table_gives_medians_the_ratio_to_bare_and_the_latency_added_to_direct() -> None:
    runs = {
        (False, 1, "direct"): [run("direct", math.nan, 0.10, 0.20)] * 3,
        (False, 1, "bare"): [run("bare", 200, 0.30, 0.60), run("bare", 220, 0.40, 0.90)],
        (False, 1, "aigw"): [run("aigw", 300, 0.50, 1.00), run("aigw", 340, 0.70, 1.40)],
    }
    rows = table_markdown(runs).splitlines()
    assert rows[2].startswith("| JSON | 1 | direct | 200 | 0.10 | 0.20 | - | - | - |")
    assert "| 210 | - | +0.25 / +0.55 |" in rows[3]  # bare: median CPU, added latency
    assert "| 320 | 1.52x | +0.50 / +1.00 |" in rows[4]  # aigw: 320 / 210
