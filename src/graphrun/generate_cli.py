"""`graphrun generate`: offline generation from the command line, with a progress bar for batch jobs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from graphrun.compile_flags import add_compile_flags, add_cuda_graph_mode_flag
from graphrun.errors import ConfigError, GraphrunError
from graphrun.llm.engine_config import DTYPES, EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.parallel_flags import add_tensor_parallel_flag
from graphrun.preflight import check_engine_model, check_file
from graphrun.refuse import refuse


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    """Register `generate` and its flags (defaults from EngineConfig)."""
    defaults = EngineConfig()
    p = sub.add_parser("generate", help="generate text for prompts with the LLM engine")
    p.add_argument(
        "--model", default=defaults.model, help="a preset (tiny, qwen3-0.6b-shape, ...) or a HF folder"
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument("--prompts-file", type=Path, help="a file with one prompt per line")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default=defaults.dtype, choices=DTYPES)
    p.add_argument("--json", action="store_true", help="one JSON object per prompt instead of text")
    add_compile_flags(p)
    add_cuda_graph_mode_flag(p)
    add_tensor_parallel_flag(p)


def run_generate(args: argparse.Namespace) -> int:
    """Check the flags (no torch yet), load the model, generate, print each completion; 2 on bad input."""
    try:
        prompts = _prompts(args)
        params = SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            max_tokens=args.max_tokens,
            ignore_eos=args.ignore_eos,
        )
        options: dict[str, Any] = {
            "enforce_eager": args.enforce_eager,
            "max_num_seqs": args.max_num_seqs,
            "max_model_len": args.max_model_len,
            "dtype": args.dtype,
            "compile": args.compile,
            "compile_cache_dir": args.compile_cache_dir,
            "cuda_graph_mode": args.cuda_graph_mode,
            "tensor_parallel_size": args.tensor_parallel_size,
        }
        check_engine_model(EngineConfig(model=args.model, **options))
    except GraphrunError as exc:
        return refuse("generate", exc)
    from graphrun.llm.api import LLM  # torch loads here, once the flags are known to be sound

    try:
        with LLM(args.model, **options) as llm:
            outputs = llm.generate(prompts, params, progress=len(prompts) > 1)
    except GraphrunError as exc:
        return refuse("generate", exc)
    for out in outputs:
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": out.prompt,
                        "text": out.text,
                        "token_ids": out.token_ids,
                        "finish_reason": out.finish_reason,
                    }
                )
            )
        else:
            print(f"--- {out.prompt!r} ({len(out.token_ids)} tokens, {out.finish_reason})\n{out.text}")
    stats = llm.last_stats
    if stats is not None:
        print(
            f"{stats.num_output_tokens} tokens in {stats.seconds:.2f} s "
            f"({stats.tokens_per_second:.0f} tok/s)",
            file=sys.stderr,
        )
    return 0


def _prompts(args: argparse.Namespace) -> list[str]:
    """--prompt values, then the lines of --prompts-file; at least one."""
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        check_file(args.prompts_file, "--prompts-file")
        prompts += [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("give at least one --prompt or a --prompts-file")
    return prompts
