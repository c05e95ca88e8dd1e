"""llguidance against xgrammar on the host: the cost of a token bitmask per step, and of compiling a schema.

Structured output (issue 20, item 5) fills one bitmask row per grammar-constrained request per decode
step on the host, and the step cannot launch until the rows are filled (the mask depends on the token the
step before sampled). So what decides between the two maintained grammar libraries is the per-token
time (mask + advancing the matcher), the time to compile a request's schema (its time to first token),
and what the library drags into an install. This script measures the first two on a small JSON schema,
with the tokenizers graphrun serves:

- `byte-151936`: the byte tokenizer of the `*-shape` presets at Qwen3's vocabulary (151,936 ids, only
  258 of them text): what `graphrun bench serve --model qwen3-0.6b-shape` runs on a GPU;
- `bpe-128k`: a byte-level BPE of 128k tokens trained here on the Python sources of this interpreter
  (no download; the size of Llama 3's vocabulary, the shape of a real checkpoint's tokenizer.json).

Each library takes the tokenizer its native way (llguidance: the tokenizer.json text, or the byte list;
xgrammar: the token strings with their vocabulary type). For each: building the tokenizer info (once per
server), compiling the schema (once per distinct schema), then generating a valid instance token by
token (the tokenization of json.dumps of a fixed value): fill the mask row, check the token is allowed
(a wrong mask fails the run), advance the matcher; repeated with fresh matchers, medians reported.

    PYTHONPATH=src python benchmarks/grammar_mask.py [--repeats 20] [--out FILE]

xgrammar is imported from the environment or from a folder given with --xgrammar-path (install it
there with `pip install --target DIR --no-deps xgrammar apache-tvm-ffi`, which keeps it out of the
project's environment). Prints a table, then one JSON line (device, torch version, commit).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from graphrun.bench.report import environment, headline, print_table, write_json

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "active"],
    "additionalProperties": False,
}
INSTANCE = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@example.org",
    "tags": ["analyst", "engine", "notes"],
    "active": True,
}
BYTE_VOCAB = 151_936
BPE_VOCAB = 131_072
BOS, EOS = 256, 257  # the byte tokenizer's specials (llm/tokenizer.py)


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """A tokenizer as both libraries need it, and the token ids of the instance."""

    name: str
    vocab_size: int
    eos: int
    tokens: list[bytes]  # each id's bytes (specials: b"", each library marks them its own way)
    specials: list[int]
    tokenizer_json: str | None  # the tokenizer.json text (BPE), None for the byte tokenizer
    instance_ids: list[int]


def byte_vocabulary() -> Vocabulary:
    """The presets' ByteTokenizer at Qwen3's vocabulary size: ids >= 258 are specials no grammar allows."""
    tokens = [bytes([i]) for i in range(256)] + [b""] * (BYTE_VOCAB - 256)
    specials = list(range(256, BYTE_VOCAB))
    ids = list(json.dumps(INSTANCE).encode())
    return Vocabulary(f"byte-{BYTE_VOCAB}", BYTE_VOCAB, EOS, tokens, specials, None, ids)


def bpe_vocabulary() -> Vocabulary:
    """A byte-level BPE trained on this interpreter's own .py files (a few seconds, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
    files = sorted(f for root in roots for f in glob.glob(f"{root}/**/*.py", recursive=True))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(files), trainer)
    size = tokenizer.get_vocab_size()
    tokens = [tokenizer.decode([i]).encode() if i else b"" for i in range(size)]
    ids = tokenizer.encode(json.dumps(INSTANCE)).ids
    return Vocabulary(f"bpe-{size // 1024}k", size, 0, tokens, [0], tokenizer.to_str(), ids)


def _texts(paths: list[str]) -> Any:
    """The UTF-8 files among paths, as text (a few sources are in other encodings)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                yield f.read()
        except (UnicodeDecodeError, OSError):
            continue


class Matcher(Protocol):
    """One request's grammar state, as the loop below drives it."""

    def fill(self, row: np.ndarray) -> None: ...
    def consume(self, token: int) -> None: ...


class Library(Protocol):
    """A grammar library bound to one vocabulary."""

    name: str

    def compile(self, schema: dict[str, Any]) -> Any: ...
    def matcher(self, compiled: Any) -> Matcher: ...


class _LlgMatcher:
    def __init__(self, inner: Any) -> None:
        self._m = inner

    def fill(self, row: np.ndarray) -> None:
        self._m.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)

    def consume(self, token: int) -> None:
        assert self._m.consume_token(token), self._m.get_error()


class Llguidance:
    """llguidance: the tokenizer.json text (or a byte list) -> LLTokenizer; a matcher per request."""

    name = "llguidance"

    def __init__(self, vocab: Vocabulary) -> None:
        import llguidance

        self._llg = llguidance
        if vocab.tokenizer_json is not None:
            self.tokenizer = llguidance.LLTokenizer(vocab.tokenizer_json, n_vocab=vocab.vocab_size)
        else:
            self.tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteSource(vocab)))

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = self._llg.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        template = self._llg.LLMatcher(self.tokenizer, grammar)  # compiles; the lexer is built lazily
        assert not template.is_error(), template.get_error()
        return template

    def matcher(self, compiled: Any) -> Matcher:
        return _LlgMatcher(compiled.deep_copy())


class _ByteSource:
    """What llguidance's TokenizerWrapper reads: token bytes, specials, and an encode function."""

    def __init__(self, vocab: Vocabulary) -> None:
        # llguidance's convention: a special token is 0xFF + its name, so the token trie keeps all of
        # them under one byte no grammar allows (as empty strings, the 151k ids cost ~300 us per mask)
        names = {i: b"\xff<|special_%d|>" % i for i in vocab.specials}
        self.tokens = [names.get(i, t) for i, t in enumerate(vocab.tokens)]
        self.special_token_ids = vocab.specials
        self.eos_token_id, self.bos_token_id = vocab.eos, BOS

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


