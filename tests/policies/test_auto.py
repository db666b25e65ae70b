"""The ``auto`` preset: predicted TTFT, prefix affinity, herding, stale metrics, spillover."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from aigw.fleet.deployment import Deployment
from tests.policies.conftest import cloud, dispatch, fleet, gpu, gpus, policy, request, scrape

BLOCKS = tuple(range(1, 17))
LONG = request(prompt_tokens=4000, prefix_blocks=BLOCKS)  # 0.8 s of prefill when uncached


def picks(spec: Any, model: Any, deps: list[Deployment], ctx: Any, n: int = 20) -> Counter[str]:
    p = policy(spec, model)
    return Counter(p.pick(deps, ctx).id for _ in range(n))


def test_prefers_free_capacity_over_a_queue() -> None:
    model, deps = gpus(2)
    scrape(deps[0], running=8, waiting=3, kv=0.6)
    scrape(deps[1], running=8, waiting=0, kv=0.6)
    assert picks("auto", model, deps, request(prompt_tokens=500)) == {"g1": 20}
    queued, free = (d.state.last_scores["predicted_ttft_s"] for d in deps)
    assert queued > free


def test_affinity_wins_when_loads_are_equal() -> None:
    model, deps = gpus(3)
    for d in deps:
        scrape(d, running=4, kv=0.3)
    deps[2].state.prefixes.add(BLOCKS)
    assert picks("auto", model, deps, LONG) == {"g2": 20}
    assert deps[2].state.last_scores["predicted_ttft_s"] == pytest.approx(0.03 * (1 + 4 / 512))


def test_affinity_yields_when_the_affine_deployment_is_overloaded() -> None:
    model, deps = gpus(3)
    for d in deps:
        scrape(d, running=4, kv=0.3)
    scrape(deps[2], running=8, waiting=4, kv=1.0)  # a queue: seconds, more than 0.8 s prefill
    deps[2].state.prefixes.add(BLOCKS)
    assert "g2" not in picks("auto", model, deps, LONG)


def test_affinity_is_worth_the_prefill_it_saves_and_no_more() -> None:
    model, deps = gpus(2)
    scrape(deps[0])
    scrape(deps[1])
    deps[1].state.prefixes.add(BLOCKS)
    deps[1].state.in_flight = 0
    p = policy("auto", model)
    assert p.pick(deps, LONG) is deps[1]  # 0.8 s of prefill saved
    tiny = request(prompt_tokens=40, prefix_blocks=BLOCKS)
    scrape(deps[1], running=9, waiting=1)  # a short queue costs more than 8 ms of prefill
    assert p.pick(deps, tiny) is deps[0]


def test_in_flight_adjustment_spreads_a_burst_between_scrapes() -> None:
    model, deps = gpus(4)
    for d in deps:
        scrape(d)  # all idle at the last scrape; no new scrape during the burst
    p = policy("auto", model)
    ctx = request(prompt_tokens=800)
    for _ in range(8):
        dispatch(p.pick(deps, ctx), ctx)
    assert [d.state.in_flight for d in deps] == [2, 2, 2, 2]


def test_a_burst_does_not_herd_onto_the_one_that_looked_idle() -> None:
    model, deps = gpus(4)
    scrape(deps[0])
    for d in deps[1:]:
        scrape(d, running=2)
    p = policy("auto", model)
    ctx = request(prompt_tokens=800)
    for _ in range(8):
        dispatch(p.pick(deps, ctx), ctx)
    assert deps[0].state.in_flight <= 4
    assert all(d.state.in_flight >= 1 for d in deps[1:])


def test_stale_metrics_fall_back_to_local_signals() -> None:
    model, deps = gpus(2)
    scrape(deps[0], waiting=40, running=8)  # old news: it has drained since
    scrape(deps[1])  # old news too: the gateway has sent it 12 since
    deps[1].state.in_flight = 12
    for d in deps:
        d.state.engine_stale = True
        d.state.ttft.add(0.3)
    assert picks("auto", model, deps, request(prompt_tokens=500)) == {"g0": 20}
    deps[1].state.engine_stale = False  # the same numbers, trusted: g1 has no queue
    deps[0].state.engine_stale = False
    assert picks("auto", model, deps, request(prompt_tokens=500)) == {"g1": 20}


def spill_fleet(**model: Any) -> tuple[Any, list[Deployment]]:
    model.setdefault("slo_ttft_ms", 1000)
    return fleet(
        gpu("g0"),
        gpu("g1"),
        cloud("cheap", cost={"input_per_mtok": 0.5, "output_per_mtok": 1.5}),
        cloud("pricey", cost={"input_per_mtok": 10, "output_per_mtok": 30}),
        **model,
    )


def overload(deps: list[Deployment]) -> None:
    for d in deps:
        scrape(d, running=8, waiting=8)  # about 8 s predicted: past a 1 s SLO


def test_spills_to_cloud_past_the_slo_and_returns_when_gpus_recover() -> None:
    model, deps = spill_fleet()
    for d in deps[:2]:
        scrape(d, running=4, kv=0.3)
    p = policy("auto", model)
    ctx = request(prompt_tokens=1000)
    assert p.pick(deps, ctx).id in ("g0", "g1")
    assert deps[2].state.last_scores == {
        "predicted_ttft_s": pytest.approx(0.8),
        "eligible": 0.0,
    }
    overload(deps[:2])
    assert p.pick(deps, ctx).id in ("cheap", "pricey")
    assert deps[0].state.last_scores["predicted_ttft_s"] > 1.0
    scrape(deps[1], running=4, kv=0.3)  # one GPU recovers
    assert p.pick(deps, ctx).id == "g1"


def test_spillover_respects_the_cost_ceiling() -> None:
    model, deps = spill_fleet(spillover={"max_cost_per_mtok": 2.0})
    deps[3].state.ttft.add(0.1)  # the pricey cloud is the fastest
    deps[2].state.ttft.add(0.6)
    overload(deps[:2])
    assert picks("auto", model, deps, request(prompt_tokens=1000)) == {"cheap": 20}
    assert deps[3].state.last_scores["eligible"] == 0.0
    model, deps = spill_fleet(spillover={"max_cost_per_mtok": 0.1})
    overload(deps[:2])
    assert set(picks("auto", model, deps, request(prompt_tokens=1000))) <= {"g0", "g1"}


def test_without_the_ceiling_the_fastest_cloud_wins_the_spill() -> None:
    model, deps = spill_fleet()
    deps[3].state.ttft.add(0.1)
    overload(deps[:2])
    assert picks("auto", model, deps, request(prompt_tokens=1000)) == {"pricey": 20}


def test_no_spillover_when_disabled_or_without_an_slo() -> None:
    for model_extra in ({"spillover": {"enabled": False}}, {"slo_ttft_ms": None}):
        model, deps = spill_fleet(**model_extra)
        overload(deps[:2])
        assert set(picks("auto", model, deps, request(prompt_tokens=1000))) <= {"g0", "g1"}


def test_clouds_are_always_eligible_without_gpu_candidates() -> None:
    model, deps = spill_fleet()
    deps[3].state.ttft.add(0.2)
    deps[2].state.ttft.add(0.5)
    # the GPUs are at capacity, so the router passes only the clouds
    assert picks("auto", model, deps[2:], request(prompt_tokens=1000)) == {"pricey": 20}
    only_clouds, clouds = fleet(cloud("a"), cloud("b"), slo_ttft_ms=1)
    clouds[0].state.ttft.add(2.0)
    assert picks("auto", only_clouds, clouds, request()) == {"b": 20}


def test_extra_weights_join_the_prediction() -> None:
    model, deps = fleet(
        gpu("free", cost={"input_per_mtok": 0, "output_per_mtok": 0}),
        gpu("paid", cost={"input_per_mtok": 5, "output_per_mtok": 5}),
    )
    scrape(deps[0], running=30, kv=0.5)  # slightly slower to first token
    scrape(deps[1])
    ctx = request(prompt_tokens=1000)
    assert picks("auto", model, deps, ctx) == {"paid": 20}
    spec = {"name": "auto", "weights": {"cost": 1}}
    assert picks(spec, model, deps, ctx) == {"free": 20}
    assert set(deps[0].state.last_scores) == {
        "ttft",
        "throughput",
        "cost",
        "total",
        "predicted_ttft_s",
    }


def test_affinity_bias_keeps_a_cached_prompt_on_a_somewhat_slower_deployment() -> None:
    """A short prompt saves little prefill, so the prediction alone moves it to a less busy
    deployment (and its cache goes cold); the bias holds it where its prefix is cached while
    the other is predicted less than 1 / (1 - bias x overlap) times faster, and no further."""
    model, deps = gpus(2)
    busier, idle = deps
    scrape(busier, running=200)
    scrape(idle, running=0)
    busier.state.prefixes.add(BLOCKS)
    short = request(prompt_tokens=50, prefix_blocks=BLOCKS)
    assert picks({"name": "auto", "affinity_bias": 0}, model, deps, short) == {"g1": 20}
    assert picks("auto", model, deps, short) == {"g0": 20}
    # (1 + 1200 / 512): 3.3 times slower; a bias of 0.5 covers up to twice, the default (0.8)
    # up to 5 times.
    scrape(busier, running=1200)
    assert picks({"name": "auto", "affinity_bias": 0.5}, model, deps, short) == {"g1": 20}
    assert picks("auto", model, deps, short) == {"g0": 20}
    scrape(busier, running=3000)  # (1 + 3000 / 512): past 5 times, neither covers it
    assert picks("auto", model, deps, short) == {"g1": 20}


def test_a_new_conversations_rendezvous_credit_is_ranked_by_rendezvous_bias() -> None:
    """Nothing was sent anywhere yet: the opening is credited to the conversation's
    rendezvous choice, and ranked with ``rendezvous_bias`` (default 0.5: up to twice faster),
    not ``affinity_bias`` (which only ranks what this gateway sent)."""
    model, deps = gpus(2)
    for d in deps:
        scrape(d, running=0)
    new = request(prompt_tokens=50, prefix_blocks=BLOCKS, affinity_key=BLOCKS[-1])
    uniform: dict[str, Any] = {"name": "auto", "affinity_capacity_exponent": 0}
    [preferred] = picks(uniform, model, deps, new)  # equal predictions: the credit decides
    target = next(d for d in deps if d.id == preferred)
    other = next(d for d in deps if d is not target)
    target.state.tpot.add(0.09)  # (0.09 + 0.01) / (0.03 + 0.01): 2.5 times slower
    assert picks(uniform, model, deps, new) == {other.id: 20}
    assert picks({**uniform, "affinity_bias": 0.95}, model, deps, new) == {other.id: 20}
    assert picks({**uniform, "rendezvous_bias": 0.8}, model, deps, new) == {preferred: 20}


def test_affinity_bias_is_an_auto_parameter_only() -> None:
    from aigw.policies import policy_problems

    assert policy_problems({"name": "auto", "affinity_bias": 0.5}) == []
    assert policy_problems({"name": "auto", "affinity_bias": 1.0})  # a fraction in [0, 1)
    assert policy_problems({"name": "gpu-aware", "affinity_bias": 0.5})  # would be ignored
    assert policy_problems({"name": "auto", "rendezvous_bias": 0.3}) == []
    assert policy_problems({"name": "auto", "rendezvous_bias": -0.1})
    assert policy_problems({"name": "gpu-aware", "rendezvous_bias": 0.3})  # would be ignored


def test_a_burst_of_long_prompts_between_scrapes_is_spread_by_prefill_backlog() -> None:
    """Two idle engines scraped before a burst, g0 a little faster at decoding: each long
    prompt sent is still in prefill when the next arrives, so the next one goes where less
    prefill is pending. Without the backlog only the running count moves (one sequence more:
    ~0.2% slower steps) and the whole burst piles onto g0."""
    model, deps = gpus(2)
    for d, tpot in zip(deps, (0.01, 0.02), strict=True):
        scrape(d, running=0)
        d.state.prefill_per_token.add(0.1, 1000)  # 0.1 ms a token: 0.5 s per prompt
        d.state.tpot.add(tpot)
    doc = request(prompt_tokens=5000)

    def burst(backlog: bool) -> list[str]:
        p = policy("auto", model)
        chosen = []
        for _ in range(4):
            d = p.pick(deps, doc)
            dispatch(d, doc)
            if backlog:
                d.state.prefill_backlog += 5000  # what the recorder does for a stream
            chosen.append(d.id)
        for d in deps:
            d.state.in_flight = d.state.prefill_backlog = 0
        return chosen

    assert burst(backlog=False) == ["g0"] * 4
    assert burst(backlog=True) == ["g0", "g1", "g0", "g1"]


@pytest.mark.parametrize(
    ("lines", "spec", "chosen"),
    [
        (True, "auto", "slow"),
        (False, "auto", "fast"),
        (True, {"name": "auto", "weights": {"throughput": 0}}, "fast"),
    ],
    ids=["decode steps known", "unknown", "throughput weight 0"],
)
def test_a_slow_engine_with_a_small_batch_gets_work_when_it_adds_more_throughput(
    lines: bool, spec: Any, chosen: str
) -> None:
    """An h100-like engine running 100 (6 ms + 0.3 ms/seq, a 36 ms step) is ~30% quicker to
    a first token than an l4-like one running 20 (45 ms + 1.4 ms/seq, a 74 ms step), but one
    more sequence adds 45/74.4² = 8.1 tokens/ms there against 4.6 on the h100. auto weighs
    both when the deployments' decode_step lines are configured; without them, TTFT alone."""
    steps = [{"base_ms": 6.0, "per_seq_ms": 0.3}, {"base_ms": 45.0, "per_seq_ms": 1.4}]
    model, deps = fleet(
        *(
            gpu(name, **({"decode_step": step} if lines else {}))
            for name, step in zip(("fast", "slow"), steps, strict=True)
        )
    )
    for d, running, tpot in ((deps[0], 100, 0.036), (deps[1], 20, 0.074)):
        scrape(d, running=running, kv=0.5)
        d.state.tpot.add(tpot)
    assert picks(spec, model, deps, request(prompt_tokens=100)) == {chosen: 20}
    fast, slow = (d.state.last_scores for d in deps)
    assert fast["predicted_ttft_s"] < slow["predicted_ttft_s"]
    if chosen == "slow":
        assert fast["throughput"] < slow["throughput"] == 1.0


