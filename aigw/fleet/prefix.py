"""Prompt-prefix block hashes and a bounded per-deployment memory of them.

The prompt text is cut into fixed blocks of characters (no tokenizer involved, so nothing is
tokenized twice) and each block's hash chains the previous one, like vLLM's prefix cache: two
prompts share their first k hashes exactly when they share their first k blocks. Hashes are
blake2b, stable across processes, so every gateway replica computes the same keys.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["PrefixLRU", "prefix_blocks"]


def prefix_blocks(text: str, block_chars: int, max_blocks: int = 64) -> tuple[int, ...]:
    """Chained 64-bit hashes of the full ``block_chars``-sized blocks of ``text``."""
    data = text.encode("utf-8", "surrogatepass")
    count = min(len(data) // block_chars, max_blocks)
    hashes = []
    digest = b""
    for i in range(count):
        digest = hashlib.blake2b(
            data[i * block_chars : (i + 1) * block_chars], digest_size=8, key=digest
        ).digest()
        hashes.append(int.from_bytes(digest, "little"))
    return tuple(hashes)


class PrefixLRU:
    """The prefix blocks recently sent to one deployment, bounded to ``capacity`` hashes."""

    __slots__ = ("_blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, blocks: Sequence[int]) -> None:
        store = self._blocks
        for block in blocks:
            if block in store:
                store.move_to_end(block)
            else:
                store[block] = None
        while len(store) > self.capacity:
            store.popitem(last=False)

    def matched(self, blocks: Sequence[int]) -> int:
        """How many leading ``blocks`` this deployment has seen (chained: binary search)."""
        store = self._blocks
        low, high = 0, len(blocks)
        while low < high:  # invariant: blocks[:low] matched, blocks[high:] not known to match
            middle = (low + high + 1) // 2
            if blocks[middle - 1] in store:
                low = middle
            else:
                high = middle - 1
        return low
