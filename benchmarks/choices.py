"""n choices of one prompt against n separate requests: how many prefills, how long, how many tokens/s.

Target (issue 20): n=4 from one prompt prefills once and has >= 3x the throughput of four separate
requests for the same prompt. The separate requests are timed two ways: submitted together (the engine
batches their decode, so only the 3 extra prefills differ) and one after another (what a client without
`n` does when it wants the answers in turn). The choices share one prefill, so the gain grows with the
prompt's share of the work: a long prompt and few output tokens is where `n` pays most.

Through the offline API (`LLM.generate(..., n=...)`, one engine), after a warm-up of each way. The
choices are seeded seed + j and the separate requests seed + j, so every way does the same work; how
many choices the separate requests repeat token for token is reported (all on the CPU; on a GPU in half
precision a few may part ways: see same_choices). Prefix caching is off unless --prefix-caching (with
it, every repeat would find the prompt cached and the separate requests in turn would share its blocks).

    PYTHONPATH=src python benchmarks/choices.py [--model qwen3-0.6b-shape] [--prompt-tokens 2048]
        [--max-tokens 32] [--n 4] [--repeats 5]

Prints a table, then one JSON line (device, torch version, commit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from graphrun.llm.api import LLM, Completion
from graphrun.llm.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class Way:
    """One way to get n answers, measured: median seconds, prefills per run, output tokens per second."""

    name: str
    seconds: float
    prefills: int
    tokens_per_second: float


def measure(llm: LLM, name: str, run: Callable[[], list[Completion]], repeats: int) -> tuple[Way, list]:
    """Time run() `repeats` times after a warm-up; the tokens it produced (for the equality check)."""
    tokens = [c.token_ids for c in run()]
    times, prefills = [], 0
    for _ in range(repeats):
        before = llm.engine.num_prefills
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        prefills = llm.engine.num_prefills - before
    seconds = statistics.median(times)
    return Way(name, seconds, prefills, sum(map(len, tokens)) / seconds), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = "qwen3-0.6b-shape" if torch.cuda.is_available() else "tiny"
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--prefix-caching",
        action="store_true",
        help="leave prefix caching on (off by default here: repeats would find the prompt cached)",
    )
    args = parser.parse_args()
    n = args.n
    llm = LLM(
        args.model,
        max_model_len=args.prompt_tokens + args.max_tokens + 16,
        max_num_seqs=max(8, n),
        enable_prefix_caching=args.prefix_caching,
    )
    vocab = llm.engine.model_config.vocab_size
    prompt = [(7 * i + 3) % (vocab - 10) + 5 for i in range(args.prompt_tokens)]
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=args.max_tokens, ignore_eos=True)
    seeded = [replace(params, seed=1234 + j) for j in range(n)]
    choices, want = measure(llm, f"n={n} choices", lambda: llm.generate([prompt], params, n=n), args.repeats)
    together, got = measure(
        llm, f"{n} requests together", lambda: llm.generate([prompt] * n, seeded), args.repeats
    )
    same_together = same_choices(got, want)

    def one_by_one() -> list[Completion]:
        return [c for sp in seeded for c in llm.generate([prompt], sp)]

    in_turn, got = measure(llm, f"{n} requests in turn", one_by_one, args.repeats)
    same = {"together": same_together, "in_turn": same_choices(got, want)}
    ways = [choices, together, in_turn]
    print(f"{'way':<24} {'seconds':>9} {'prefills':>9} {'tok/s':>9} {'choices x':>10}")
    for way in ways:
        gain = way.seconds / choices.seconds
        rate = way.tokens_per_second
        print(f"{way.name:<24} {way.seconds:>9.4f} {way.prefills:>9} {rate:>9.0f} {gain:>10.2f}")
    print(f"choices whose tokens the separate requests repeat: {same['together']} of {n} together, "
          f"{same['in_turn']} of {n} in turn")  # fmt: skip
    print(json.dumps(report(args, ways, same)))


def same_choices(got: list[list[int]], want: list[list[int]]) -> int:
    """How many of the choices' token lists the separate requests gave again, in order.

    On the CPU (float32) all of them: tests/llm/test_choices.py holds that. On a GPU in half precision
    the choices' one prefill and the separate requests' batched prefills run different kernels, so the
    logits differ in their last bits and a seeded draw from a flat (random-weight) distribution can part
    ways; the work timed is the same either way, so the count is reported, not asserted.
    """
    return sum(g == w for g, w in zip(got, want, strict=True))


def report(args: argparse.Namespace, ways: list[Way], same: dict[str, int]) -> dict:
    """The JSON line: settings, each way, the gains, and what produced them."""
    choices, together, in_turn = ways
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "benchmark": "choices",
        "model": args.model,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "n": args.n,
        "prefix_caching": args.prefix_caching,
        "ways": [asdict(way) for way in ways],
        "throughput_x_together": together.seconds / choices.seconds,
        "throughput_x_in_turn": in_turn.seconds / choices.seconds,
        "target_x": 3.0,
        "same_tokens": same,
        "device": device,
        "torch": torch.__version__,
        "commit": git.stdout.strip(),
    }


if __name__ == "__main__":
    main()
