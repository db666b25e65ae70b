"""Ejection cap, slow start and predictive demotion (aigw/routing/health.py), and how the
router applies a reduced share."""

from __future__ import annotations

import random
from collections import Counter

from aigw.config import DemotionConfig, HealthConfig
from aigw.configfile import parse_config
from aigw.fleet.deployment import DeploymentState
from aigw.routing.health import demote, share
from aigw.routing.router import Router
from aigw.types import Endpoint, RouteContext

REQUEST = RouteContext(Endpoint.CHAT, "chat", {})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_router(clock: Clock, n: int = 3, policy: str = "round-robin", **health: object) -> Router:
    settings: dict[str, object] = {"consecutive_failures": 1, **health}
    deployments = [
        {"id": f"d{i}", "base_url": f"http://127.0.0.1:{9000 + i}/v1", "model": "m"}
        for i in range(n)
    ]
    config = parse_config(
        {
            "models": [{"name": "chat", "policy": policy, "deployments": deployments}],
            "health": settings,
        }
    )
    return Router(config, clock, random.Random(0))


def fail(r: Router, deployment: str, now: float) -> bool:
    peers = [d.state for d in r.models["chat"].deployments]
    return r.health.record_failure(r.deployments[deployment].state, "boom", now, peers)


def test_at_most_half_of_a_models_deployments_are_ejected_while_others_answer() -> None:
    clock = Clock()
    r = make_router(clock, n=4)
    assert fail(r, "d0", clock.now) and fail(r, "d1", clock.now)
    assert not fail(r, "d2", clock.now)  # a third of four: refused, d3 still answers
    assert r.health.is_available(r.deployments["d2"].state, clock.now)
    assert r.deployments["d2"].state.consecutive_failures == 1  # the failure still counts


def test_past_the_cap_a_model_whose_deployments_all_fail_is_ejected_whole() -> None:
    clock = Clock()
    r = make_router(clock, n=3)
    assert fail(r, "d0", clock.now)
    assert not fail(r, "d1", clock.now)  # d2 has no failure streak: it answers
    assert fail(r, "d2", clock.now)  # d2 fails too, d1 is failing: nobody answers
    assert fail(r, "d1", clock.now)


def test_at_least_one_may_always_be_ejected() -> None:
    clock = Clock()
    r = make_router(clock, n=3, max_ejection_percent=0)
    assert fail(r, "d0", clock.now)
    assert not fail(r, "d1", clock.now)


def test_a_probed_down_deployment_counts_against_the_cap() -> None:
    clock = Clock()
    r = make_router(clock, n=4)
    r.deployments["d0"].state.probe_up = False
    assert not r.health.is_available(r.deployments["d0"].state, clock.now)
    assert fail(r, "d1", clock.now)
    assert not fail(r, "d2", clock.now)


def test_slow_start_ramps_from_a_tenth_to_full_share() -> None:
    state = DeploymentState(slow_start_from=10.0)
    assert share(state, 9.9, 30.0) == 1.0  # still ejected: not ramping yet
    assert share(state, 10.0, 30.0) == 0.1
    assert abs(share(state, 25.0, 30.0) - 0.55) < 1e-9
    assert share(state, 40.0, 30.0) == 1.0
    state.demotion = 0.5
    assert abs(share(state, 25.0, 30.0) - 0.275) < 1e-9


def test_an_ejected_deployment_ramps_up_from_when_its_ejection_ends() -> None:
    clock = Clock()
    r = make_router(clock, n=3, slow_start_s=30, base_ejection_seconds=5)
    assert fail(r, "d0", clock.now)
    assert r.deployments["d0"].state.slow_start_from == clock.now + 5


def shares_over(r: Router, picks: int) -> Counter[str]:
    route = r.models["chat"]
    counts: Counter[str] = Counter()
    for _ in range(picks):
        selection = r.select(route, REQUEST, set())
        assert selection is not None and selection.chosen is not None
        counts[selection.chosen.id] += 1
    return counts


