"""The ids a tokenizer's encode adds around any text are found and left out, and only those."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from graphrun.llm.tokenizer import ByteTokenizer
from graphrun.serve.tokenizer_info import SpecialAffixes

BOS, EOS, CLS, SEP = 1000, 1001, 1002, 1003


class _Wrapping(ByteTokenizer):
    """The byte tokenizer with fixed ids put before and after every encoding."""

    def __init__(self, prefix: Sequence[int], suffix: Sequence[int]) -> None:
        super().__init__(2048)
        self._prefix, self._suffix = list(prefix), list(suffix)

    def encode(self, text: str) -> list[int]:
        return self._prefix + super().encode(text) + self._suffix


@pytest.mark.parametrize(
    "prefix,suffix", [((), ()), ((BOS,), ()), ((BOS,), (EOS,)), ((CLS, BOS), (SEP,)), ((), (EOS,))]
)
def test_the_affixes_are_found_and_stripped_from_any_text(prefix, suffix):
    tokenizer = _Wrapping(prefix, suffix)
    affixes = SpecialAffixes.of(tokenizer)
    assert (affixes.prefix, affixes.suffix) == (prefix, suffix)
    for text in ("", "a", "hello", "ab\u00e9"):
        assert affixes.strip(tokenizer.encode(text)) == list(text.encode())


def test_ids_without_the_affixes_are_left_as_they_are():
    affixes = SpecialAffixes((BOS,), (EOS,))
    assert affixes.strip([5, 6]) == [5, 6]
    assert affixes.strip([BOS, 5]) == [5]
    assert affixes.strip([5, EOS]) == [5]
    assert affixes.strip([BOS]) == []  # encode("") of a BOS-only tokenizer, missing its suffix


def test_the_byte_tokenizer_adds_nothing():
    affixes = SpecialAffixes.of(ByteTokenizer())
    assert affixes == SpecialAffixes((), ())
    assert affixes.strip([256, 97, 257]) == [256, 97, 257]  # special ids the text itself carries stay
