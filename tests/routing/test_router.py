from __future__ import annotations

import random

import pytest

from aigw.config import HealthConfig
from aigw.configfile import parse_config
from aigw.fleet.deployment import DeploymentState
from aigw.routing.health import OutlierDetector
from aigw.routing.router import ModelRoute, Router
from aigw.types import Endpoint, RouteContext


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ejection_after_consecutive_failures_with_backoff() -> None:
    detector = OutlierDetector(
        HealthConfig(consecutive_failures=2, base_ejection_seconds=5), lambda: 0.0
    )
    state = DeploymentState()
    detector.record_failure(state, "boom", now=0.0)
    assert detector.is_available(state, 0.0)
    detector.record_failure(state, "boom", now=0.0)
    assert not detector.is_available(state, 4.9) and detector.is_available(state, 5.0)
    detector.record_failure(state, "boom again", now=5.0)  # the probe after ejection failed
    assert not detector.is_available(state, 14.9) and detector.is_available(state, 15.0)
    detector.record_success(state)
    assert state.consecutive_failures == 0 and detector.is_available(state, 0.0)
    assert state.failures == 3 and state.last_error == "boom again"


def router(clock: Clock, **deployment_extra: object) -> Router:
    deployments = [
        {
            "id": name,
            "base_url": f"http://127.0.0.1:{9000 + i}/v1",
            "model": "m",
            **deployment_extra,
        }
        for i, name in enumerate(["a", "b", "c"])
    ]
    config = parse_config(
        {"models": [{"name": "chat", "policy": "round-robin", "deployments": deployments}]}
    )
    return Router(config, clock, random.Random(0))


REQUEST = RouteContext(Endpoint.CHAT, "chat", {})


def chosen(r: Router, route: ModelRoute, tried: set[str] | None = None) -> str | None:
    selection = r.select(route, REQUEST, tried or set())
    assert selection is not None
    return selection.chosen.id if selection.chosen is not None else None


def test_pick_skips_tried_and_ejected_deployments() -> None:
    clock = Clock()
    r = router(clock)
    route = r.models["chat"]
    r.deployments["a"].state.ejected_until = clock.now + 10
    picks = {chosen(r, route, {"b"}) for _ in range(10)}
    assert picks == {"c"}
    assert r.select(route, REQUEST, {"a", "b", "c"}) is None


def test_panic_mode_uses_ejected_deployments_when_all_are_ejected() -> None:
    clock = Clock()
    r = router(clock)
    for dep in r.deployments.values():
        dep.state.ejected_until = clock.now + 10
    assert chosen(r, r.models["chat"]) is not None
    assert r.ready_models() == {"chat": False}


def test_deployments_at_max_concurrency_are_not_chosen_but_stay_candidates() -> None:
    clock = Clock()
    r = router(clock, max_concurrency=1)
    r.deployments["a"].state.in_flight = 1
    r.deployments["b"].state.in_flight = 1
    assert chosen(r, r.models["chat"]) == "c"
    r.deployments["c"].state.in_flight = 1
    selection = r.select(r.models["chat"], REQUEST, set())
    assert selection is not None
    assert selection.chosen is None  # every one is full: the request queues for any of them
    assert [d.id for d in selection.candidates] == ["a", "b", "c"]


def test_round_robin_visits_every_deployment_evenly() -> None:
    r = router(Clock())
    route = r.models["chat"]
    picks = [chosen(r, route) for _ in range(9)]
    assert sorted(picks) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_filters_that_empty_the_candidates_say_why_with_the_right_status() -> None:
    from aigw.errors import InvalidRequestError, ServiceUnavailableError
    from aigw.policies import MODEL_AWARE_FILTERS

    deployments = [
        {
            "id": name,
            "base_url": f"http://127.0.0.1:{9000 + i}/v1",
            "model": "m",
            "context_window": 100,
        }
        for i, name in enumerate(["a", "b"])
    ]
    config = parse_config({"models": [{"name": "chat", "deployments": deployments}]})
    r = Router(config, Clock(), random.Random(0), MODEL_AWARE_FILTERS)
    route = r.models["chat"]
    too_long = RouteContext(Endpoint.CHAT, "chat", {}, prompt_tokens=90, max_tokens=20)
    with pytest.raises(InvalidRequestError) as info:
        r.select(route, too_long, set())
    assert info.value.code == "no_deployment_context_window"
    for dep in r.deployments.values():
        dep.state.draining = True
    with pytest.raises(ServiceUnavailableError):
        r.select(route, REQUEST, set())
    # Once a deployment was tried, an empty result means "try the fallbacks", not an error.
    assert r.select(route, REQUEST, {"a"}) is None


def test_back_off_is_capped_however_long_a_deployment_stays_dead() -> None:
    detector = OutlierDetector(
        HealthConfig(consecutive_failures=1, base_ejection_seconds=5, max_ejection_seconds=60),
        lambda: 0.0,
    )
    state = DeploymentState()
    for _ in range(2000):  # 2.0**1024 would overflow without the cap
        detector.record_failure(state, "down", 0.0)
    assert state.ejected_until == 60.0
