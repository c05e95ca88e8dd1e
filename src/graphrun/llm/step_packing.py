"""Fill a step's named inputs (step_inputs.py) from a ScheduledBatch's host lists.

Decode packing runs once per step on the host, inside the window where the device waits for the next
launch, so it writes whole fields through numpy views of the packed buffer: no per-element Python work
beyond the per-sequence block tables and sampling parameters.
"""

from __future__ import annotations

import numpy as np
import torch

from graphrun.llm.scheduler import ScheduledBatch
from graphrun.llm.step_inputs import DecodeInputs, PrefillInputs


def pack_decode(batch: ScheduledBatch, feed_rows: list[int], out: DecodeInputs) -> DecodeInputs:
    """Fill `out` (batch.num_tokens rows, host memory) with one row per token of a decode or mixed batch.

    A prompt chunk's token is a row like a decode token: its own position, slot and context length
    (position + 1), its sequence's seed, sampling parameters and block table. Block-table columns past a
    sequence's blocks are 0 (attention reads only blocks below the context length). A PLACEHOLDER token
    (its value still on the device) gets token id 0 and names its feed row.
    """
    assert out.num_rows == batch.num_tokens, (out.num_rows, batch.num_tokens)
    token_ids = out.token_ids.numpy()
    token_ids[:] = batch.input_ids
    np.maximum(token_ids, 0, out=token_ids)
    positions = out.positions.numpy()
    positions[:] = batch.positions
    out.slots.numpy()[:] = batch.slot_mapping
    np.add(positions, 1, out=out.context_lens.numpy())
    out.feed_rows.numpy()[:] = feed_rows
    seeds, tables = out.seeds.numpy(), out.block_tables.numpy()
    tables.fill(0)
    temperature, top_p, top_k = out.temperature.numpy(), out.top_p.numpy(), out.top_k.numpy()
    starts = batch.query_start
    for row, (seq, table) in enumerate(zip(batch.seqs, batch.block_tables, strict=True)):
        a, b = starts[row], starts[row + 1]
        params = seq.params
        seeds[a:b] = seq.rng_seed
        tables[a:b, : len(table)] = table
        with np.errstate(over="ignore"):  # a temperature beyond float32's range is inf, as in prefill
            temperature[a:b], top_p[a:b], top_k[a:b] = params.temperature, params.top_p, params.top_k
    return out


def pack_prefill(batch: ScheduledBatch, row: int, out_row: int) -> PrefillInputs:
    """One fresh prompt (batch row `row`) for a prefill graph; its token goes to last_tokens[out_row]."""
    starts = batch.query_start
    a, b = starts[row], starts[row + 1]
    seq = batch.seqs[row]
    params = seq.params
    inputs = PrefillInputs.empty(b - a)
    inputs.token_ids.copy_(torch.tensor(batch.input_ids[a:b], dtype=torch.int64))
    inputs.positions.copy_(torch.tensor(batch.positions[a:b], dtype=torch.int64))
    inputs.slots.copy_(torch.tensor(batch.slot_mapping[a:b], dtype=torch.int64))
    inputs.sample_row.fill_(b - a - 1)  # the last token's logits give the next token
    inputs.seed.fill_(seq.rng_seed)
    inputs.out_row.fill_(out_row)
    # through a float32 tensor, as pack_decode's numpy views do: a temperature beyond float32's range
    # becomes inf (sampling then draws uniformly) where fill_ would raise
    sampling = torch.tensor([params.temperature, params.top_p, float(params.top_k)], dtype=torch.float32)
    inputs.temperature.copy_(sampling[0])
    inputs.top_p.copy_(sampling[1])
    inputs.top_k.copy_(sampling[2])
    return inputs
