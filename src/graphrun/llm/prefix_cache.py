"""Automatic prefix caching: full KV blocks found again by their tokens, across requests.

Why: many requests start alike (a system prompt, a few-shot preamble, a conversation's earlier turns);
their K/V for those tokens are the same, so a block computed once can serve every later request that
starts with the same tokens, and its prefill skips them. A block is known by a `BlockKey`: its tokens
and the hash of the key before it, so a key stands for everything from position 0 to the block's end
(the same tokens after a different prefix are a different key). Only prompt blocks are cached, and only
full ones (a partial block is still being written).

Blocks here belong to the BlockManager; this class only remembers which hold which key. A cached block
no sequence holds is *evictable*: it keeps its K/V and its key until the manager needs a block and no
plain free block is left, and then the least recently used one goes first (an OrderedDict in release
order; a hit takes a block out, and its next release puts it back at the recent end).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BlockKey = tuple[int, tuple[int, ...]]  # (hash of the previous block's key, 0 for the first; its tokens)


def block_keys(token_ids: Sequence[int], block_size: int, num_blocks: int) -> list[BlockKey]:
    """The keys of the first num_blocks full blocks of token_ids."""
    keys: list[BlockKey] = []
    parent = 0
    for i in range(num_blocks):
        key = (parent, tuple(token_ids[i * block_size : (i + 1) * block_size]))
        keys.append(key)
        parent = hash(key)
    return keys


class PrefixCache:
    """Which block holds which key, and the evictable ones in least-recently-used order."""

    def __init__(self) -> None:
        self._block_of: dict[BlockKey, int] = {}
        self._key_of: dict[int, BlockKey] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest release first

    @property
    def num_cached_blocks(self) -> int:
        """Blocks with a key (held or evictable)."""
        return len(self._key_of)

    @property
    def num_evictable(self) -> int:
        """Cached blocks no sequence holds: free to reuse, by a hit or by eviction."""
        return len(self._evictable)

    def lookup(self, key: BlockKey) -> int | None:
        """The block holding key's tokens, or None."""
        return self._block_of.get(key)

    def is_cached(self, block: int) -> bool:
        """Whether block holds a key."""
        return block in self._key_of

    def is_evictable(self, block: int) -> bool:
        """Whether block is cached and held by no sequence."""
        return block in self._evictable

    def register(self, key: BlockKey, block: int) -> None:
        """block (held, fully written) holds key's tokens; a key or block already known stays as it is."""
        if key not in self._block_of and block not in self._key_of:
            self._block_of[key] = block
            self._key_of[block] = key

    def release(self, block: int) -> None:
        """A cached block's last holder let go: evictable, most recently used."""
        self._evictable[block] = None

    def reclaim(self, block: int) -> None:
        """An evictable block is held again (a hit)."""
        del self._evictable[block]

    def evict(self) -> int | None:
        """Forget the least recently used evictable block and return it (None: there is none)."""
        if not self._evictable:
            return None
        block, _ = self._evictable.popitem(last=False)
        del self._block_of[self._key_of.pop(block)]
        return block
