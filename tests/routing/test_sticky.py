"""Sticky sessions' selection rules: the bound deployment is kept while it is available, and
only the sessions of an unavailable deployment move."""

from __future__ import annotations

import random
from typing import Any

import pytest

from aigw.config import StickyConfig
from aigw.configfile import parse_config
from aigw.policies import MODEL_AWARE_FILTERS
from aigw.routing.router import Router
from aigw.routing.sticky import Stickiness, keep_bound
from aigw.types import Endpoint, RequestMeta, RouteContext


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def router(clock: Clock, **deployment_extra: Any) -> Router:
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
        {
            "models": [
                {
                    "name": "chat",
                    "policy": "round-robin",
                    "deployments": deployments,
                    "sticky": {"key": "header"},
                }
            ]
        }
    )
    return Router(config, clock, random.Random(0), MODEL_AWARE_FILTERS)


def pick(r: Router, bound: str | None, tried: set[str] | None = None) -> str | None:
    ctx = RouteContext(Endpoint.CHAT, "chat", {}, bound_deployment=bound)
    selection = r.select(r.models["chat"], ctx, tried or set())
    assert selection is not None
    return selection.chosen.id if selection.chosen is not None else None


def test_the_bound_deployment_is_chosen_every_time_while_available() -> None:
    r = router(Clock())
    assert {pick(r, "b") for _ in range(20)} == {"b"}
    assert len({pick(r, None) for _ in range(6)}) == 3  # without a binding: the policy


def test_a_session_moves_when_its_deployment_is_ejected() -> None:
    clock = Clock()
    r = router(clock)
    r.deployments["b"].state.ejected_until = clock.now + 5
    assert {pick(r, "b") for _ in range(6)} == {"a", "c"}
    assert {pick(r, "a") for _ in range(6)} == {"a"}  # sessions of a healthy one stay
    clock.now += 5
    assert pick(r, "b") == "b"  # back once the ejection is over


def test_a_session_moves_when_its_deployment_drains_and_only_those_sessions() -> None:
    r = router(Clock())
    r.deployments["c"].state.draining = True
    assert pick(r, "c") in {"a", "b"}
    assert pick(r, "a") == "a" and pick(r, "b") == "b"


def test_a_session_moves_off_a_deployment_already_tried_for_the_request() -> None:
    r = router(Clock())
    assert pick(r, "a", tried={"a"}) in {"b", "c"}


def test_a_session_of_an_unknown_deployment_is_routed_by_the_policy() -> None:
    r = router(Clock())
    assert pick(r, "gone-after-a-reload") in {"a", "b", "c"}


def test_panic_mode_does_not_keep_an_ejected_bound_deployment() -> None:
    clock = Clock()
    r = router(clock)
    for d in r.deployments.values():
        d.state.ejected_until = clock.now + 5
    # Every candidate is ejected, so all are tried (panic), but the session is not pinned.
    assert {pick(r, "a") for _ in range(6)} == {"a", "b", "c"}


def test_max_concurrency_is_the_bound_when_set() -> None:
    r = router(Clock(), max_concurrency=4)
    r.deployments["a"].state.in_flight = 3
    assert pick(r, "a") == "a"
    r.deployments["a"].state.in_flight = 4
    assert pick(r, "a") in {"b", "c"}


@pytest.mark.parametrize(
    ("bound", "peers", "kept"),
    [
        (3, (0, 0), True),  # a near-idle fleet never moves a session for a few requests
        (4, (0, 0), False),  # 5 > max(4, ceil(1.5 x 5 / 3))
        (8, (4, 4), True),  # 9 <= ceil(1.5 x 17 / 3)
        (9, (4, 4), False),  # 10 > 9
        (12, (6, 6), True),
        (13, (6, 6), False),
        (17, (5,), True),  # two deployments: the bound one may carry up to 75 % of the load
        (18, (5,), False),
        (50, (), True),  # no peers: its cap is 1.5 x its own load
    ],
)
def test_without_max_concurrency_the_bound_is_relative_to_the_peers(
    bound: int, peers: tuple[int, ...], kept: bool
) -> None:
    r = router(Clock())
    fleet = list(r.deployments.values())[: 1 + len(peers)]
    for d, in_flight in zip(fleet, (bound, *peers), strict=True):
        d.state.in_flight = in_flight
    assert (keep_bound("a", fleet) is fleet[0]) is kept


def meta(**headers: str) -> RequestMeta:
    m = RequestMeta()
    m.headers = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return m


def test_session_keys_are_scoped_by_model_and_tenant() -> None:
    sticky = Stickiness(StickyConfig(key="header"), "chat")
    key = sticky.session_key("team-a", {}, meta(x_session_id="s1"))
    assert key is not None and key.endswith(":s1")
    assert key != sticky.session_key("team-b", {}, meta(x_session_id="s1"))
    other_model = Stickiness(StickyConfig(key="header"), "chat2")
    assert key != other_model.session_key("team-a", {}, meta(x_session_id="s1"))
    # A model name with the separator in it cannot be made to collide.
    odd = Stickiness(StickyConfig(key="header"), "chat:team-a")
    assert odd.session_key("x", {}, meta(x_session_id="s1")) != sticky.session_key(
        "team-a", {}, meta(x_session_id="x:s1")
    )


def test_session_key_from_the_configured_header_or_the_user_field() -> None:
    by_header = Stickiness(StickyConfig(key="header", header="X-Conversation"), "chat")
    assert by_header.session_key("t", {}, meta(x_session_id="s")) is None
    assert by_header.session_key("t", {}, meta(x_conversation=" c1 ")) == "4:chat:t:c1"
    assert by_header.session_key("t", {}, meta(x_conversation="  ")) is None
    by_user = Stickiness(StickyConfig(key="user"), "chat")
    assert by_user.session_key("t", {"user": "u1"}, meta(x_session_id="s")) == "4:chat:t:u1"
    assert by_user.session_key("t", {"user": 7}, RequestMeta()) is None
    assert by_user.session_key("t", {}, RequestMeta()) is None


def test_long_session_ids_are_stored_hashed() -> None:
    sticky = Stickiness(StickyConfig(key="user"), "m")
    key = sticky.session_key("t", {"user": "x" * 10_000}, RequestMeta())
    assert key is not None and len(key) < 100 and key.startswith("1:m:t:#")
