"""Block accounting and LRU eviction of the prefix cache."""

from __future__ import annotations

from aigw.sim.kvcache import KvCache


def test_allocation_prefers_empty_blocks_then_evicts_least_recently_freed() -> None:
    kv = KvCache(4)
    assert kv.allocate(2)
    assert kv.register(1) and kv.register(2)
    kv.release([1, 2], plain=0)  # tail first: block 2 becomes the eviction candidate
    assert kv.used == 0 and kv.free == 4
    assert kv.match([1, 2], limit=2) == (2, 2)
    assert kv.allocate(3)  # two empty blocks, then evicts the tail block (2)
    assert kv.match([1, 2], limit=2) == (1, 1)
    assert not kv.allocate(2)  # only block 1 is left: a failed allocation changes nothing
    assert kv.used == 3 and kv.usage == 0.75


def test_shared_blocks_are_counted_once_and_stay_cached_while_held() -> None:
    kv = KvCache(8)
    assert kv.allocate(2)
    assert kv.register(7) and kv.register(8)
    assert not kv.register(7)  # a duplicate computed elsewhere stays private
    kv.acquire([7, 8])  # a second holder
    assert kv.used == 2
    kv.release([7, 8], plain=0)
    assert kv.used == 2 and kv.match([7, 8], 2) == (2, 0)
    kv.release([7, 8], plain=0)
    assert kv.used == 0 and kv.match([7, 8], 2) == (2, 2)