def test_the_router_gives_a_ramping_deployment_a_reduced_share_then_all_of_it() -> None:
    clock = Clock()
    r = make_router(clock, n=3, policy="least-connections", slow_start_s=30)
    r.deployments["d0"].state.slow_start_from = clock.now  # just back: idle, least loaded
    r.deployments["d1"].state.in_flight = r.deployments["d2"].state.in_flight = 5
    early = shares_over(r, 3000)
    assert 0.07 < early["d0"] / 3000 < 0.13  # about 10%, though least-connections prefers it
    clock.now += 15
    mid = shares_over(r, 3000)
    assert 0.45 < mid["d0"] / 3000 < 0.65
    clock.now += 16
    late = shares_over(r, 3000)
    assert late["d0"] == 3000  # the least loaded: nothing thins it any more


def test_no_flapping_a_ramping_deployment_is_never_left_out_entirely() -> None:
    clock = Clock()
    r = make_router(clock, n=2, slow_start_s=30)
    for d in r.models["chat"].deployments:
        d.state.slow_start_from = clock.now  # both ramping: neither is dropped for good
    counts = shares_over(r, 1000)
    assert counts["d0"] > 300 and counts["d1"] > 300


def observe(state: DeploymentState, ttft: float, n: int = 10, error: float = 0.0) -> None:
    for _ in range(n):
        state.ttft.add(ttft)
        state.errors.add(error)


def test_demotion_by_a_slowdown_its_peers_do_not_share() -> None:
    clock = Clock()
    r = make_router(clock, n=3)
    deployments = r.models["chat"].deployments
    for d in deployments:
        observe(d.state, 0.2)
    demote(deployments, DemotionConfig())  # baselines: 0.2 each
    observe(deployments[2].state, 0.8, n=40)  # 4x its own normal: twice past the 2x ratio
    demote(deployments, DemotionConfig())
    assert [d.state.demotion for d in deployments[:2]] == [1.0, 1.0]
    assert abs(deployments[2].state.demotion - 0.5) < 0.01
    observe(deployments[2].state, 0.2, n=40)  # back to normal
    demote(deployments, DemotionConfig())
    assert deployments[2].state.demotion == 1.0


def test_mixed_hardware_is_not_demoted_for_being_slower() -> None:
    """An L4 beside two H100s: 5x their time to first byte, steadily. It is not degrading."""
    clock = Clock()
    r = make_router(clock, n=3)
    deployments = r.models["chat"].deployments
    for _ in range(5):
        observe(deployments[0].state, 0.1)
        observe(deployments[1].state, 0.1)
        observe(deployments[2].state, 0.5)
        demote(deployments, DemotionConfig())
        assert [d.state.demotion for d in deployments] == [1.0, 1.0, 1.0]
    observe(deployments[2].state, 1.5, n=40)  # the L4 itself slows 3x: demoted
    demote(deployments, DemotionConfig())
    assert deployments[2].state.demotion < 0.7


def test_a_fleet_wide_slowdown_demotes_nobody() -> None:
    clock = Clock()
    r = make_router(clock, n=3)
    deployments = r.models["chat"].deployments
    for d, ttft in zip(deployments, (0.1, 0.1, 0.5), strict=True):
        observe(d.state, ttft)
    demote(deployments, DemotionConfig())
    for d, ttft in zip(deployments, (0.4, 0.4, 2.0), strict=True):
        observe(d.state, ttft, n=40)  # load doubled everywhere: all 4x slower
    demote(deployments, DemotionConfig())
    assert [d.state.demotion for d in deployments] == [1.0, 1.0, 1.0]


def test_a_lasting_change_becomes_the_new_baseline() -> None:
    clock = Clock()
    r = make_router(clock, n=3)
    deployments = r.models["chat"].deployments
    for d in deployments:
        observe(d.state, 0.2)
    demote(deployments, DemotionConfig())
    observe(deployments[2].state, 0.6, n=40)  # 3x, for good (a smaller GPU after a redeploy)
    demotions = []
    for _ in range(300):  # ten minutes of evaluations every 2 s
        demote(deployments, DemotionConfig())
        demotions.append(deployments[2].state.demotion)
    assert demotions[0] < 0.7 and demotions[-1] == 1.0