def test_the_throughput_column_credits_the_engine_holding_the_conversation() -> None:
    """Two equal engines (6 ms + 0.3 ms/seq); the one holding the conversation's history runs
    120 sequences, the other 20: one more sequence adds (12.3/42.3)² = 0.085 as much on the
    busy one. For the conversation's next turn that gain is divided by 1 - affinity_bias x
    overlap (0.2 for a fully cached prefix: the turn saves the fleet its prefill), as the
    TTFT column's prediction is multiplied by it; a prompt nothing was sent before is not
    discounted."""
    line = {"base_ms": 6.0, "per_seq_ms": 0.3}
    model, deps = fleet(gpu("cached", decode_step=line), gpu("light", decode_step=line))
    cached, light = deps
    scrape(cached, running=120, kv=0.5)
    scrape(light, running=20, kv=0.5)
    for d in deps:
        d.state.tpot.add(0.03)
    cached.state.prefixes.add(BLOCKS)
    raw = (12.3 / 42.3) ** 2

    fresh = request(prompt_tokens=2000, prefix_blocks=tuple(b + 100 for b in BLOCKS))
    assert picks("auto", model, deps, fresh) == {"light": 20}
    assert cached.state.last_scores["throughput"] == pytest.approx(raw)

    turn = request(prompt_tokens=2000, prefix_blocks=BLOCKS)
    assert picks("auto", model, deps, turn) == {"cached": 20}
    assert cached.state.last_scores["throughput"] == pytest.approx(raw / 0.2)
    assert light.state.last_scores["throughput"] == 1.0
