"""Hypothesis strategies: fleets in arbitrary live states, and requests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from aigw.config import ModelConfig
from aigw.fleet.deployment import Deployment
from aigw.fleet.signals import EngineSnapshot
from aigw.types import RouteContext
from tests.policies.conftest import cloud, fleet, gpu, request

BLOCKS = tuple(range(1001, 1033))  # a pool of prefix block hashes


@st.composite
def fleets(
    draw: st.DrawFn, min_size: int = 1, max_size: int = 8
) -> tuple[ModelConfig, list[Deployment]]:
    count = draw(st.integers(min_size, max_size))
    specs: list[dict[str, Any]] = []
    for i in range(count):
        extra: dict[str, Any] = {
            "weight": draw(st.sampled_from([0.5, 1, 2, 3])),
            "cost": {
                "input_per_mtok": draw(st.sampled_from([0, 0.5, 3])),
                "output_per_mtok": draw(st.sampled_from([0, 1.5, 15])),
            },
        }
        if draw(st.booleans()):
            extra["max_concurrency"] = draw(st.integers(1, 64))
        extra["region"] = draw(st.sampled_from([None, "eu", "us"]))
        extra["tags"] = draw(st.lists(st.sampled_from(["fast", "h100"]), unique=True))
        extra["lora_adapters"] = draw(st.lists(st.sampled_from(["sql"]), max_size=1))
        extra["context_window"] = draw(st.none() | st.integers(100, 30000))
        if draw(st.booleans()):
            if draw(st.booleans()):
                extra["decode_step"] = {
                    "base_ms": draw(st.floats(1, 100)),
                    "per_seq_ms": draw(st.floats(0, 5)),
                }
            specs.append(gpu(f"g{i}", **extra))
        else:
            specs.append(cloud(f"c{i}", **extra))
    slo = draw(st.none() | st.floats(10, 5000))
    ceiling = draw(st.none() | st.floats(0, 20))
    model, deployments = fleet(*specs, slo_ttft_ms=slo, spillover={"max_cost_per_mtok": ceiling})
    for d in deployments:
        state = d.state
        state.in_flight = draw(st.integers(0, 40))
        if draw(st.booleans()):
            state.engine = EngineSnapshot(
                scraped_at=0.0,
                waiting=draw(st.sampled_from([0.0, 0.0, 1.0, 7.0, 50.0])),
                running=draw(st.sampled_from([0.0, 1.0, 8.0, 64.0])),
                kv_usage=draw(st.none() | st.floats(0, 1)),
                in_flight_at_scrape=draw(st.integers(0, 40)),
            )
            state.engine_stale = draw(st.booleans())
        state.draining = draw(st.booleans())
        for ewma in (state.ttft, state.tpot, state.output_tokens):
            if draw(st.booleans()):
                ewma.add(draw(st.floats(0.0001, 5)))
        if draw(st.booleans()):
            state.prefill_per_token.add(draw(st.floats(0, 5)), draw(st.integers(1, 10_000)))
        if draw(st.booleans()):
            state.latency.add(draw(st.floats(0.001, 5)), 0.0)
        if draw(st.booleans()):
            state.errors.add(draw(st.sampled_from([0.0, 1.0])))
        state.prefixes.add(BLOCKS[: draw(st.integers(0, len(BLOCKS)))])
    return model, deployments


@st.composite
def requests(draw: st.DrawFn) -> RouteContext:
    blocks = BLOCKS[: draw(st.integers(0, len(BLOCKS)))]
    key = draw(st.sampled_from(blocks)) if blocks and draw(st.booleans()) else None
    return request(
        prompt_tokens=draw(st.integers(0, 20000)),
        max_tokens=draw(st.none() | st.integers(1, 4000)),
        prefix_blocks=blocks,
        affinity_key=key,
        hash_key=draw(st.none() | st.text(max_size=8)),
        region=draw(st.sampled_from([None, "eu", "us"])),
        tags=draw(st.frozensets(st.sampled_from(["fast", "h100"]))),
        adapter=draw(st.sampled_from([None, "sql"])),
    )
