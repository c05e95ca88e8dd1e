"""What `graphrun bench decode` runs: its settings, fixed once from the flags and validated."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from graphrun.errors import ConfigError
from graphrun.llm.engine_config import cuda_graph_mode_name
from graphrun.llm.sampling_params import SamplingParams

__all__ = ["BLOCK_STEPS", "DecodeSetup"]

BLOCK_STEPS = 5  # graph and eager alternate in blocks of this many steps


@dataclass(frozen=True, slots=True)
class DecodeSetup:
    """What the decode benchmark runs and where, fixed once from the flags and validated here."""

    model: str
    batch_sizes: tuple[int, ...]
    context: int
    new_tokens: int
    steps: int
    warmup: int
    dtype: str
    device: str  # "cuda" or "cpu"
    peers: bool
    peer_batch_sizes: tuple[int, ...]
    out: Path
    copy_bytes: int = 2**30  # device copy size for the bandwidth measurement
    seed: int = 0
    cuda_graph_mode: str = "full"  # the "graph" path's EngineConfig.cuda_graph_mode
    profile: bool = False  # after the timed runs, a per-kernel profile of the graphed step

    def __post_init__(self) -> None:
        cuda_graph_mode_name(self.cuda_graph_mode)  # raises ConfigError naming the valid modes
        if self.profile and not self.cuda:
            raise ConfigError(
                "--profile needs CUDA: it profiles the device kernels of the captured decode graph, and "
                "without a GPU the bench runs the tiny preset on the sim backend; drop --profile here"
            )
        if self.profile and self.cuda_graph_mode not in ("full", "full_and_piecewise"):
            raise ConfigError(
                f"--profile profiles the FULL decode graph, which --cuda-graph-mode {self.cuda_graph_mode} "
                "does not capture; use --cuda-graph-mode full or full-and-piecewise"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        if min(self.context, self.steps) < 1 or self.warmup < 0:
            raise ConfigError(f"--context and --steps must be >= 1, got {self.context} and {self.steps}")
        if self.new_tokens - 1 < self.decode_steps_needed:
            raise ConfigError(
                f"--new-tokens {self.new_tokens} leaves {self.new_tokens - 1} decode steps per request, but "
                f"the timing needs {self.decode_steps_needed} (1 probe + 2 x ({self.warmup} warm-up + "
                f"{self.steps} --steps) synchronized + {BLOCK_STEPS} warm-up + 2 x "
                f"{self.pipelined_blocks * (BLOCK_STEPS + 1)} pipelined); raise --new-tokens or lower --steps"
            )
        extra = sorted(set(self.peer_batch_sizes) - set(self.batch_sizes))
        if extra:
            raise ConfigError(f"--peer-batch-sizes {extra} are not in --batch-sizes {list(self.batch_sizes)}")

    @property
    def decode_steps_needed(self) -> int:
        """Decode steps one batch point uses: the probe, warm-up and timed synchronized steps of both
        paths, one warm-up block of pipelined steps, and the timed pipelined steps of both paths."""
        return (
            1 + 2 * (self.warmup + self.steps) + BLOCK_STEPS + 2 * self.pipelined_blocks * (BLOCK_STEPS + 1)
        )

    @property
    def pipelined_blocks(self) -> int:
        """Timed pipelined blocks per path (each BLOCK_STEPS steps): about `steps` steps."""
        return max(1, self.steps // BLOCK_STEPS)

    @property
    def params(self) -> SamplingParams:
        """Greedy, exactly new_tokens tokens per request."""
        return SamplingParams(temperature=0.0, max_tokens=self.new_tokens, ignore_eos=True)

    @property
    def cuda(self) -> bool:
        """Whether this is a real measurement (CUDA graphs on a GPU)."""
        return self.device == "cuda"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DecodeSetup:
        """The flags on a GPU; without CUDA the tiny preset at tiny sizes (only --peers and --out count)."""
        out = Path(args.out)
        mode = cuda_graph_mode_name(getattr(args, "cuda_graph_mode", None) or "full")
        if not torch.cuda.is_available():
            # model, batch sizes, context, new tokens, steps, warm-up, dtype, device, peers, peer sizes, out
            tiny = ("tiny", (1, 2), 16, 8, 3, 0, "float32", "cpu", args.peers, (1, 2), out)
            return cls(*tiny, cuda_graph_mode=mode, profile=getattr(args, "profile", False))
        batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
        peer_sizes = args.peer_batch_sizes
        return cls(
            model=args.model,
            batch_sizes=batch_sizes,
            context=args.context,
            new_tokens=args.new_tokens,
            steps=args.steps,
            warmup=2,
            dtype=args.dtype,
            device="cuda",
            peers=args.peers,
            peer_batch_sizes=_int_list(peer_sizes, "--peer-batch-sizes") if peer_sizes else batch_sizes,
            out=out,
            cuda_graph_mode=mode,
            profile=getattr(args, "profile", False),
        )

    def sync(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize()


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None
