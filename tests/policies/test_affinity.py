from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from aigw.policies.affinity import (
    PrefixAffinityScorer,
    Rendezvous,
    affinity_overlaps,
    bounded_capacity,
    opening_share,
)
from aigw.policies.kit import ScorerKit
from aigw.policies.load import estimate_load
from aigw.policies.tuning import Tuning
from tests.policies.conftest import gpus, request, scrape

BLOCKS = tuple(range(1, 17))


def kit() -> ScorerKit:
    return ScorerKit.build(Tuning())


def test_observed_overlap_is_the_leading_share_seen() -> None:
    _, deps = gpus(3)
    deps[0].state.prefixes.add(BLOCKS)
    deps[1].state.prefixes.add(BLOCKS[:4])
    deps[2].state.prefixes.add(BLOCKS[8:])  # a later part alone does not count (chained)
    k = kit()
    scores = PrefixAffinityScorer(k.loads, k.rendezvous)(deps, request(prefix_blocks=BLOCKS))
    assert scores == [1.0, 0.25, 0.0]
    assert PrefixAffinityScorer(k.loads, k.rendezvous)(deps, request()) == [0.0, 0.0, 0.0]


def test_opening_share() -> None:
    assert opening_share(request(prefix_blocks=BLOCKS, affinity_key=BLOCKS[3])) == 4 / 16
    assert opening_share(request(prefix_blocks=BLOCKS)) == 0.0
    assert opening_share(request(prefix_blocks=BLOCKS, affinity_key=999)) == 1 / 16


def test_rendezvous_credits_one_deployment_with_the_opening_and_replicas_agree() -> None:
    _, deps = gpus(4)
    ctx = request(prefix_blocks=BLOCKS, affinity_key=BLOCKS[1])
    first = affinity_overlaps(deps, ctx, kit().loads, Rendezvous())
    second = affinity_overlaps(deps, ctx, kit().loads, Rendezvous())  # another replica
    assert first == second
    assert sorted(first) == [0.0, 0.0, 0.0, 2 / 16]


def test_rendezvous_spreads_keys_evenly_and_removal_moves_only_its_keys() -> None:
    _, deps = gpus(4)
    rendezvous = Rendezvous()
    loads = [estimate_load(d, Tuning()) for d in deps]
    rng = random.Random(5)
    keys = [rng.getrandbits(64) for _ in range(4000)]
    chosen = [rendezvous.choose(k, deps, loads, 1.25) for k in keys]
    counts = Counter(chosen)
    assert all(900 <= counts[i] <= 1100 for i in range(4)), counts
    # drop deployment 0: only its keys move
    rest = [1, 2, 3]
    for key, before in zip(keys, chosen, strict=True):
        after = rendezvous.choose(key, deps, loads, 1.25, rest)
        assert after == before or before == 0


def test_bounded_load_passes_over_an_overloaded_preferred_deployment() -> None:
    _, deps = gpus(4)
    ctx = request(prefix_blocks=BLOCKS, affinity_key=BLOCKS[1])
    k = kit()
    preferred = affinity_overlaps(deps, ctx, k.loads, k.rendezvous).index(2 / 16)
    for d in deps:
        scrape(d, running=4, kv=0.2)
    assert affinity_overlaps(deps, ctx, k.loads, k.rendezvous).index(2 / 16) == preferred
    scrape(deps[preferred], running=16, waiting=6)  # 22 of 34: cap ceil(1.25 x 35 / 4) = 11
    assert bounded_capacity(34, 4, 1.25) == 11
    moved = affinity_overlaps(deps, ctx, k.loads, k.rendezvous)
    assert moved[preferred] == 0.0 and sorted(moved) == [0.0, 0.0, 0.0, 2 / 16]


def test_observed_overlap_beats_a_smaller_rendezvous_credit() -> None:
    _, deps = gpus(2)
    for d in deps:
        d.state.prefixes.add(BLOCKS[:8])
    ctx = request(prefix_blocks=BLOCKS, affinity_key=BLOCKS[1])
    assert affinity_overlaps(deps, ctx, kit().loads, Rendezvous()) == [0.5, 0.5]


def test_bounded_capacity_formula() -> None:
    assert bounded_capacity(0, 4, 1.25) == 1  # an idle fleet: everyone may take one
    assert bounded_capacity(1, 4, 1.25) == 1
    assert bounded_capacity(9, 4, 1.25) == pytest.approx(4)


def _preferred_shares(deps: list[Any], tuning: Tuning, keys: int = 3000) -> list[float]:
    k = ScorerKit.build(tuning)
    rng = random.Random(11)
    counts: Counter[int] = Counter()
    for _ in range(keys):
        ctx = request(prefix_blocks=BLOCKS, affinity_key=rng.getrandbits(64))
        overlaps = affinity_overlaps(deps, ctx, k.loads, k.rendezvous)
        counts[max(range(len(deps)), key=overlaps.__getitem__)] += 1
    return [counts[i] / keys for i in range(len(deps))]


def test_rendezvous_prefers_engines_in_proportion_to_their_throughput() -> None:
    """Two engines running 10 each, one with 90% of its KV cache free (room for 100), the
    other with half (20), the second 2x slower per token: new conversations prefer them
    100/0.03 : 20/0.06, i.e. 10 : 1 (issue 11: a uniform ranking sent as many to a small
    engine as to a large one); with the exponent 0, evenly."""
    _, deps = gpus(2)
    scrape(deps[0], running=10, kv=0.1)
    scrape(deps[1], running=10, kv=0.5)
    deps[1].state.tpot.add(0.06)
    deps[0].state.tpot.add(0.03)
    big, small = _preferred_shares(deps, Tuning())
    assert big == pytest.approx(10 / 11, abs=0.03) and small == pytest.approx(1 / 11, abs=0.03)
    even = _preferred_shares(deps, Tuning(affinity_capacity_exponent=0))
    assert even == pytest.approx([0.5, 0.5], abs=0.04)


def test_affinity_capacity_exponent_is_validated() -> None:
    from aigw.policies.presets import policy_problems

    assert policy_problems({"name": "auto", "affinity_capacity_exponent": 0}) == []
    assert policy_problems({"name": "gpu-aware", "affinity_capacity_exponent": 0.5}) == []
    assert policy_problems({"name": "auto", "affinity_capacity_exponent": -1})
    assert policy_problems({"name": "hash", "affinity_capacity_exponent": 1})  # unused there
