"""Token ids -> streamed text, with stop strings: the detokenizing half of a request, on the event loop.

Each push decodes the whole output so far and emits the part not sent yet, so streamed text always
concatenates to what a non-streamed request returns. Held back until more tokens arrive: a trailing
U+FFFD (a UTF-8 sequence cut between tokens) and, with stop strings, the last len(longest stop) - 1
characters (they may be the start of a stop string). Decoding everything per push costs O(n) per token,
O(n^2) per request; pushes batch every token that arrived meanwhile, so a busy loop decodes less often.
"""

from __future__ import annotations

from graphrun.llm.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """The text of one request's output, released in safe pieces."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self._token_ids: list[int] = []
        self._num_sent = 0  # characters emitted so far
        self.text = ""  # the output text so far (cut before a stop string once one matched)

    def push(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        """Add tokens; returns (text to emit now, whether a stop string matched: the request is over)."""
        self._token_ids += token_ids
        text = self._tokenizer.decode(self._token_ids)
        cut = self._find_stop(text)
        if cut is not None:
            text, final = text[:cut], True
        end = len(text)
        if not final:
            end = min(len(text.rstrip(REPLACEMENT_CHAR)), len(text) - self._holdback)
        end = max(end, self._num_sent)
        delta = text[self._num_sent : end]
        self._num_sent = end
        self.text = text
        return delta, cut is not None

    def _find_stop(self, text: str) -> int | None:
        """Index of the earliest stop string in text, or None."""
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        return min(hits) if hits else None
