"""Sampled-token logprobs in OpenAI's two shapes: completions' parallel lists and chat's per-token objects.

The engine sends each token's `TokenLogprobs` (ids and floats, llm/logprobs.py); this module names the
tokens with the served tokenizer (each id decoded alone) and builds the pydantic models a choice
carries: completions `{tokens, token_logprobs, top_logprobs, text_offset}` (with echo, the prompt's
tokens first, the first's logprob and top null; text_offset counts characters of the choice's text,
continuing across a stream's chunks; the top dict also holds the sampled token, as vLLM's; tokens that
read the same, such as lone bytes of one character (U+FFFD), share one key, which keeps the larger
logprob), chat `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.tokenizer import Tokenizer


class CompletionLogprobs(BaseModel):
    """A completions choice's logprobs: one entry per token in each list."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TopLogprob(BaseModel):
    """One alternative of a chat token."""

    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    """One chat token's logprob and its alternatives, most likely first."""

    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """A chat choice's logprobs."""

    content: list[ChatTokenLogprob]


class LogprobsShape:
    """Builds one response's logprobs (chat or completions) from token ids and their TokenLogprobs."""

    def __init__(self, tokenizer: Tokenizer, chat: bool) -> None:
        self._tokenizer, self._chat = tokenizer, chat
        self._offsets: dict[int, int] = {}  # per choice index: characters of text so far (completions)

    def build(
        self,
        token_ids: Sequence[int],
        items: Sequence[TokenLogprobs],
        index: int,
        prompt: tuple[Sequence[int], Sequence[TokenLogprobs]] | None = None,
    ) -> BaseModel:
        """The logprobs of a choice's next tokens (a chunk's, or a whole answer's); prompt (completions'
        echo): the prompt's ids and the logprobs of all but its first, listed before them."""
        if self._chat:
            return ChatLogprobs(
                content=[self._chat_token(t, lp) for t, lp in zip(token_ids, items, strict=True)]
            )
        entries: list[tuple[int, TokenLogprobs | None]] = []
        if prompt is not None:
            prompt_ids, prompt_items = prompt
            entries += zip(prompt_ids, [None, *prompt_items], strict=True)
        entries += zip(token_ids, items, strict=True)
        return self._completion(entries, index)

    def _text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def _chat_token(self, token_id: int, lp: TokenLogprobs) -> ChatTokenLogprob:
        top = [self._top(i, v) for i, v in zip(lp.top_ids, lp.top_logprobs, strict=True)]
        text = self._text(token_id)
        return ChatTokenLogprob(token=text, logprob=lp.logprob, bytes=list(text.encode()), top_logprobs=top)

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text = self._text(token_id)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    def _top_dict(self, text: str, lp: TokenLogprobs) -> dict[str, float]:
        top: dict[str, float] = {}
        for i, v in zip(lp.top_ids, lp.top_logprobs, strict=True):
            top.setdefault(self._text(i), v)  # most likely first: a key two tokens share keeps the larger
        top.setdefault(text, lp.logprob)
        return top

    def _completion(self, entries: Sequence[tuple[int, TokenLogprobs | None]], index: int) -> BaseModel:
        """Completions' lists over (token id, its logprobs; None: the prompt's first token, null)."""
        offset = self._offsets.get(index, 0)
        tokens: list[str] = []
        offsets: list[int] = []
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        for token_id, lp in entries:
            text = self._text(token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            values.append(None if lp is None else lp.logprob)
            tops.append(None if lp is None else self._top_dict(text, lp))
        self._offsets[index] = offset
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
        )