class _XgrMatcher:
    def __init__(self, inner: Any, torch_row: Any) -> None:
        self._m, self._row = inner, torch_row

    def fill(self, row: np.ndarray) -> None:
        self._m.fill_next_token_bitmask(self._row, 0)
        row[:] = self._row.numpy()[0]  # xgrammar fills a torch tensor; the copy is a few microseconds

    def consume(self, token: int) -> None:
        assert self._m.accept_token(token), token


class Xgrammar:
    """xgrammar: token strings + vocabulary type -> TokenizerInfo; a compiler; a matcher per request."""

    name = "xgrammar"

    def __init__(self, vocab: Vocabulary) -> None:
        import xgrammar

        self._xgr = xgrammar
        if vocab.tokenizer_json is not None:
            from tokenizers import Tokenizer

            raw = Tokenizer.from_str(vocab.tokenizer_json)
            strings = [raw.id_to_token(i) or "" for i in range(vocab.vocab_size)]
            kind = xgrammar.VocabType.BYTE_LEVEL
        else:  # raw bytes of the 258 real ids; vocab_size pads the rest, which no grammar allows
            strings = vocab.tokens[: EOS + 1]  # type: ignore[assignment]
            kind = xgrammar.VocabType.RAW
        self.info = xgrammar.TokenizerInfo(
            strings, kind, vocab_size=vocab.vocab_size, stop_token_ids=[vocab.eos]
        )
        self._vocab_size = vocab.vocab_size

    def compile(self, schema: dict[str, Any]) -> Any:
        compiler = self._xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        return compiler.compile_json_schema(json.dumps(schema))

    def matcher(self, compiled: Any) -> Matcher:
        row = self._xgr.allocate_token_bitmask(1, self._vocab_size)
        return _XgrMatcher(self._xgr.GrammarMatcher(compiled), row)


def allowed(row: np.ndarray, token: int) -> bool:
    """Whether a bitmask row lets `token` through (bit token % 32 of word token // 32)."""
    return bool((int(row[token >> 5]) >> (token & 31)) & 1)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_once(library: Library, compiled: Any, vocab: Vocabulary) -> tuple[float, list[float], list[float]]:
    """One generation of the instance: (first mask s, later masks s, consumes s); fails on a wrong mask."""
    matcher = library.matcher(compiled)
    row = np.zeros((vocab.vocab_size + 31) // 32, dtype=np.int32)
    masks, consumes = [], []
    for token in vocab.instance_ids:
        _, seconds = timed(lambda: matcher.fill(row))
        masks.append(seconds)
        if not allowed(row, token):
            raise AssertionError(f"{library.name}: the mask forbids token {token} of a valid instance")
        _, seconds = timed(lambda t=token: matcher.consume(t))  # type: ignore[misc]
        consumes.append(seconds)
    matcher.fill(row)
    if not allowed(row, vocab.eos):
        raise AssertionError(f"{library.name}: the end token is not allowed after a complete instance")
    return masks[0], masks[1:], consumes


def measure(make: Callable[[Vocabulary], Library], vocab: Vocabulary, repeats: int) -> dict[str, Any]:
    """Tokenizer-info, compile, first-mask and per-token times of one library on one vocabulary."""
    library, info_s = timed(lambda: make(vocab))
    compiles, firsts, masks, consumes = [], [], [], []
    for _ in range(repeats):
        compiled, seconds = timed(lambda: library.compile(SCHEMA))
        compiles.append(seconds)
        first, later, eat = run_once(library, compiled, vocab)
        firsts.append(first)
        masks += later
        consumes += eat
    us = 1e6
    return {
        "library": library.name,
        "tokenizer": vocab.name,
        "vocab_size": vocab.vocab_size,
        "instance_tokens": len(vocab.instance_ids),
        "tokenizer_info_ms": info_s * 1e3,
        "compile_ms": statistics.median(compiles) * 1e3,
        "first_mask_us": statistics.median(firsts) * us,
        "mask_us_p50": statistics.median(masks) * us,
        "mask_us_p99": float(np.percentile(masks, 99)) * us,
        "mask_us_mean": statistics.fmean(masks) * us,
        "consume_us_p50": statistics.median(consumes) * us,
        "token_us_mean": (statistics.fmean(masks) + statistics.fmean(consumes)) * us,
    }


def installed(name: str) -> dict[str, Any]:
    """A library's version and the requirements it declares (what an install of it pulls in)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        return {"version": version(name), "requires": requires(name) or []}
    except PackageNotFoundError:
        return {"version": None, "requires": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--xgrammar-path", default=None, help="a folder holding xgrammar (pip --target)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args()
    if args.xgrammar_path:
        sys.path.insert(0, os.path.abspath(args.xgrammar_path))
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    vocabularies = [byte_vocabulary(), bpe_vocabulary()]
    rows = [measure(make, vocab, args.repeats) for vocab in vocabularies for make in (Llguidance, Xgrammar)]
    columns = (
        "library", "tokenizer", "instance_tokens", "tokenizer_info_ms", "compile_ms", "first_mask_us",
        "mask_us_p50", "mask_us_p99", "consume_us_p50", "token_us_mean",
    )  # fmt: skip
    env = environment()
    print(headline(env))
    print_table(rows, columns)
    result = {
        "benchmark": "grammar_mask",
        "env": env,
        "libraries": {name: installed(name) for name in ("llguidance", "xgrammar")},
        "omp_num_threads": torch_threads,
        "schema": SCHEMA,
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
