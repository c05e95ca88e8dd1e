"""What rank 0 tells the other tensor-parallel ranks once per step, and the fingerprint that checks them.

Every rank runs the same engine and its own scheduler; rank 0 alone hears from the outside world (the
API, the server). So once per step, before scheduling, rank 0 sends one StepCommand: the requests added
and aborted since the last step, in the order they happened, with their token ids, sampling parameters
and seq ids; the scheduling mode; or stop. A rank that applies the same events in the same order, and
samples the same tokens (the logits are all-gathered, bit-identical on every rank, and each row samples
with its own seed), schedules the same batches. batch_fingerprint() turns a scheduled batch into one
int64 that the ranks compare each step (control.py), so a divergence is an error, never silent.

Everything here is a frozen dataclass of plain values: it pickles small and carries no engine state
(no sequences, no grammar matchers: each rank compiles its own from the request's parameters).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from graphrun.llm.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request rank 0 admitted: its seq ids (one per choice), prompt ids and sampling parameters.
    choices: it came through add_choices (n choices sharing one prefill), else add_request."""

    seq_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    choices: bool


@dataclass(frozen=True, slots=True)
class Abort:
    """A sequence rank 0 stopped (its client went away)."""

    seq_id: int


RankEvent = NewRequest | Abort


@dataclass(frozen=True, slots=True)
class StepCommand:
    """One step's orders: apply `events` in order, set the scheduling mode, then step; or stop."""

    events: tuple[RankEvent, ...] = ()
    async_scheduling: bool = True
    stop: bool = False


_KINDS = {"prefill": 1, "decode": 2, "mixed": 3}


def batch_fingerprint(
    kind: str | None, seq_ids: Sequence[int], num_new_tokens: Sequence[int], context_lens: Sequence[int]
) -> int:
    """A signed int64 digest of a scheduled batch (kind None: no batch); equal batches, equal digests."""
    if kind is None:
        return 0
    values = [_KINDS[kind], len(seq_ids), *seq_ids, *num_new_tokens, *context_lens]
    digest = hashlib.blake2b(struct.pack(f"<{len(values)}q", *values), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
