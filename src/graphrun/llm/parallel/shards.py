"""How a decoder splits across tensor-parallel ranks: which heads, MLP rows and vocabulary rows each holds.

Megatron-style splits, two all-reduces per layer:
- attention: rank r holds query heads [r * H/N, (r+1) * H/N) and the key/value heads they read. With at
  least N KV heads each rank holds KV/N of them; with fewer, each rank holds one KV head, replicated on
  the N/KV ranks whose query heads share it (vLLM's rule), so grouped-query attention stays rank-local.
- MLP: rank r holds intermediate rows [r * I/N, (r+1) * I/N) of gate and up, and the same columns of down.
- vocabulary: rank r holds ceil(V/N) rows of the embedding and LM head starting at r * ceil(V/N); the
  last rank's rows past V are padding (zero weights, never looked up, their logits dropped).
A size that does not split evenly is refused with a ShardError naming the dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.errors import ConfigError
from graphrun.llm.config import ModelConfig
from graphrun.llm.parallel.config import ParallelConfig


class ShardError(ConfigError):
    """A model dimension does not split across the requested tensor-parallel size."""


Rows = tuple[int, int]  # [start, end) of a dimension of the full (unsplit) tensor


@dataclass(frozen=True, slots=True)
class ShardLayout:
    """This rank's part of every split dimension; on one rank, the whole model."""

    parallel: ParallelConfig
    head_dim: int
    num_heads: int  # query heads on this rank
    head_start: int  # first query head of this rank
    num_kv_heads: int  # key/value heads on this rank (replicas included)
    kv_head_start: int
    intermediate_size: int  # MLP rows on this rank
    intermediate_start: int
    vocab_size: int  # the full vocabulary
    vocab_rows: int  # embedding / LM head rows on this rank, padding included
    vocab_start: int

    @classmethod
    def from_model(cls, config: ModelConfig, parallel: ParallelConfig) -> ShardLayout:
        """The split of `config` for `parallel`; a ShardError when a dimension does not divide."""
        n, r = parallel.world_size, parallel.rank
        heads = _per_rank("num_heads (attention heads)", config.num_heads, n)
        kv_heads, kv_start = _kv_heads(config.num_kv_heads, n, r)
        inter = _per_rank("intermediate_size", config.intermediate_size, n)
        vocab_rows = -(-config.vocab_size // n)
        return cls(
            parallel, config.head_dim, heads, r * heads, kv_heads, kv_start,
            inter, r * inter, config.vocab_size, vocab_rows, r * vocab_rows,
        )  # fmt: skip

    @property
    def holds_row_bias(self) -> bool:
        """Whether this rank adds the bias of a row-parallel projection: rank 0 only, so the all-reduce
        adds it once."""
        return self.parallel.rank == 0

    def q_rows(self) -> Rows:
        """This rank's rows of q_proj (and columns of o_proj) in the full tensor."""
        return self.head_start * self.head_dim, (self.head_start + self.num_heads) * self.head_dim

    def kv_rows(self) -> Rows:
        """This rank's rows of k_proj and of v_proj in the full tensors."""
        return self.kv_head_start * self.head_dim, (self.kv_head_start + self.num_kv_heads) * self.head_dim

    def intermediate_rows(self) -> Rows:
        """This rank's rows of gate_proj and up_proj (and columns of down_proj)."""
        return self.intermediate_start, self.intermediate_start + self.intermediate_size

    def vocab_real_rows(self) -> Rows:
        """The vocabulary rows this rank holds that exist (the rest of its vocab_rows is padding)."""
        return self.vocab_start, min(self.vocab_start + self.vocab_rows, self.vocab_size)


def _per_rank(name: str, size: int, world_size: int) -> int:
    if size % world_size:
        raise ShardError(
            f"{name}={size} is not divisible by tensor parallel size {world_size}; "
            f"choose a tensor parallel size that divides {size}"
        )
    return size // world_size


def _kv_heads(num_kv_heads: int, world_size: int, rank: int) -> tuple[int, int]:
    """(KV heads on this rank, the first of them): split when there are enough, else replicated."""
    if num_kv_heads >= world_size:
        per_rank = _per_rank("num_kv_heads (key/value heads)", num_kv_heads, world_size)
        return per_rank, rank * per_rank
    if world_size % num_kv_heads:
        raise ShardError(
            f"num_kv_heads (key/value heads)={num_kv_heads} does not divide tensor parallel size "
            f"{world_size} (fewer KV heads than ranks are replicated, evenly); choose a size that "
            f"{num_kv_heads} divides"
        )
    return 1, rank // (world_size // num_kv_heads)
