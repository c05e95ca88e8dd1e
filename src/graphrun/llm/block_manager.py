"""Which KV-cache blocks belong to which sequence: a free list and per-sequence block lists.

Pure bookkeeping (no tensors), so the scheduler is testable on CPU. Block 0 is reserved as a scratch
block and never handed out: padded block-table entries point at it (harmless: reads past context_lens
are masked) and padded rows of a captured decode batch write their K/V to slot `PAD_SLOT` inside it,
so padding can never overwrite a live sequence's cache.
"""

from __future__ import annotations

from graphrun.errors import ConfigError, GraphrunError
from graphrun.llm.sequence import Sequence

SCRATCH_BLOCK = 0  # never allocated; target of padding
PAD_SLOT = SCRATCH_BLOCK  # first slot of the scratch block: where padded rows write K/V
NUM_RESERVED_BLOCKS = 1


class OutOfBlocksError(GraphrunError, RuntimeError):
    """allocate() was asked for more blocks than are free (the scheduler checks first; this is a bug)."""


class BlockManager:
    """Hands out cache blocks 1..num_blocks-1 to sequences and takes them back."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
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
        self._used: set[int] = set()
        self._reserved: list[int] = []  # held for background graph capture (reserve())

    @property
    def num_usable_blocks(self) -> int:
        """Blocks sequences can hold (all but the scratch block); num_free + num_used always equals it."""
        return self.num_blocks - NUM_RESERVED_BLOCKS

    @property
    def num_free_blocks(self) -> int:
        """Blocks on the free list."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by sequences."""
        return len(self._used)

    def blocks_for_tokens(self, num_tokens: int) -> int:
        """Blocks needed to hold num_tokens tokens from position 0."""
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, seq: Sequence | None, num_tokens: int) -> int:
        """Blocks seq (None: a new sequence) must gain to hold num_tokens tokens in total."""
        held = len(seq.block_ids) if seq is not None else 0
        return max(0, self.blocks_for_tokens(num_tokens) - held)

    def can_allocate(self, num_tokens: int, seq: Sequence | None = None) -> bool:
        """Whether seq (None: a new sequence) can grow to num_tokens tokens with the free blocks."""
        return self.num_new_blocks(seq, num_tokens) <= len(self._free)

    def max_tokens_for(self, seq: Sequence) -> int:
        """The most tokens seq could hold if it took every free block."""
        return (len(seq.block_ids) + len(self._free)) * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Extend seq.block_ids so positions [0, num_tokens) have a block; raises OutOfBlocksError."""
        needed = self.num_new_blocks(seq, num_tokens)
        if needed > len(self._free):
            raise OutOfBlocksError(
                f"sequence {seq.seq_id} needs {needed} more blocks for {num_tokens} tokens, "
                f"{len(self._free)} free; check can_allocate() first"
            )
        for _ in range(needed):
            block = self._free.pop()
            self._used.add(block)
            seq.block_ids.append(block)

    def free(self, seq: Sequence) -> None:
        """Return all of seq's blocks to the free list and clear seq.block_ids."""
        for block in reversed(seq.block_ids):  # reversed: the stack hands them out again in order
            assert block in self._used, (
                f"block {block} of sequence {seq.seq_id} is not allocated (double free)"
            )
            self._used.remove(block)
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
        self._used.update(blocks)
        self._reserved = blocks
        return range(NUM_RESERVED_BLOCKS, NUM_RESERVED_BLOCKS + take)

    def release_reserved(self) -> None:
        """Give the reserve()d blocks back to sequences."""
        for block in reversed(self._reserved):
            self._used.remove(block)
            self._free.append(block)
        self._reserved = []

    def slot(self, seq: Sequence, position: int) -> int:
        """Flat cache slot of seq's token at position: block_ids[pos // bs] * bs + pos % bs."""
        block, offset = divmod(position, self.block_size)
        return seq.block_ids[block] * self.block_size + offset

    def slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        """Flat cache slots of positions [start, end)."""
        bs, blocks = self.block_size, seq.block_ids
        return [blocks[p // bs] * bs + p % bs for p in range(start, end)]
