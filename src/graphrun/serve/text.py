"""Token ids -> streamed text, with stop strings: the detokenizing half of a request, on the event loop.

Decoding is incremental: only a window of the newest tokens is decoded per push, starting one push
back, so a tokenizer that shapes a token by its neighbour (a leading space) sees it. Once the window's
text ends in a whole character it is settled and the window moves on, unless the settled tokens added no
text (a special token decode leaves out: were it the window's first token, a word-level decoder would
drop the space before the next word). A push therefore costs the same at
token 10 as at token 4000 (decoding everything per push made a long stream O(n^2) on the event loop that
every stream shares). The window's text is trusted when it extends the text of the window's settled
part, as byte-level BPE and SentencePiece decoders do; when it does not (a decoder that is not local),
the push decodes the whole output instead.

Stop strings are searched for in the *complete* text only: the text less its trailing U+FFFD, which
stands for a UTF-8 sequence cut between tokens (a byte tokenizer splits every multi-byte character;
byte-level BPE often splits CJK and emoji). Held back until more tokens arrive: that incomplete tail,
and, with stop strings, the last len(longest stop) - 1 characters of the complete text before it (they
may start a stop string). The hold-back counts from the end of the complete text, not of the decoded
text: counting the U+FFFD as one of the held characters released the character before it, so a stop
string such as "4\u05c8" whose last character arrived in two tokens was never found.
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
        complete = text if final else text.rstrip(REPLACEMENT_CHAR)
        cut = self._find_stop(complete)
        if cut is not None:
            text, final = text[:cut], True
        end = len(text) if final else len(complete) - self._holdback
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
            if text != self._settled:  # the context moves to tokens with text, never to an empty one
                self._window = self._settled_ids
            self._settled, self._settled_ids = text, len(ids)
        return text

    def _find_stop(self, text: str) -> int | None:
        """Where text is cut for the stop string that ends first in it (complete characters only), or None.

        Text before what was sent holds no stop: every stop string that starts there ends inside the
        complete text of an earlier push (len(longest) - 1 characters were held back), where it was searched.
        """
        # (end, start) of each stop's first occurrence; the one that ends first wins, so the cut does
        # not depend on how many tokens a push carried (stops "abcd" and "bc" in "abcd": "bc", always)
        hits = [(i + len(s), i) for s in self._stop if (i := text.find(s, self._num_sent)) >= 0]
        return min(hits)[1] if hits else None
