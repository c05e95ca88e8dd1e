"""A captured step's per-step inputs as named fields: views over a few packed tensors.

A captured graph reads its inputs from static tensors, and each host-to-device copy costs a launch, so a
step's per-token state travels packed: one int64 tensor and one float32 tensor per decode step (two
copies, whatever the number of fields or layers). Code never indexes those tensors by column: the
classes here are frozen sets of named views that alias the packed tensors, so writing a field writes
the packed buffer, and the packed buffer is what is copied and what a graph captures. The order of the
names in each *_FIELDS tuple is the packed layout, and this module is the only place that knows it.

Built from a ScheduledBatch by step_packing.py; read by decode_graph.py and prefill_graph.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# decode ints, one row per token: the block table (max_blocks_per_seq columns) follows these
DECODE_INT_FIELDS = ("token_ids", "positions", "slots", "context_lens", "seeds", "feed_rows")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")  # float32; top_k exact below 2**24
PREFILL_TOKEN_FIELDS = ("token_ids", "positions", "slots")  # one row per token
PREFILL_SEQ_FIELDS = ("sample_row", "seed", "out_row")  # one value each, for the one sequence


@dataclass(frozen=True, slots=True)
class DecodeInputs:
    """A decode (or mixed) step's inputs, one row per token, as views of `ints` and `floats`."""

    ints: torch.Tensor  # (num_rows, len(DECODE_INT_FIELDS) + max_blocks_per_seq) int64: the packed buffer
    floats: torch.Tensor  # (num_rows, len(SAMPLING_FIELDS)) float32: the packed buffer
    token_ids: torch.Tensor  # (num_rows,) int64; a row fed from last_tokens holds 0 here
    positions: torch.Tensor  # (num_rows,) int64
    slots: torch.Tensor  # (num_rows,) int64: cache slot of the row's K/V
    context_lens: torch.Tensor  # (num_rows,) int64: tokens in the cache after this step (position + 1)
    seeds: torch.Tensor  # (num_rows,) int64: sampling seed of the row's sequence
    feed_rows: torch.Tensor  # (num_rows,) int64: row of last_tokens holding the input token, -1: token_ids
    block_tables: torch.Tensor  # (num_rows, max_blocks_per_seq) int64, 0 past the sequence's blocks
    temperature: torch.Tensor  # (num_rows,) float32
    top_p: torch.Tensor  # (num_rows,) float32
    top_k: torch.Tensor  # (num_rows,) float32

    @classmethod
    def over(cls, ints: torch.Tensor, floats: torch.Tensor) -> DecodeInputs:
        """Named views of packed tensors (nothing copied): fields read and write `ints` and `floats`."""
        fixed = len(DECODE_INT_FIELDS)
        assert ints.shape[1] > fixed and floats.shape[1] == len(SAMPLING_FIELDS), (ints.shape, floats.shape)
        named = {name: ints[:, i] for i, name in enumerate(DECODE_INT_FIELDS)}
        named |= {name: floats[:, i] for i, name in enumerate(SAMPLING_FIELDS)}
        return cls(ints=ints, floats=floats, block_tables=ints[:, fixed:], **named)

    @classmethod
    def empty(
        cls,
        num_rows: int,
        max_blocks_per_seq: int,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
    ) -> DecodeInputs:
        """Uninitialised inputs for num_rows tokens (pinned host memory with pin_memory)."""
        width = len(DECODE_INT_FIELDS) + max_blocks_per_seq
        ints = torch.empty(num_rows, width, dtype=torch.int64, device=device, pin_memory=pin_memory)
        floats = torch.empty(
            num_rows, len(SAMPLING_FIELDS), dtype=torch.float32, device=device, pin_memory=pin_memory
        )
        return cls.over(ints, floats)

    @property
    def num_rows(self) -> int:
        """Tokens (rows) in the step."""
        return int(self.ints.shape[0])

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ints, floats): what a decode graph takes and what one copy per tensor moves."""
        return self.ints, self.floats

    def rows(self, n: int) -> DecodeInputs:
        """The leading n rows, still aliasing this buffer."""
        return DecodeInputs.over(self.ints[:n], self.floats[:n])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DecodeInputs:
        """A copy on `device` (two copies, one per packed tensor)."""
        ints = self.ints.to(device, non_blocking=non_blocking)
        return DecodeInputs.over(ints, self.floats.to(device, non_blocking=non_blocking))


@dataclass(frozen=True, slots=True)
class PrefillInputs:
    """One fresh sequence's prefill inputs as views of three packed tensors (prefill_graph.py).

    `tokens` is batched by token (a graph rung pads it with zero rows); `seq` and `floats` describe the
    sequence and stay one row whatever the rung.
    """

    tokens: torch.Tensor  # (num_tokens, len(PREFILL_TOKEN_FIELDS)) int64: the packed token rows
    seq: torch.Tensor  # (len(PREFILL_SEQ_FIELDS),) int64
    floats: torch.Tensor  # (len(SAMPLING_FIELDS),) float32
    token_ids: torch.Tensor  # (num_tokens,) int64
    positions: torch.Tensor  # (num_tokens,) int64
    slots: torch.Tensor  # (num_tokens,) int64
    sample_row: torch.Tensor  # (1,) int64: the token row whose logits are sampled (the last real one)
    seed: torch.Tensor  # (1,) int64
    out_row: torch.Tensor  # (1,) int64: the row of last_tokens that receives the sampled token
    temperature: torch.Tensor  # (1,) float32
    top_p: torch.Tensor  # (1,) float32
    top_k: torch.Tensor  # (1,) float32

    @classmethod
    def over(cls, tokens: torch.Tensor, seq: torch.Tensor, floats: torch.Tensor) -> PrefillInputs:
        """Named views of packed tensors (nothing copied)."""
        assert tokens.shape[1] == len(PREFILL_TOKEN_FIELDS), tokens.shape
        named = {name: tokens[:, i] for i, name in enumerate(PREFILL_TOKEN_FIELDS)}
        named |= {name: seq[i : i + 1] for i, name in enumerate(PREFILL_SEQ_FIELDS)}
        named |= {name: floats[i : i + 1] for i, name in enumerate(SAMPLING_FIELDS)}
        return cls(tokens=tokens, seq=seq, floats=floats, **named)

    @classmethod
    def empty(cls, num_tokens: int, device: torch.device | str = "cpu") -> PrefillInputs:
        """Uninitialised inputs for a prompt of num_tokens tokens."""
        return cls.over(
            torch.empty(num_tokens, len(PREFILL_TOKEN_FIELDS), dtype=torch.int64, device=device),
            torch.empty(len(PREFILL_SEQ_FIELDS), dtype=torch.int64, device=device),
            torch.empty(len(SAMPLING_FIELDS), dtype=torch.float32, device=device),
        )

    @property
    def num_tokens(self) -> int:
        """Tokens (rows) of the prompt chunk."""
        return int(self.tokens.shape[0])

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, seq, floats): what a prefill graph takes."""
        return self.tokens, self.seq, self.floats


