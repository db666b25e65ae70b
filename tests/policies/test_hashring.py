from __future__ import annotations

import random
from collections import Counter

from aigw.policies.hashring import ConsistentHashPicker, HashRing
from aigw.policies.tuning import Tuning
from tests.policies.conftest import fleet, gpu, gpus, request

KEYS = [f"user-{i}" for i in range(2000)]


def picker(seed: int = 0, **tuning: float) -> ConsistentHashPicker:
    return ConsistentHashPicker(random.Random(seed), Tuning(**tuning))  # type: ignore[arg-type]


def mapping(p: ConsistentHashPicker, deps: list, keys: list[str] = KEYS) -> dict[str, str]:  # type: ignore[type-arg]
    return {k: p(deps, [0.0] * len(deps), request(hash_key=k)).id for k in keys}


def test_same_key_same_deployment_and_replicas_agree() -> None:
    _, deps = gpus(5)
    first = mapping(picker(1), deps)
    assert mapping(picker(2), deps) == first  # another replica, another rng
    counts = Counter(first.values())
    assert len(counts) == 5 and min(counts.values()) > 2000 / 5 * 0.7


def test_removing_a_deployment_moves_only_its_keys() -> None:
    _, deps = gpus(5)
    p = picker()
    before = mapping(p, deps)
    after = mapping(p, deps[:2] + deps[3:])  # g2 is tried / at capacity
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved and all(before[k] == "g2" for k in moved)


def test_a_subset_served_from_a_cached_ring_matches_a_fresh_ring() -> None:
    _, deps = gpus(5)
    warm = picker()
    mapping(warm, deps)  # caches the full ring
    subset = [deps[0], deps[2], deps[4]]
    assert mapping(warm, subset) == mapping(picker(), subset)


def test_weight_scales_the_share_of_keys() -> None:
    _, deps = fleet(gpu("heavy", weight=3), gpu("light"))
    counts = Counter(mapping(picker(), deps).values())
    assert 0.65 < counts["heavy"] / len(KEYS) < 0.85


def test_bounded_load_spills_a_hot_key_to_the_next_deployment() -> None:
    _, deps = gpus(4)
    p = picker()
    ctx = request(hash_key="hot")
    home = p(deps, [0.0] * 4, ctx)
    for d in deps:
        d.state.in_flight = 4
    assert p(deps, [0.0] * 4, ctx) is home  # 4 < ceil(1.25 x 17 / 4) = 6
    home.state.in_flight = 6
    spilled = p(deps, [0.0] * 4, ctx)
    assert spilled is not home
    # the spill goes to the next owner on the ring, the same on every replica
    assert picker(9)(deps, [0.0] * 4, ctx) is spilled
    home.state.in_flight = 4
    assert p(deps, [0.0] * 4, ctx) is home  # and comes back


def test_without_a_key_the_pick_is_random() -> None:
    _, deps = gpus(3)
    p = picker(4)
    assert {p(deps, [0.0] * 3, request()).id for _ in range(100)} == {"g0", "g1", "g2"}


def test_ring_has_virtual_nodes_per_weight() -> None:
    _, deps = fleet(gpu("a", weight=2), gpu("b", weight=0.001))
    ring = HashRing(deps, 50)
    assert Counter(ring.owners) == {"a": 100, "b": 1}
    assert ring.points == sorted(ring.points)
