"""Stream chunks are built as text for speed: they must equal the pydantic models' JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphrun.serve.responses import ChatFormat, CompletionFormat

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # Cs: lone surrogates
reasons = st.sampled_from([None, "stop", "length", "abort"])
ids = st.lists(st.integers(0, 200_000), max_size=5)


@pytest.mark.parametrize("fmt_type", [CompletionFormat, ChatFormat])
@pytest.mark.parametrize("return_token_ids", [False, True])
@given(text=texts, reason=reasons, token_ids=ids, model=texts)
def test_a_text_built_chunk_equals_the_models_json(
    fmt_type, return_token_ids, text, reason, token_ids, model
):
    fmt = fmt_type(model or "m", return_token_ids)
    fast = json.loads(fmt.chunk(text, reason, token_ids))
    assert fast == json.loads(fmt.chunk_model(text, reason, token_ids).model_dump_json())
    assert fast["created"] == fmt.created and fast["id"] == fmt.id
    assert ("token_ids" in fast["choices"][0]) == return_token_ids
