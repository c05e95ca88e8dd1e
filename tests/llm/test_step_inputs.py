"""Per-step inputs: each named field round-trips through the packed tensors, and packing fills them."""

import pytest
import torch

from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import PLACEHOLDER, ScheduledBatch
from graphrun.llm.sequence import Sequence
from graphrun.llm.step_inputs import (
    DECODE_INT_FIELDS,
    PREFILL_SEQ_FIELDS,
    PREFILL_TOKEN_FIELDS,
    SAMPLING_FIELDS,
    DecodeInputs,
    HostStaging,
    PrefillInputs,
)
from graphrun.llm.step_packing import pack_decode, pack_prefill

VECTOR_FIELDS = (*DECODE_INT_FIELDS, *SAMPLING_FIELDS)


def test_decode_fields_round_trip_through_the_packed_tensors():
    """Write every field by name, rebuild from the packed tensors alone (as a graph sees them), read back."""
    step = DecodeInputs.empty(5, 3)
    for i, name in enumerate(VECTOR_FIELDS):
        getattr(step, name).copy_(torch.arange(5) * 10 + i)  # distinct per field: an overlap would show
    step.block_tables.copy_(torch.arange(15).view(5, 3) + 100)
    again = DecodeInputs.over(*step.packed())
    for i, name in enumerate(VECTOR_FIELDS):
        want = (torch.arange(5) * 10 + i).to(getattr(again, name).dtype)
        assert torch.equal(getattr(again, name), want), name
    assert torch.equal(again.block_tables, torch.arange(15).view(5, 3) + 100)
    assert step.ints.shape == (5, len(DECODE_INT_FIELDS) + 3)
    assert step.floats.shape == (5, len(SAMPLING_FIELDS))


def test_decode_rows_alias_the_buffer_and_to_copies():
    step = DecodeInputs.empty(4, 2)
    step.ints.zero_()
    head = step.rows(2)
    head.positions.fill_(7)
    assert step.positions.tolist() == [7, 7, 0, 0] and head.num_rows == 2
    moved = step.to("cpu")
    assert moved.ints is step.ints  # .to() of a tensor already there is the tensor itself
    assert torch.equal(DecodeInputs.over(moved.ints.clone(), moved.floats).positions, step.positions)


def test_prefill_fields_round_trip_through_the_packed_tensors():
    step = PrefillInputs.empty(6)
    for i, name in enumerate(PREFILL_TOKEN_FIELDS):
        getattr(step, name).copy_(torch.arange(6) + 10 * i)
    for i, name in enumerate((*PREFILL_SEQ_FIELDS, *SAMPLING_FIELDS)):
        getattr(step, name).fill_(i + 1)
    again = PrefillInputs.over(*step.packed())
    for i, name in enumerate(PREFILL_TOKEN_FIELDS):
        assert getattr(again, name).tolist() == [x + 10 * i for x in range(6)], name
    for i, name in enumerate((*PREFILL_SEQ_FIELDS, *SAMPLING_FIELDS)):
        assert getattr(again, name).tolist() == [i + 1], name
    assert again.num_tokens == 6


def _seq(seq_id, temperature, top_k=0, top_p=1.0, seed=None):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_tokens=4)
    return Sequence(seq_id, [1, 2, 3], params)


def _mixed_batch():
    """Two decode rows (the second fed from the device), then a three-token prompt chunk."""
    seqs = [_seq(0, 0.0, seed=11), _seq(1, 0.7, top_k=5, top_p=0.5, seed=12), _seq(2, 1.0, seed=13)]
    return ScheduledBatch(
        kind="mixed",
        seqs=seqs,
        num_new_tokens=[1, 1, 3],
        input_ids=[42, PLACEHOLDER, 5, 6, 7],
        positions=[9, 20, 0, 1, 2],
        slot_mapping=[41, 52, 64, 65, 66],
        block_tables=[[2], [3, 4], [5]],
        context_lens=[10, 21, 3],
        sample_rows=[0, 1, 2],
    )


def test_pack_decode_fills_every_field_by_row():
    batch = _mixed_batch()
    out = DecodeInputs.empty(5, 3)
    out.ints.fill_(-7)  # staging keeps old contents: packing must overwrite every field
    out.floats.fill_(-7)
    step = pack_decode(batch, [-1, 3, -1, -1, -1], out)
    assert step.token_ids.tolist() == [42, 0, 5, 6, 7]  # the placeholder row reads its feed row instead
    assert step.feed_rows.tolist() == [-1, 3, -1, -1, -1]
    assert step.positions.tolist() == [9, 20, 0, 1, 2]
    assert step.slots.tolist() == [41, 52, 64, 65, 66]
    assert step.context_lens.tolist() == [10, 21, 1, 2, 3]
    assert step.seeds.tolist() == [11, 12, 13, 13, 13]
    assert step.block_tables.tolist() == [[2, 0, 0], [3, 4, 0], [5, 0, 0], [5, 0, 0], [5, 0, 0]]
    assert step.temperature.tolist() == pytest.approx([0.0, 0.7, 1.0, 1.0, 1.0])
    assert step.top_p.tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0, 1.0])
    assert step.top_k.tolist() == [0, 5, 0, 0, 0]


def test_pack_prefill_takes_one_rows_prompt():
    batch = _mixed_batch()
    step = pack_prefill(batch, 2, out_row=4)
    assert step.token_ids.tolist() == [5, 6, 7] and step.positions.tolist() == [0, 1, 2]
    assert step.slots.tolist() == [64, 65, 66]
    assert step.sample_row.tolist() == [2] and step.seed.tolist() == [13] and step.out_row.tolist() == [4]
    assert step.temperature.tolist() == [1.0] and step.top_k.tolist() == [0.0]


def test_a_temperature_beyond_float32_packs_as_inf_in_both_steps():
    batch = _mixed_batch()
    huge = _seq(2, 1e300, seed=13)  # finite for Python, not for float32: a fuzzed request sent one
    batch.seqs[2] = huge
    assert pack_prefill(batch, 2, out_row=4).temperature.tolist() == [float("inf")]
    step = pack_decode(batch, [-1, 3, -1, -1, -1], DecodeInputs.empty(5, 3))
    assert step.temperature.tolist()[2:] == [float("inf")] * 3


def test_host_staging_alternates_two_sets():
    staging = HostStaging(4, 2, pin_memory=False)
    first, second, third = staging.next(3), staging.next(3), staging.next(2)
    assert first.ints.data_ptr() != second.ints.data_ptr()
    assert third.ints.data_ptr() == first.ints.data_ptr() and third.num_rows == 2
    assert staging.next(3) is second  # the views of a (set, size) are made once
    with pytest.raises(AssertionError):
        staging.next(5)
