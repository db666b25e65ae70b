"""CPU per request of the telemetry observers and per chunk of secret scrubbing.

    .venv/bin/python loadtests/telemetry_cost.py

Runs GatewayMetrics' five attempt/request callbacks on a synthetic streamed request (minus the
cost of building the attempt and record themselves), and Redactor.data on a typical chunk
with three configured secrets. Medians of five runs.
"""

from __future__ import annotations

import random
import time

from aigw.configfile import parse_config
from aigw.fleet.attempt import Attempt
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.redaction import Redactor
from aigw.routing.router import Router
from aigw.telemetry.metrics import GatewayMetrics
from aigw.telemetry.records import RequestRecord
from aigw.types import Endpoint, RouteContext, Usage

cfg = parse_config(
    {
        "models": [
            {
                "name": "m",
                "deployments": [
                    {
                        "id": "d",
                        "base_url": "http://127.0.0.1:9/v1",
                        "model": "x",
                        "metrics_url": "http://127.0.0.1:9/metrics",
                    }
                ],
            }
        ]
    }
)
router = Router(cfg, time.monotonic, random.Random(0), MODEL_AWARE_FILTERS)
dep = router.deployments["d"]
m = GatewayMetrics([dep], {"m": "auto"}, lambda name: 0, time.monotonic)
ctx = RouteContext(Endpoint.CHAT, "m", {"stream": True})
N = 50000


def run():
    t0 = time.process_time()
    for _ in range(N):
        a = Attempt(dep, ctx, 1, 1.0, queued_s=0.0)
        a.first_byte_at = 1.05
        a.last_byte_at = 1.5
        a.usage = Usage(20, 10)
        m.on_dispatch(a)
        m.on_first_byte(a)
        m.on_success(a)
        m.on_finish(a)
        r = RequestRecord("chat/completions", 0.9)
        r.model = "m"
        r.attempt = a
        r.finished_at = 1.6
        m.on_request(r)
    return (time.process_time() - t0) / N * 1e6


def base():
    t0 = time.process_time()
    for _ in range(N):
        a = Attempt(dep, ctx, 1, 1.0, queued_s=0.0)
        a.first_byte_at = 1.05
        a.last_byte_at = 1.5
        a.usage = Usage(20, 10)
        r = RequestRecord("chat/completions", 0.9)
        r.model = "m"
        r.attempt = a
        r.finished_at = 1.6
    return (time.process_time() - t0) / N * 1e6


print(
    f"metrics observer: {sorted(run() for _ in range(5))[2] - sorted(base() for _ in range(5))[2]:.2f} CPU-us per request"
)
red = Redactor.of(["sk-provider-0123456789", "header-token-xyz", "admin-key-123456"])
chunk = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hello"}}]}\n\n'
t0 = time.process_time()
for _ in range(200000):
    red.data(chunk)
print(f"redactor, 3 secrets: {(time.process_time() - t0) / 200000 * 1e6:.3f} CPU-us per chunk")