class HostStaging:
    """Host twins of a decode step's packed inputs, filled by name, then copied to the device at once.

    Pinned on CUDA, so the copy is asynchronous. Two sets, used in turn: with asynchronous scheduling
    step n+1 is staged while step n's copy may still be queued; the engine waits for step n's tokens
    (after its copy) before it stages step n+2 in the same set.
    """

    def __init__(self, max_rows: int, max_blocks_per_seq: int, pin_memory: bool) -> None:
        self._sets = [DecodeInputs.empty(max_rows, max_blocks_per_seq, pin_memory=pin_memory) for _ in "ab"]
        self._rows: dict[tuple[int, int], DecodeInputs] = {}  # (set, num_rows) -> its views, made once
        self._turn = 0
        self.pinned = pin_memory

    @property
    def max_rows(self) -> int:
        """The most rows one step can stage."""
        return self._sets[0].num_rows

    def next(self, num_rows: int) -> DecodeInputs:
        """The next set's leading num_rows rows (contents left from earlier steps: fill every field)."""
        assert num_rows <= self.max_rows, (num_rows, self.max_rows)
        key = (self._turn, num_rows)
        staged = self._rows.get(key)
        if staged is None:
            staged = self._rows[key] = self._sets[self._turn].rows(num_rows)
        self._turn ^= 1
        return staged