def test_demotion_by_error_rate_and_its_floor() -> None:
    clock = Clock()
    r = make_router(clock, n=3)
    deployments = r.models["chat"].deployments
    observe(deployments[0].state, 0.2)
    observe(deployments[1].state, 0.2)
    observe(deployments[2].state, 0.2, n=20, error=1.0)
    deployments[2].state.errors.value = 0.3  # 30% errors, never 3 in a row
    demote(deployments, DemotionConfig())
    assert abs(deployments[2].state.demotion - 0.7) < 1e-9
    observe(deployments[2].state, 50.0, n=1)
    demote(deployments, DemotionConfig())
    assert deployments[2].state.demotion == 0.1


def test_no_demotion_without_enough_samples_or_peers() -> None:
    clock = Clock()
    r = make_router(clock, n=2)
    deployments = r.models["chat"].deployments
    observe(deployments[0].state, 0.2)
    observe(deployments[1].state, 9.0, n=2)  # too few samples to judge
    demote(deployments, DemotionConfig())
    assert [d.state.demotion for d in deployments] == [1.0, 1.0]


def test_traffic_shifts_away_from_a_degrading_deployment_before_it_fails() -> None:
    """Simulation: d2's latency grows 10% per round of 300 requests (d0, d1 stay at 200 ms);
    demotion is re-evaluated each round, as the health task does every sync interval. Its
    share falls well before any failure could eject it (it never fails here)."""
    clock = Clock()
    r = make_router(clock, n=3, policy="round-robin")
    route = r.models["chat"]
    latency = {"d0": 0.2, "d1": 0.2, "d2": 0.2}
    shares: list[float] = []
    for _ in range(20):
        counts: Counter[str] = Counter()
        for _ in range(300):
            selection = r.select(route, REQUEST, set())
            assert selection is not None and selection.chosen is not None
            counts[selection.chosen.id] += 1
            selection.chosen.state.ttft.add(latency[selection.chosen.id])
        shares.append(counts["d2"] / 300)
        demote(route.deployments, DemotionConfig())
        latency["d2"] *= 1.1
    assert r.deployments["d2"].state.failures == 0
    assert 0.3 < shares[0] < 0.37  # a fair third while it is as fast as its peers
    assert shares[-1] < 0.2  # ~6x slower (~5x its slowly relaxing baseline): a sixth
    assert shares == sorted(shares, reverse=True) or max(shares[10:]) < shares[0]


def test_shared_ejection_never_shortens_a_local_one() -> None:
    clock = Clock()
    r = make_router(clock, n=2, max_ejection_percent=100)
    d0 = r.deployments["d0"]
    d0.state.ejected_until = 150.0
    assert r.health.apply_shared(d0, 10.0, now=clock.now)
    assert d0.state.ejected_until == 150.0
    assert r.health.apply_shared(d0, 80.0, now=clock.now)
    assert d0.state.ejected_until == 180.0 and d0.state.slow_start_from == 180.0


def test_shared_ejections_obey_the_same_cap_as_local_ones() -> None:
    """Two instances that each ejected a different deployment of a three-deployment model
    (cap: one): applying the other's would take two of three out while the third answers."""
    clock = Clock()
    r = make_router(clock, n=3)
    assert fail(r, "d0", clock.now)  # this instance's own ejection: the one allowed
    assert not r.health.apply_shared(r.deployments["d1"], 30.0, clock.now)
    assert r.health.is_available(r.deployments["d1"].state, clock.now)
    clock.now += 10  # d0 is back: the shared one fits now
    assert r.health.apply_shared(r.deployments["d1"], 30.0, clock.now)
    assert not r.health.is_available(r.deployments["d1"].state, clock.now)


def test_passive_defaults_are_unchanged() -> None:
    config = HealthConfig()
    assert (config.consecutive_failures, config.base_ejection_seconds) == (3, 5.0)
    assert config.max_ejection_percent == 50 and config.slow_start_s == 30
