from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.policies import POLICIES, make_policy, policy_problems
from aigw.policies.policy import ScoredPolicy
from aigw.policies.presets import parse_policy
from tests.policies.conftest import cloud, dispatch, fleet, gpu, gpus, policy, request, scrape
from tests.policies.strategies import fleets, requests

BLOCKS = tuple(range(1, 17))


def test_the_preset_table() -> None:
    assert list(POLICIES) == [
        "round-robin",
        "weighted",
        "random",
        "hash",
        "least-connections",
        "least-latency",
        "cost",
        "gpu-aware",
        "auto",
    ]


@settings(max_examples=40, deadline=None)
@given(fleets(), requests(), st.sampled_from(sorted(POLICIES)), st.integers(0, 9))
def test_every_preset_returns_one_of_the_candidates(fm, ctx, name, seed) -> None:  # type: ignore[no-untyped-def]
    model, deps = fm
    p = make_policy(name, model, random.Random(seed))
    for _ in range(3):
        chosen = p.pick(deps, ctx)
        assert chosen in deps
        dispatch(chosen, ctx)


@settings(max_examples=25, deadline=None)
@given(fleets(), requests(), st.sampled_from(["least-connections", "cost", "gpu-aware", "auto"]))
def test_scored_presets_record_why_and_the_winner_has_the_best_total(fm, ctx, name) -> None:  # type: ignore[no-untyped-def]
    model, deps = fm
    for d in deps:
        d.state.last_scores = {}
    chosen = make_policy(name, model, random.Random(0)).pick(deps, ctx)
    scored = [d for d in deps if "total" in d.state.last_scores]
    assert chosen in scored
    assert (
        chosen.state.last_scores["total"]
        >= max(d.state.last_scores["total"] for d in scored) - 1e-9
    )
    for d in scored:
        assert all(
            -1e-9 <= v <= 1.0 + 1e-9  # a weighted sum may round past 1
            for k, v in d.state.last_scores.items()
            if k != "predicted_ttft_s"
        )


def test_policy_problems_name_every_mistake() -> None:
    assert policy_problems("auto") == []
    assert policy_problems({"name": "gpu-aware", "weights": {"prefix": 3}, "picker": "p2c"}) == []
    assert policy_problems({"name": "hash", "load_factor": 1.5, "virtual_nodes": 40}) == []
    [unknown] = policy_problems("fastest")
    assert "unknown policy 'fastest'" in unknown and "auto" in unknown
    problems = policy_problems(
        {"name": "auto", "weights": {"speed": 1, "cost": -1}, "colour": "red", "tpot_s": 0}
    )
    assert len(problems) == 4
    assert any(p.startswith("weights.speed: unknown scorer") for p in problems)
    assert any(p.startswith("weights.cost: expected a non-negative number") for p in problems)
    assert any(p.startswith("colour: unknown parameter for policy 'auto'") for p in problems)
    assert any(p.startswith("tpot_s: expected a positive number") for p in problems)
    assert policy_problems({"name": "round-robin", "weights": {"cost": 1}}) == [
        "weights: policy 'round-robin' uses no scorers, so takes no weights"
    ]
    assert policy_problems({"name": "random", "load_factor": 2})[0].startswith(
        "load_factor: unknown"
    )
    assert policy_problems({"name": "cost", "picker": "hash"}) == [
        "picker: expected one of argmax, p2c (got 'hash')"
    ]
    assert policy_problems({"name": "cost", "weights": {"cost": 0, "in-flight": 0}}) == [
        "weights: at least one scorer needs a positive weight"
    ]
    assert policy_problems({"weights": {}})[0].startswith("name: unknown policy None")
    assert policy_problems(["auto"])[0].startswith("expected a preset name or a mapping")


def test_make_policy_rejects_what_policy_problems_reports() -> None:
    model, _ = gpus(1)
    with pytest.raises(ValueError, match="unknown scorer"):
        make_policy({"name": "auto", "weights": {"speed": 1}}, model, random.Random(0))


