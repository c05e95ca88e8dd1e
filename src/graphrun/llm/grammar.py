"""Grammar matchers for structured output, through llguidance: one matcher per request, advanced on the host.

Why llguidance (benchmarks/grammar_mask.py, result under benchmarks/results/experiments/): against
xgrammar on this project's tokenizers it computed a token mask as fast or faster (3 us against 3-4 us per
token at the median with the presets' 151,936-id byte tokenizer, where xgrammar's mean was 15x higher;
11 against 18 us with a 128k BPE), compiled a small JSON schema in 0.4-0.5 ms against 0.7-78 ms (a
request's schema is compiled on the engine thread, between steps), and installs as one 3 MB wheel with no
dependencies, where xgrammar requires torch, transformers, triton and apache-tvm-ffi.

llguidance is imported on first use only (the `serve` extra declares it), so `import graphrun` and the
CLI's help never load it. The engine's `GrammarCompiler` builds llguidance's tokenizer index once (a
fraction of a second for a byte tokenizer, about a second for a 150k tokenizer.json) at the first
structured request, and keeps compiled grammars by their spec, so a repeated schema costs a copy of a
matcher. JSON is compact with a space after ',' and ':' (as json.dumps writes it): free whitespace lets a
model pad its output until it runs out of tokens.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from graphrun.errors import ConfigError
from graphrun.llm.sampling_params import SamplingParamsError
from graphrun.llm.structured_output import StructuredOutput
from graphrun.llm.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

log = logging.getLogger(__name__)

PARAM = "structured_output"  # the engine's name for the request value a grammar error is about
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_CACHED_GRAMMARS = 64


def _llguidance() -> Any:
    """The llguidance module, or a ConfigError that says how to install it."""
    try:
        import llguidance
    except ImportError as exc:
        raise ConfigError(
            "structured output needs the llguidance package: pip install 'graphrun[serve]'"
        ) from exc
    return llguidance


def grammar_text(structured: StructuredOutput) -> str:
    """llguidance's grammar for a constraint; SamplingParamsError when its spec cannot be read."""
    llg = _llguidance()
    try:
        if structured.kind == "json":
            return str(llg.LLMatcher.grammar_from_json_schema(structured.spec, defaults=JSON_OPTIONS))
        if structured.kind == "choice" and not json.loads(structured.spec):
            raise ValueError("the list of choices is empty")
        return str(llg.grammar_from(structured.kind, structured.spec))
    except ValueError as exc:
        raise SamplingParamsError(f"invalid {structured.kind}: {exc}", PARAM) from exc


def check_structured_output(structured: StructuredOutput) -> None:
    """Raise SamplingParamsError (param "structured_output") unless the constraint compiles."""
    error = _llguidance().LLMatcher.validate_grammar(grammar_text(structured))
    if error:
        raise SamplingParamsError(f"invalid {structured.kind}: {error.strip()}", PARAM)


class GrammarMatcher:
    """One request's place in its grammar: fills its next token's mask row, advances on each token."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner  # an llguidance.LLMatcher

    def fill(self, row: np.ndarray) -> None:
        """Write the allowed next tokens into `row` ((num_words,) int32, C-contiguous): bit t % 32 of word
        t // 32 is set when token t is allowed."""
        assert row.dtype == np.int32 and row.flags.c_contiguous, (row.dtype, row.flags)
        self._inner.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)

    def advance(self, token: int) -> bool:
        """Take the sampled token; True when the request must end here: the grammar is complete (nothing
        but the end token may follow) or rejected the token (logged: the mask should have forbidden it)."""
        if not self._inner.consume_token(token):
            log.warning(
                "grammar rejected token %d (%s); the request ends here", token, self._inner.get_error()
            )
            return True
        return bool(self._inner.is_stopped())


class GrammarCompiler:
    """Compiles requests' constraints against one engine's tokenizer; cached by spec (LRU)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = (
            vocab_size  # ids the masks cover: the model's and the tokenizer's, whichever is more
        )
        self._index: Any = None  # llguidance.LLTokenizer, built at the first compile
        self._templates: OrderedDict[StructuredOutput, Any] = OrderedDict()

    def matcher(self, structured: StructuredOutput) -> GrammarMatcher:
        """A fresh matcher for one request; SamplingParamsError when the constraint does not compile."""
        template = self._templates.get(structured)
        if template is None:
            template = self._compile(structured)
            self._templates[structured] = template
            if len(self._templates) > MAX_CACHED_GRAMMARS:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(structured)
        return GrammarMatcher(template.deep_copy())

    def _compile(self, structured: StructuredOutput) -> Any:
        start = time.perf_counter()
        llg = _llguidance()
        grammar = grammar_text(structured)
        template = llg.LLMatcher(self._token_index(), grammar, log_level=0)
        if template.is_error():
            raise SamplingParamsError(f"invalid {structured.kind}: {template.get_error()}", PARAM)
        log.debug("grammar (%s) compiled in %.2f ms", structured.kind, (time.perf_counter() - start) * 1e3)
        return template

    def _token_index(self) -> Any:
        if self._index is None:
            start = time.perf_counter()
            self._index = token_index(self._tokenizer, self.vocab_size)
            log.info("structured output: token index built in %.2f s", time.perf_counter() - start)
        return self._index


def token_index(tokenizer: Tokenizer, vocab_size: int) -> Any:
    """llguidance's view of a tokenizer (an LLTokenizer of vocab_size ids)."""
    llg = _llguidance()
    if isinstance(tokenizer, ByteTokenizer):
        return llg.LLTokenizer(llg.TokenizerWrapper(_ByteVocabulary(tokenizer, vocab_size)))
    if isinstance(tokenizer, HFTokenizer):
        eos = list(tokenizer.eos_token_ids) or None
        return llg.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size, eos_token=eos)
    raise ConfigError(
        f"structured output needs a byte or tokenizer.json tokenizer, not {type(tokenizer).__name__}"
    )


class _ByteVocabulary:
    """What llguidance's TokenizerWrapper reads for the ByteTokenizer: ids 0..255 are their bytes; every
    other id (bos, eos, and the ids a preset's larger vocabulary adds) is a special token, named after
    llguidance's 0xFF marker, so the grammar never allows one in text and its token trie skips them all."""

    def __init__(self, tokenizer: ByteTokenizer, vocab_size: int) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [b"\xff[%d]" % i for i in range(256, vocab_size)]
        self.special_token_ids = list(range(256, vocab_size))
        self.eos_token_id = tokenizer.eos_token_ids[0]
        self.bos_token_id = tokenizer.bos_token_id

    def __call__(self, text: bytes) -> list[int]:
        return list(text)
