"""Engine settings: one frozen dataclass, validated on construction; CLI flags default from it.

Flag names follow vLLM where they overlap (max_num_seqs, max_model_len, gpu_memory_utilization,
enforce_eager, cuda_graph_max_bs, cuda_graph_sizes). Importing this module costs no torch: the CLI
builds its parsers and validates flags from it before anything heavy loads (`graphrun --help` stays
fast); only the methods that resolve a device or dtype import torch, when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from graphrun.errors import ConfigError

if TYPE_CHECKING:
    import torch

GRAPH_BACKENDS = ("auto", "cuda", "sim")
# graphs.modes.CudaGraphMode's values, spelled here so that this module imports no torch (a test checks)
CUDA_GRAPH_MODES = ("none", "full", "piecewise", "full_and_piecewise")
DTYPES = ("auto", "bfloat16", "float16", "float32")
CAPTURE_MODES = ("now", "background")
MIB = 2**20
# `graphrun serve`'s default prompt-token budget of a mixed step, by cuda graph mode. full: 64, so a mixed
# step never exceeds the top decode rung (past it, steps run eager and host-bound). With piecewise graphs a
# mixed step of any size replays those: 512 there, measured on an H100 (2026-12-07, commit fb6b046,
# concurrency 64, prompts median 512): 5993 tok/s, TTFT p50 72 ms, ITL p99/p50 1.45, against full with
# 64: 3339 tok/s, TTFT p50 2400 ms (benchmarks/results/serve-c64-fp-mixed512-*.json, serve-c64-full-*.json).
SERVE_MIXED_PREFILL_TOKENS = {"none": 64, "full": 64, "piecewise": 512, "full_and_piecewise": 512}


def serve_mixed_prefill_tokens(cuda_graph_mode: str) -> int:
    """The server's default mixed-step prompt budget for a cuda graph mode (SERVE_MIXED_PREFILL_TOKENS)."""
    return SERVE_MIXED_PREFILL_TOKENS[cuda_graph_mode]


def cuda_graph_mode_name(text: str) -> str:
    """A --cuda-graph-mode value in EngineConfig's spelling: any case, '-' or '_' ("FULL_AND_PIECEWISE",
    "full-and-piecewise"); a bad one raises ConfigError (a ValueError: argparse reports it) naming the valid
    ones."""
    name = text.strip().lower().replace("-", "_")
    if name not in CUDA_GRAPH_MODES:
        raise ConfigError(f"cuda graph mode must be one of {', '.join(CUDA_GRAPH_MODES)}, got {text!r}")
    return name


