"""The KV cache of one simulated GPU: a pool of fixed-size blocks with vLLM-style prefix caching.

Blocks are counted, not stored. A block is in one of three states:

* **used**: held by at least one running sequence. A block that holds a full block of prompt
  tokens is *hashed* (its key is the hash of the whole prompt prefix up to and including it, as
  vLLM chains block hashes) and may be shared by several sequences (reference counted);
  other used blocks are private to one sequence (``plain``).
* **cached-free**: a hashed block nobody holds any more. It still counts as free, but a later
  prompt with the same prefix can reuse it (a prefix-cache hit) until it is evicted, least
  recently freed first.
* **empty-free**: never held a hashed prefix, or evicted.

Allocation takes empty blocks first, then evicts cached ones in LRU order. Sequences release
their hashed blocks tail first, so a shared prefix's head outlives its tail (as in vLLM).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["KvCache"]


class KvCache:
    """Counts of used / cached-free / empty-free blocks; ``refs`` maps block hash → holders.

    Invariant: ``used + len(evictable) + empty == num_blocks`` where ``used`` is derived.
    Mutable by design: it is the engine's private state, touched only by its step loop.
    """

    __slots__ = ("_empty", "_evictable", "_refs", "num_blocks")

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._empty = num_blocks
        self._refs: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def free(self) -> int:
        """Blocks that an allocation may take (empty or cached-free)."""
        return self._empty + len(self._evictable)

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0..1 (``vllm:kv_cache_usage_perc``)."""
        return self.used / self.num_blocks

    def match(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """Length of the longest cached prefix of ``hashes`` (at most ``limit`` blocks), and how
        many of those blocks are cached-free (taking them reduces ``free``)."""
        refs = self._refs
        matched = idle = 0
        for block_hash in hashes[:limit]:
            holders = refs.get(block_hash)
            if holders is None:
                break
            matched += 1
            if holders == 0:
                idle += 1
        return matched, idle

    def acquire(self, hashes: Sequence[int]) -> None:
        """Take a reference on cached blocks (all must have been matched just before)."""
        refs = self._refs
        for block_hash in hashes:
            if refs[block_hash] == 0:
                del self._evictable[block_hash]
            refs[block_hash] += 1

    def allocate(self, count: int) -> bool:
        """Take ``count`` private blocks, evicting cached-free ones LRU first; False (and no
        change) when fewer than ``count`` are free."""
        if count > self.free:
            return False
        take = min(count, self._empty)
        self._empty -= take
        for _ in range(count - take):
            block_hash, _ = self._evictable.popitem(last=False)
            del self._refs[block_hash]
        return True

    def register(self, block_hash: int) -> bool:
        """Publish a private block that now holds a full prompt block under ``block_hash``.

        True when it became the shared copy (the caller moves it from plain to hashed); False
        when another sequence computed the same block first, so this copy stays private.
        """
        if block_hash in self._refs:
            return False
        self._refs[block_hash] = 1
        return True

    def release(self, hashes: Sequence[int], plain: int) -> None:
        """Drop a sequence's references: hashed blocks become cached-free when unheld (tail
        first, so the prefix head is evicted last); plain blocks become empty."""
        refs = self._refs
        evictable = self._evictable
        for block_hash in reversed(hashes):
            holders = refs[block_hash] - 1
            refs[block_hash] = holders
            if holders == 0:
                evictable[block_hash] = None
        self._empty += plain
