"""Token ids -> streamed text, with stop strings: the detokenizing half of a request, on the event loop.

Decoding is incremental: only a window of the newest tokens is decoded per push, starting one push
back, so a tokenizer that shapes a token by its neighbour (a leading space) sees it. Once the window's
text ends in a whole character it is settled and the window moves on. A push therefore costs the same at
token 10 as at token 4000 (decoding everything per push made a long stream O(n^2) on the event loop that
every stream shares). The window's text is trusted when it extends the text of the window's settled
part, as byte-level BPE and SentencePiece decoders do; when it does not (a decoder that is not local),
the push decodes the whole output instead. Held back until more tokens arrive: a trailing U+FFFD (a
UTF-8 sequence cut between tokens) and, with stop strings, the last len(longest stop) - 1 characters
(they may start a stop string).
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
        self._window = 0  # the decode window starts here: the token before `_settled_ids`, for context
        self._settled_ids = 0  # tokens whose text is settled (ends in a whole character)
        self._settled = ""  # the text of token_ids[:_settled_ids]
        self._num_sent = 0  # characters emitted so far
        self.text = ""  # the output text so far (cut before a stop string once one matched)

    def push(self, token_ids: list[int], final: bool) -> tuple[str, bool]:
        """Add tokens; returns (text to emit now, whether a stop string matched: the request is over)."""
        self._token_ids += token_ids
        text = self._decode()
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

    def _decode(self) -> str:
        """The text of every token so far, decoding only the window; settles the window when it can."""
        decode, ids = self._tokenizer.decode, self._token_ids
        before = decode(ids[self._window : self._settled_ids])
        window = decode(ids[self._window :])
        if not window.startswith(before):  # not local: decode everything, settle nothing new
            return decode(ids)
        text = self._settled + window[len(before) :]
        if not text.endswith(REPLACEMENT_CHAR):
            self._settled, self._window, self._settled_ids = text, self._settled_ids, len(ids)
        return text

    def _find_stop(self, text: str) -> int | None:
        """Index of the earliest stop string in text, or None.

        Text before what was sent holds no stop (it was searched, with len(longest) - 1 held back).
        """
        hits = [i for i in (text.find(s, self._num_sent) for s in self._stop) if i >= 0]
        return min(hits) if hits else None