class GraphsOff(StrEnum):
    """Why an engine decodes without graphs: a closed set, so it can label a metric."""

    ENFORCE_EAGER = "enforce_eager"
    MAX_BS_ZERO = "cuda_graph_max_bs_0"
    NO_CUDA_DEVICE = "no_cuda_device"  # graph_backend "auto" on a device without CUDA graphs
    MODE_NONE = "cuda_graph_mode_none"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What to load and how to run it. `max_model_len=None` takes min(4096, the model's own limit)."""

    model: str = "tiny"
    device: str = "auto"  # "auto": cuda when available, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    max_num_seqs: int = 64  # also the top of the decode capture ladder
    max_model_len: int | None = None
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_bytes: int = 64 * MIB
    enforce_eager: bool = False
    cuda_graph_max_bs: int | None = None  # None: max_num_seqs; 0: no graphs
    cuda_graph_sizes: tuple[int, ...] = ()
    # "auto": CUDA graphs on a CUDA device, none (eager) elsewhere, as GraphRunner's backend="auto";
    # "sim": the CPU graph simulator (tests); "cuda": CUDA graphs or an error
    graph_backend: str = "auto"
    seed: int = 0
    # schedule step n+1 on the host while the device runs step n (tokens feed forward on the device);
    # False: every step ends with its tokens on the host (simpler to reason about, slower)
    async_scheduling: bool = True
    # fresh prefills (prompts from position 0) up to this many tokens replay a graph per prompt;
    # None: min(max_num_batched_tokens, max_model_len, 2048); 0: prefill always runs eager
    cuda_graph_max_prefill_tokens: int | None = None
    # prompt tokens a decode step may carry (scheduler.py's mixed batches): running streams keep their
    # pace while new prompts prefill in small chunks beside them, at the cost of slower prefill. 0 (the
    # engine's default, for offline batch jobs that want throughput): prefill and decode steps alternate.
    # `graphrun serve` defaults to serve_mixed_prefill_tokens(mode): streams want a steady inter-token latency
    mixed_prefill_tokens: int = 0
    # how far that budget grows while prompts queue up (scheduler.py's SchedulerConfig.mixed_budget: enough
    # to clear the queue in a few steps); None: the top piecewise rung with piecewise graphs, else no growth
    max_mixed_prefill_tokens: int | None = None
    # compile each graph's callable (AOTInductor, else torch.compile) before capture (graphs/compile.py);
    # compile_cache_dir: a folder that keeps the compiled artifacts so a restart reuses them
    compile: bool = False
    compile_cache_dir: str | None = None
    # when the graphs are captured: "now" (start-up waits for every rung) or "background" (start-up
    # ends once the KV cache is allocated; the engine captures the rungs between steps, largest first,
    # and each rung replays once captured and verified; eager until then: llm/background_graphs.py)
    capture: str = "now"
    # full prompt blocks are found again by their tokens across requests (prefix_cache.py); their
    # prefill is skipped and the rest of the prompt runs as a continuation chunk (eager)
    enable_prefix_caching: bool = True

    # which graphs the engine captures (graphs/modes.py): "full": decode graphs (uniform decode) and
    # one-prompt fresh prefill graphs, the rest eager; "piecewise": the model body per token rung with
    # attention eager between the segments (llm/piecewise_graph.py) for every step;
    # "full_and_piecewise": FULL for uniform decode and single fresh prompts, PIECEWISE for prefill
    # batches, continuation chunks and mixed steps (no longer capped at the top decode rung); "none": eager.
    # The default is "full_and_piecewise", the measured choice since the piecewise steps' attention became
    # one Triton launch per layer: on an H100 (2026-12-07, commit fb6b046, concurrency 64) it served 5993
    # tok/s with a 512-token mixed budget against full's 3339 (TTFT p50 72 against 2400 ms); before that
    # kernel it served 1004 against 3330 (benchmarks/results/serve-c64-modes-*.json, commit b95e8c6).
    cuda_graph_mode: str = "full_and_piecewise"
    # a fault drill (graphs/backends/faulty.py): once every graph is captured, this fraction of graph
    # replays fails and runs eager instead, counted as replay_error fallbacks; 0: none (never in production)
    replay_fault_rate: float = 0.0
    # tensor-parallel ranks (llm/parallel/): this process is rank 0 and starts the others, one per GPU
    # (rank r on cuda:r; gloo processes on the CPU); each holds its shard of every layer
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        self._check_tensor_parallel()
        if self.capture not in CAPTURE_MODES:
            raise ConfigError(f"capture must be one of {CAPTURE_MODES}, got {self.capture!r}")
        if self.cuda_graph_mode not in CUDA_GRAPH_MODES:
            raise ConfigError(
                f"cuda_graph_mode must be one of {CUDA_GRAPH_MODES}, got {self.cuda_graph_mode!r}"
            )
        if self.graph_backend not in GRAPH_BACKENDS:
            raise ConfigError(f"graph_backend must be one of {GRAPH_BACKENDS}, got {self.graph_backend!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.compile_cache_dir is not None and not self.compile:
            raise ConfigError(
                f"compile_cache_dir={self.compile_cache_dir!r} is used only with compile on (--compile)"
            )
        if not 0.0 <= self.replay_fault_rate <= 1.0:
            raise ConfigError(f"replay_fault_rate must be in [0, 1], got {self.replay_fault_rate}")
        if self.mixed_prefill_tokens < 0:
            raise ConfigError(
                f"mixed_prefill_tokens must be >= 0 (0: no mixed steps), got {self.mixed_prefill_tokens}"
            )
        ceiling = self.max_mixed_prefill_tokens
        if ceiling is not None and ceiling < self.mixed_prefill_tokens:
            raise ConfigError(
                f"max_mixed_prefill_tokens ({ceiling}) must be >= mixed_prefill_tokens "
                f"({self.mixed_prefill_tokens}): the mixed budget grows from the second up to the first"
            )
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "cpu_kv_cache_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.cuda_graph_max_bs is not None and self.cuda_graph_max_bs < 0:
            raise ConfigError(
                f"cuda_graph_max_bs must be >= 0 (0 turns graphs off), got {self.cuda_graph_max_bs}"
            )
        if self.cuda_graph_max_prefill_tokens is not None and self.cuda_graph_max_prefill_tokens < 0:
            raise ConfigError(
                "cuda_graph_max_prefill_tokens must be >= 0 (0: eager prefill), "
                f"got {self.cuda_graph_max_prefill_tokens}"
            )
        if any(s < 1 for s in self.cuda_graph_sizes):
            raise ConfigError(f"cuda_graph_sizes must be positive, got {list(self.cuda_graph_sizes)}")

    def _check_tensor_parallel(self) -> None:
        size = self.tensor_parallel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"tensor_parallel_size must be an int >= 1, got {size!r}")
        if size > 1 and self.capture == "background":
            raise ConfigError(
                "capture='background' paces captures by each rank's own clock, so tensor-parallel ranks "
                "would capture at different steps; use capture='now' with tensor_parallel_size > 1"
            )

    def resolved_device(self) -> torch.device:
        """The device to run on (rank 0's, with tensor parallelism: each rank r runs on cuda:r)."""
        import torch

        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={self.device!r} but no CUDA device is visible; use device='cpu'")
        if device.type == "cuda" and self.tensor_parallel_size > 1:
            visible = torch.cuda.device_count()
            if self.tensor_parallel_size > visible:
                raise ConfigError(
                    f"tensor_parallel_size={self.tensor_parallel_size} needs that many GPUs, but {visible} "
                    f"{'is' if visible == 1 else 'are'} visible; pass at most {visible}"
                )
            if device.index not in (None, 0):
                raise ConfigError(
                    f"device={self.device!r}: with tensor parallelism rank r runs on cuda:r; pass 'cuda'"
                )
            device = torch.device("cuda", 0)
        return device

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        """The weights' and cache's dtype."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype

    def graph_backend_for(self, device: torch.device) -> str | None:
        """The capture backend for decode, or None when decode runs eager.

        "auto" means what it means for GraphRunner (graphs.backends.resolve_backend_name): CUDA graphs
        on a CUDA device, no graphs anywhere else; the simulator only when named.
        """
        from graphrun.graphs.backends import resolve_backend_name

        if self.enforce_eager or self.cuda_graph_max_bs == 0 or self.cuda_graph_mode == "none":
            return None
        if self.graph_backend == "auto":
            resolved = resolve_backend_name("auto", device)
            return None if resolved == "eager" else resolved
        if self.graph_backend == "cuda" and device.type != "cuda":
            raise ConfigError("graph_backend='cuda' needs device='cuda'")
        if self.graph_backend == "sim" and device.type != "cpu":
            raise ConfigError("graph_backend='sim' simulates graphs on the CPU; it needs device='cpu'")
        return self.graph_backend

    def graphs_off(self, device: torch.device) -> GraphsOff | None:
        """Why decode is not graph-captured on `device` (None: it is); the label /metrics shows."""
        if self.enforce_eager:
            return GraphsOff.ENFORCE_EAGER
        if self.cuda_graph_max_bs == 0:
            return GraphsOff.MAX_BS_ZERO
        if self.cuda_graph_mode == "none":
            return GraphsOff.MODE_NONE
        return GraphsOff.NO_CUDA_DEVICE if self.graph_backend_for(device) is None else None

    def why_eager(self, device: torch.device) -> str:
        """One line saying why decode is not graph-captured."""
        reason = self.graphs_off(device)
        return _GRAPHS_OFF_TEXT[reason] if reason is not None else "graphs disabled"

    def piecewise_graphs(self, device: torch.device) -> bool:
        """Whether the engine captures PIECEWISE graphs of the model body on `device`."""
        return "piecewise" in self.cuda_graph_mode and self.graph_backend_for(device) is not None

    def full_graphs(self, device: torch.device) -> bool:
        """Whether the engine captures FULL decode (and fresh-prefill) graphs on `device`."""
        return "full" in self.cuda_graph_mode and self.graph_backend_for(device) is not None


_GRAPHS_OFF_TEXT = {
    GraphsOff.ENFORCE_EAGER: "--enforce-eager",
    GraphsOff.MAX_BS_ZERO: "--cuda-graph-max-bs 0",
    GraphsOff.NO_CUDA_DEVICE: "no CUDA device",
    GraphsOff.MODE_NONE: "--cuda-graph-mode none",
}