def test_weights_merge_over_the_preset() -> None:
    settings_, _ = parse_policy({"name": "gpu-aware", "weights": {"prefix": 0, "errors": 2}})
    assert settings_ is not None
    assert dict(settings_.weights) == {"queue": 2.0, "running": 1.0, "kv-cache": 1.0, "errors": 2.0}
    model, _ = gpus(1)
    built = make_policy(
        {"name": "gpu-aware", "weights": {"prefix": 0, "errors": 2}}, model, random.Random(0)
    )
    assert isinstance(built, ScoredPolicy)
    assert built.weights == pytest.approx(
        {"queue": 1 / 3, "running": 1 / 6, "kv-cache": 1 / 6, "errors": 1 / 3}
    )


def test_params_reach_the_tuning() -> None:
    settings_, _ = parse_policy({"name": "auto", "kv_threshold": 0.8, "picker": "p2c"})
    assert settings_ is not None
    assert settings_.tuning.kv_threshold == 0.8 and settings_.picker == "p2c"
    assert parse_policy("least-latency")[0].picker == "p2c"  # type: ignore[union-attr]


def test_round_robin_and_weighted_presets() -> None:
    model, deps = fleet(gpu("a", weight=3), gpu("b"))
    rr = policy("round-robin", model)
    assert Counter(rr.pick(deps, request()).id for _ in range(10)) == {"a": 5, "b": 5}
    weighted = policy("weighted", model)
    assert Counter(weighted.pick(deps, request()).id for _ in range(100)) == {"a": 75, "b": 25}


def test_least_connections_picks_the_fewest_in_flight() -> None:
    model, deps = gpus(3)
    for d, n in zip(deps, [3, 1, 2], strict=True):
        d.state.in_flight = n
    assert policy("least-connections", model).pick(deps, request()).id == "g1"
    assert deps[1].state.last_scores == {"in-flight": 1.0, "total": 1.0}


def test_least_latency_prefers_the_fast_deployment() -> None:
    model, deps = gpus(3)
    for d, latency in zip(deps, [0.1, 1.0, 2.0], strict=True):
        d.state.latency.add(latency, 0.0)
    p = policy("least-latency", model)
    counts = Counter(p.pick(deps, request()).id for _ in range(300))
    assert counts["g2"] == 0 and counts["g0"] > counts["g1"]


def test_cost_picks_the_cheapest_even_when_busy_and_ties_by_load() -> None:
    model, deps = fleet(
        cloud("a", cost={"input_per_mtok": 1, "output_per_mtok": 1}),
        cloud("b", cost={"input_per_mtok": 1, "output_per_mtok": 1}),
        cloud("c", cost={"input_per_mtok": 3, "output_per_mtok": 3}),
    )
    deps[0].state.in_flight = 5
    deps[1].state.in_flight = 9
    p = policy("cost", model)
    assert p.pick(deps, request(prompt_tokens=100)).id == "a"
    deps[0].state.in_flight = 10
    assert p.pick(deps, request(prompt_tokens=100)).id == "b"


def test_gpu_aware_prefers_short_queues_and_cached_prefixes() -> None:
    model, deps = gpus(3)
    for d in deps:
        scrape(d, running=6, kv=0.4)
    scrape(deps[0], running=6, waiting=4, kv=0.8)
    p = policy("gpu-aware", model)
    ctx = request(prompt_tokens=1000, prefix_blocks=BLOCKS)
    assert p.pick(deps, ctx).id in ("g1", "g2")
    deps[2].state.prefixes.add(BLOCKS)
    assert p.pick(deps, ctx).id == "g2"
    assert set(deps[2].state.last_scores) == {"queue", "running", "kv-cache", "prefix", "total"}
    scrape(deps[2], running=6, waiting=6, kv=0.95)  # the affine engine is now overloaded
    assert p.pick(deps, ctx).id == "g1"


def test_gpu_aware_spreads_a_burst_between_scrapes() -> None:
    model, deps = gpus(4)
    for d in deps:
        scrape(d)
    p = policy("gpu-aware", model)
    ctx = request(prompt_tokens=500)
    for _ in range(8):
        dispatch(p.pick(deps, ctx), ctx)
    assert [d.state.in_flight for d in deps] == [2, 2, 2, 2]


def test_hash_preset_is_sticky() -> None:
    model, deps = gpus(4)
    p = policy("hash", model)
    ctx = request(hash_key="alice")
    assert len({p.pick(deps, ctx).id for _ in range(20)}) == 1


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_single_candidate_is_always_chosen(name: str) -> None:
    model, deps = gpus(1)
    assert policy(name, model).pick(deps, request(hash_key="k", prefix_blocks=BLOCKS)) is deps[0]
