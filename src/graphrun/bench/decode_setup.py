"""What `graphrun bench decode` runs: its settings, fixed once from the flags and validated."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from graphrun.errors import ConfigError
from graphrun.llm.engine_config import cuda_graph_mode_name
from graphrun.llm.sampling_params import SamplingParams
from graphrun.preflight import check_model, check_tensor_parallel

__all__ = ["BLOCK_STEPS", "TP_ITERS_PER_STEP", "TP_ROUNDS", "TP_WARMUP", "DecodeSetup"]

BLOCK_STEPS = 5  # graph and eager alternate in blocks of this many steps
# --tp (decode_tp.py): timed calls per path are TP_ITERS_PER_STEP x --steps, graph and eager alternating
# in TP_ROUNDS rounds after TP_WARMUP untimed calls of each
TP_ITERS_PER_STEP = 4
TP_ROUNDS = 5
TP_WARMUP = 3


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
    # --tp: tensor-parallel sizes, each timed on its own ranks (decode_tp.py); (1,) is the engine bench
    tp_sizes: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        cuda_graph_mode_name(self.cuda_graph_mode)  # raises ConfigError naming the valid modes
        self._check_tp()
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

    def _check_tp(self) -> None:
        sizes = self.tp_sizes
        _check_tp_values(sizes)
        if not self.tp_mode:
            return
        for flag, used in (("--peers", self.peers), ("--profile", self.profile)):
            if used:
                raise ConfigError(f"{flag} is not measured with --tp {' '.join(map(str, sizes))}; drop one")
        if self.cuda_graph_mode != "full":
            raise ConfigError(
                f"--tp times the FULL decode graph per rank; --cuda-graph-mode {self.cuda_graph_mode} "
                "is not measured with it (leave the default, full)"
            )

    @property
    def tp_mode(self) -> bool:
        """Whether this run times tensor-parallel sizes (decode_tp.py) rather than the engine's steps."""
        return self.tp_sizes != (1,)

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
        tp_sizes = tuple(getattr(args, "tp", None) or (1,))
        _check_tp_values(tp_sizes)
        config = check_model(args.model)
        for size in tp_sizes:
            check_tensor_parallel(size, args.model, config, "--tp")
        _check_gpus(tp_sizes)
        if not torch.cuda.is_available():  # --tp above 1 was refused: it needs GPUs
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
            tp_sizes=tp_sizes,
        )

    def sync(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize()


def _check_tp_values(sizes: tuple[int, ...]) -> None:
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ConfigError(
            f"--tp takes distinct tensor-parallel sizes >= 1 (e.g. --tp 1 2), got {list(sizes)}"
        )


def _check_gpus(tp_sizes: tuple[int, ...]) -> None:
    """Tensor parallelism above 1 runs rank r on cuda:r: the largest size needs that many GPUs."""
    largest = max(tp_sizes, default=1)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if largest > 1 and largest > visible:
        raise ConfigError(
            f"--tp {largest} needs {largest} GPUs (one per rank), but {visible} "
            f"{'is' if visible == 1 else 'are'} visible; pass --tp sizes of at most {max(visible, 1)}"
        )


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None
