"""BlockManager: scratch block 0, allocation covering tokens, slots, free list accounting."""

import pytest

from graphrun.errors import ConfigError
from graphrun.llm.block_manager import PAD_SLOT, SCRATCH_BLOCK, BlockManager, OutOfBlocksError
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.sequence import Sequence


def seq(seq_id=0, n=1):
    return Sequence(seq_id, list(range(n)), SamplingParams())


def test_block_zero_is_reserved_scratch():
    bm = BlockManager(num_blocks=5, block_size=4)
    assert SCRATCH_BLOCK == 0 and PAD_SLOT == 0
    assert bm.num_usable_blocks == 4 and bm.num_free_blocks == 4 and bm.num_used_blocks == 0
    s = seq()
    bm.allocate(s, 16)
    assert sorted(s.block_ids) == [1, 2, 3, 4]
    assert SCRATCH_BLOCK not in s.block_ids
    assert not bm.can_allocate(1)


def test_allocate_extends_to_cover_tokens():
    bm = BlockManager(num_blocks=10, block_size=4)
    s = seq()
    bm.allocate(s, 1)
    assert len(s.block_ids) == 1
    bm.allocate(s, 4)  # still one block
    assert len(s.block_ids) == 1
    bm.allocate(s, 5)
    assert len(s.block_ids) == 2
    bm.allocate(s, 3)  # never shrinks
    assert len(s.block_ids) == 2
    assert bm.num_used_blocks + bm.num_free_blocks == bm.num_usable_blocks
    assert bm.num_new_blocks(s, 13) == 2 and bm.num_new_blocks(None, 13) == 4
    assert bm.max_tokens_for(s) == (2 + 7) * 4


def test_slot_formula():
    bm = BlockManager(num_blocks=10, block_size=4)
    a, b = seq(0), seq(1)
    bm.allocate(a, 4)
    bm.allocate(b, 4)
    bm.allocate(a, 8)  # a's blocks are not contiguous
    for pos in range(8):
        expected = a.block_ids[pos // 4] * 4 + pos % 4
        assert bm.slot(a, pos) == expected
    assert bm.slots(a, 2, 7) == [bm.slot(a, p) for p in range(2, 7)]
    assert set(bm.slots(a, 0, 8)).isdisjoint(bm.slots(b, 0, 4))


def test_free_returns_blocks_and_they_are_reused():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = seq(0), seq(1)
    bm.allocate(a, 6)
    assert bm.num_free_blocks == 0
    held = list(a.block_ids)
    bm.free(a)
    assert a.block_ids == [] and bm.num_free_blocks == 3 and bm.num_used_blocks == 0
    bm.allocate(b, 6)
    assert b.block_ids == held  # handed out again in the same order
    bm.free(a)  # freeing an empty sequence is a no-op
    assert bm.num_used_blocks == 3


def test_over_allocation_raises_and_changes_nothing():
    bm = BlockManager(num_blocks=3, block_size=2)
    s = seq()
    with pytest.raises(OutOfBlocksError, match="needs 3 more blocks for 5 tokens, 2 free"):
        bm.allocate(s, 5)
    assert s.block_ids == [] and bm.num_free_blocks == 2


def test_double_allocation_is_impossible_across_sequences():
    bm = BlockManager(num_blocks=9, block_size=1)
    seqs = [seq(i) for i in range(4)]
    for round_ in range(1, 3):
        for s in seqs:
            bm.allocate(s, round_)
    blocks = [b for s in seqs for b in s.block_ids]
    assert len(blocks) == len(set(blocks)) == bm.num_used_blocks == 8


@pytest.mark.parametrize(
    ("num_blocks", "block_size", "needle"), [(1, 16, "num_blocks must be >= 2"), (4, 0, "block_size")]
)
def test_bad_construction(num_blocks, block_size, needle):
    with pytest.raises(ConfigError, match=needle):
        BlockManager(num_blocks, block_size)


def test_reserved_blocks_are_the_lowest_and_come_back():
    bm = BlockManager(num_blocks=10, block_size=4)
    assert bm.reserve(3) == range(1, 4)
    assert bm.num_free_blocks == 6 and bm.num_used_blocks == 3
    seq = Sequence(0, [1, 2, 3, 4, 5], SamplingParams())
    bm.allocate(seq, 5)
    assert not set(seq.block_ids) & {1, 2, 3}  # a sequence never gets a reserved block
    bm.release_reserved()
    assert bm.num_free_blocks == 9 - len(seq.block_ids)


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent, child = seq(0, 10), seq(1, 10)
    bm.allocate(parent, 10)  # blocks for positions 0-3, 4-7, 8-9
    num_cached, copy = bm.fork(parent, child, 9)
    assert num_cached == 9 and child.block_ids[:2] == parent.block_ids[:2]
    assert copy is not None and copy.src == parent.block_ids[2] and copy.dst == child.block_ids[2]
    assert bm.num_shared_blocks == 2 and bm.num_used_blocks == 4
    bm.free(parent)  # the shared blocks stay with the child
    assert bm.num_used_blocks == 3 and bm.num_shared_blocks == 0
    bm.free(child)
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == bm.num_usable_blocks


def test_fork_on_a_block_boundary_copies_nothing_and_without_a_free_block_shares_only_full_ones():
    bm = BlockManager(num_blocks=4, block_size=4)
    parent, child, other = seq(0, 9), seq(1, 9), seq(2, 9)
    bm.allocate(parent, 9)  # takes all 3 usable blocks
    assert bm.fork(parent, child, 8) == (8, None)
    assert bm.fork(parent, other, 7) == (4, None)  # no free block for a copy: recompute positions 4-6
    assert other.block_ids == parent.block_ids[:1]
