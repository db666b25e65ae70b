from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.policies.pickers import (
    PICKERS,
    ArgmaxPicker,
    PowerOfTwoPicker,
    RandomPicker,
    RoundRobinPicker,
    SmoothWeightedPicker,
)
from aigw.policies.tuning import Tuning
from tests.policies.conftest import fleet, gpu, gpus, request
from tests.policies.strategies import fleets, requests

REQ = request()


@settings(max_examples=60, deadline=None)
@given(fleets(), requests(), st.sampled_from(sorted(PICKERS)), st.data())
def test_every_picker_returns_one_of_the_candidates(fm, ctx, name, data) -> None:  # type: ignore[no-untyped-def]
    _, deps = fm
    scores = data.draw(st.lists(st.floats(0, 1), min_size=len(deps), max_size=len(deps)))
    picker = PICKERS[name](random.Random(data.draw(st.integers(0, 99))), Tuning())
    for _ in range(3):
        assert picker(deps, scores, ctx) in deps


@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 1000))
def test_round_robin_is_exactly_even(count, rounds, seed) -> None:  # type: ignore[no-untyped-def]
    _, deps = gpus(count)
    picker = RoundRobinPicker(random.Random(seed))
    picks = Counter(picker(deps, [0.0] * count, REQ).id for _ in range(count * rounds))
    assert set(picks.values()) == {rounds} and len(picks) == count


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([0.5, 1, 2, 3, 5]), min_size=1, max_size=6))
def test_weighted_converges_to_the_weights(weights) -> None:  # type: ignore[no-untyped-def]
    _, deps = fleet(*(gpu(f"g{i}", weight=w) for i, w in enumerate(weights)))
    picker = SmoothWeightedPicker(random.Random(0))
    picks = Counter(picker(deps, [0.0] * len(deps), REQ).id for _ in range(1000))
    total = sum(weights)
    for d, w in zip(deps, weights, strict=True):
        assert abs(picks[d.id] / 1000 - w / total) <= 0.02


def test_weighted_interleaves_like_nginx() -> None:
    _, deps = fleet(gpu("a", weight=5), gpu("b"), gpu("c"))
    picker = SmoothWeightedPicker(random.Random(0))
    assert "".join(picker(deps, [0.0] * 3, REQ).id for _ in range(7)) == "aabacaa"


def test_random_reaches_every_candidate() -> None:
    _, deps = gpus(4)
    picker = RandomPicker(random.Random(3))
    assert {picker(deps, [0.0] * 4, REQ).id for _ in range(200)} == {"g0", "g1", "g2", "g3"}


def test_argmax_takes_the_best_and_breaks_ties_at_random() -> None:
    _, deps = gpus(3)
    picker = ArgmaxPicker(random.Random(1))
    assert {picker(deps, [0.2, 0.9, 0.5], REQ).id for _ in range(50)} == {"g1"}
    assert {picker(deps, [0.9, 0.9, 0.5], REQ).id for _ in range(50)} == {"g0", "g1"}


def test_power_of_two_never_picks_the_worst_and_prefers_better() -> None:
    _, deps = gpus(4)
    picker = PowerOfTwoPicker(random.Random(2))
    picks = Counter(picker(deps, [0.1, 0.4, 0.6, 0.9], REQ).id for _ in range(3000))
    assert picks["g0"] == 0
    # the best wins every pair it is drawn in: 3 of 6 pairs
    assert 0.45 < picks["g3"] / 3000 < 0.55
    assert picks["g3"] > picks["g2"] > picks["g1"]


def test_power_of_two_with_two_candidates_is_argmax() -> None:
    _, deps = gpus(2)
    picker = PowerOfTwoPicker(random.Random(2))
    assert {picker(deps, [0.3, 0.7], REQ).id for _ in range(20)} == {"g1"}
