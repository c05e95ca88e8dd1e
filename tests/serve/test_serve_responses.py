"""Stream chunks are built as text for speed: they must be the pydantic models' JSON, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphrun.serve.responses import ChatFormat, CompletionFormat, model_json

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # Cs: lone surrogates
reasons = st.sampled_from([None, "stop", "length", "abort"])
ids = st.lists(st.integers(0, 200_000), max_size=5)


@pytest.mark.parametrize("fmt_type", [CompletionFormat, ChatFormat])
@pytest.mark.parametrize("return_token_ids", [False, True])
@given(text=texts, reason=reasons, token_ids=ids, model=texts)
def test_a_text_built_chunk_is_the_models_json_byte_for_byte(
    fmt_type, return_token_ids, text, reason, token_ids, model
):
    fmt = fmt_type(model or "m", return_token_ids)
    fast = fmt.chunk(text, reason, token_ids)
    assert fast == model_json(fmt.chunk_model(text, reason, token_ids)) and fast.isascii()
    assert f'"id":"{fmt.id}"' in fast and f'"created":{fmt.created},' in fast
    assert ('"token_ids":' in fast) == return_token_ids
