"""Which KV-cache blocks belong to which sequence: a free list and per-sequence block lists.

Pure bookkeeping (no tensors), so the scheduler is testable on CPU. Block 0 is reserved as a scratch
block and never handed out: padded block-table entries point at it (harmless: reads past context_lens
are masked) and padded rows of a captured decode batch write their K/V to slot `PAD_SLOT` inside it,
so padding can never overwrite a live sequence's cache.

Blocks are reference-counted: the choices of one prompt (n > 1, choices.py) share the blocks their
prompt fills completely, and a block returns to the free list when its last holder frees it. A shared
block is never written again (every holder writes only positions past the shared ones), so sharing needs
no copy-on-write hook; the block a fork would share partially is copied instead (`fork`).

With a PrefixCache (prefix_cache.py), full prompt blocks are also found again by their tokens: a
released cached block waits among the evictable ones instead of the free list, `match_prefix` finds the
longest cached start of a new sequence's prompt and `take_prefix` hands those blocks to it. Free blocks
are the free list plus the evictable blocks; the free list is used first.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.errors import ConfigError, GraphrunError
from graphrun.llm.prefix_cache import BlockKey, PrefixCache, block_keys
from graphrun.llm.sequence import Sequence

SCRATCH_BLOCK = 0  # never allocated; target of padding
PAD_SLOT = SCRATCH_BLOCK  # first slot of the scratch block: where padded rows write K/V
NUM_RESERVED_BLOCKS = 1


class OutOfBlocksError(GraphrunError, RuntimeError):
    """allocate() was asked for more blocks than are free (the scheduler checks first; this is a bug)."""


@dataclass(frozen=True, slots=True)
class BlockCopy:
    """A block whose K/V must be copied on the device (src -> dst) before the next step reads dst."""

    src: int
    dst: int


class BlockManager:
    """Hands out cache blocks 1..num_blocks-1 to sequences and takes them back."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False) -> None:
        if num_blocks < NUM_RESERVED_BLOCKS + 1:
            raise ConfigError(
                f"num_blocks must be >= {NUM_RESERVED_BLOCKS + 1} (block 0 is scratch), got {num_blocks}; "
                "give the KV cache more memory"
            )
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks  # all blocks in the cache, scratch included
        self.block_size = block_size
        # a stack: pop() hands out low ids first and reuses recently freed blocks first
        self._free: list[int] = list(range(num_blocks - 1, NUM_RESERVED_BLOCKS - 1, -1))
        self._refs: dict[int, int] = {}  # block -> number of sequences holding it (>= 1)
        self._reserved: list[int] = []  # held for background graph capture (reserve())
        self.prefix_cache = PrefixCache() if prefix_caching else None

    @property
    def num_usable_blocks(self) -> int:
        """Blocks sequences can hold (all but the scratch block); num_free + num_used always equals it."""
        return self.num_blocks - NUM_RESERVED_BLOCKS

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds: the free list and the evictable cached blocks."""
        cache = self.prefix_cache
        return len(self._free) + (cache.num_evictable if cache is not None else 0)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by sequences (a shared block counts once)."""
        return len(self._refs)

    @property
    def num_shared_blocks(self) -> int:
        """Blocks held by more than one sequence."""
        return sum(1 for refs in self._refs.values() if refs > 1)

    def blocks_for_tokens(self, num_tokens: int) -> int:
        """Blocks needed to hold num_tokens tokens from position 0."""
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, seq: Sequence | None, num_tokens: int) -> int:
        """Blocks seq (None: a new sequence) must gain to hold num_tokens tokens in total."""
        held = len(seq.block_ids) if seq is not None else 0
        return max(0, self.blocks_for_tokens(num_tokens) - held)

    def can_allocate(self, num_tokens: int, seq: Sequence | None = None) -> bool:
        """Whether seq (None: a new sequence) can grow to num_tokens tokens with the free blocks."""
        return self.num_new_blocks(seq, num_tokens) <= self.num_free_blocks

    def max_tokens_for(self, seq: Sequence) -> int:
        """The most tokens seq could hold if it took every free block."""
        return (len(seq.block_ids) + self.num_free_blocks) * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Extend seq.block_ids so positions [0, num_tokens) have a block; raises OutOfBlocksError."""
        needed = self.num_new_blocks(seq, num_tokens)
        if needed > self.num_free_blocks:
            raise OutOfBlocksError(
                f"sequence {seq.seq_id} needs {needed} more blocks for {num_tokens} tokens, "
                f"{self.num_free_blocks} free; check can_allocate() first"
            )
        for _ in range(needed):
            seq.block_ids.append(self._take())

    def _take(self) -> int:
        """A block for new K/V: from the free list, else the least recently used evictable one."""
        block = self._free.pop() if self._free or self.prefix_cache is None else self.prefix_cache.evict()
        assert block is not None, "no free block; check can_allocate() first"
        self._refs[block] = 1
        return block

    def fork(self, parent: Sequence, child: Sequence, num_tokens: int) -> tuple[int, BlockCopy | None]:
        """Give child (holding no blocks) the cache of parent's positions [0, num_tokens).

        The blocks those positions fill completely are shared; the partly filled last one is copied into
        a new block when one is free (the returned BlockCopy, for the engine to run on the device before
        child's next step), else left for child to recompute. Returns how many positions child now has
        in its cache, and the copy (None: nothing to copy).
        """
        assert not child.block_ids, f"sequence {child.seq_id} already holds blocks"
        num_full, rest = divmod(num_tokens, self.block_size)
        for block in parent.block_ids[:num_full]:
            self._refs[block] += 1
            child.block_ids.append(block)
        if rest == 0 or not self.num_free_blocks:
            return num_full * self.block_size, None
        dst = self._take()
        child.block_ids.append(dst)
        return num_tokens, BlockCopy(parent.block_ids[num_full], dst)

    def free(self, seq: Sequence) -> None:
        """Drop seq's hold on its blocks (those it held alone go back to the free list); clear block_ids."""
        for block in reversed(seq.block_ids):  # reversed: the stack hands them out again in order
            refs = self._refs.get(block)
            assert refs is not None, f"block {block} of sequence {seq.seq_id} is not allocated (double free)"
            if refs > 1:
                self._refs[block] = refs - 1
                continue
            del self._refs[block]
            if self.prefix_cache is not None and self.prefix_cache.is_cached(block):
                self.prefix_cache.release(block)
            else:
                self._free.append(block)
        seq.block_ids.clear()

    def reserve(self, num_blocks: int) -> range:
        """Take up to num_blocks free blocks for the engine's own use (background graph capture writes
        its random prompts' K/V there, never into a sequence's blocks); release_reserved() returns them.

        Called before any sequence holds a block, so the blocks are 1..num_blocks: returned as a range.
        """
        take = min(num_blocks, len(self._free))
        blocks = [self._free.pop() for _ in range(take)]
        assert blocks == list(range(NUM_RESERVED_BLOCKS, NUM_RESERVED_BLOCKS + take)), "reserve() came late"
        for block in blocks:
            self._refs[block] = 1
        self._reserved = blocks
        return range(NUM_RESERVED_BLOCKS, NUM_RESERVED_BLOCKS + take)

    def release_reserved(self) -> None:
        """Give the reserve()d blocks back to sequences."""
        for block in reversed(self._reserved):
            del self._refs[block]
            self._free.append(block)
        self._reserved = []

    # ----- prefix caching ---------------------------------------------------------------------------

    def match_prefix(self, seq: Sequence) -> list[int]:
        """The cached blocks that hold the start of seq's prompt, longest run first to last; at least one
        prompt token is always left to compute (its logits give the first output token)."""
        cache = self.prefix_cache
        if cache is None:
            return []
        num_blocks = (seq.num_prompt_tokens - 1) // self.block_size
        blocks = []
        for key in self._prompt_keys(seq)[:num_blocks]:
            block = cache.lookup(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def num_reclaimed(self, blocks: list[int]) -> int:
        """How many of these cached blocks are evictable now (taking them uses up free blocks)."""
        cache = self.prefix_cache
        return 0 if cache is None else sum(1 for block in blocks if cache.is_evictable(block))

    def take_prefix(self, seq: Sequence, blocks: list[int]) -> None:
        """Give seq (holding no blocks) the cached blocks match_prefix found."""
        assert not seq.block_ids and self.prefix_cache is not None
        for block in blocks:
            refs = self._refs.get(block, 0)
            if refs == 0:
                self.prefix_cache.reclaim(block)
            self._refs[block] = refs + 1
            seq.block_ids.append(block)

    def cache_prompt_blocks(self, seq: Sequence) -> None:
        """Remember seq's full prompt blocks whose K/V are computed (or on their way, in stream order)."""
        cache = self.prefix_cache
        if cache is None:
            return
        num_blocks = min(seq.num_computed_tokens, seq.num_prompt_tokens) // self.block_size
        for key, block in zip(self._prompt_keys(seq)[:num_blocks], seq.block_ids, strict=False):
            cache.register(key, block)

    def _prompt_keys(self, seq: Sequence) -> list[BlockKey]:
        """The keys of seq's full prompt blocks, computed on first use and kept on the sequence."""
        if not seq.prefix_keys:
            seq.prefix_keys = block_keys(
                seq.prompt_token_ids, self.block_size, seq.num_prompt_tokens // self.block_size
            )
        return seq.prefix_keys

    def slot(self, seq: Sequence, position: int) -> int:
        """Flat cache slot of seq's token at position: block_ids[pos // bs] * bs + pos % bs."""
        block, offset = divmod(position, self.block_size)
        return seq.block_ids[block] * self.block_size + offset

    def slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        """Flat cache slots of positions [start, end)."""
        bs, blocks = self.block_size, seq.block_ids
        return [blocks[p // bs] * bs + p % bs for p in range(start, end)]
