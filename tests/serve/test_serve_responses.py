"""Stream chunks are built as text for speed: they must be the pydantic models' JSON, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphrun.serve.responses import ChatFormat, CompletionFormat, Usage, model_json

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # Cs: lone surrogates
reasons = st.sampled_from([None, "stop", "length", "abort"])
ids = st.lists(st.integers(0, 200_000), max_size=5)
usages = st.none() | st.builds(
    Usage.of, st.integers(0, 10**6), st.integers(0, 10**6), st.none() | st.integers(0, 10**6)
)


@pytest.mark.parametrize("fmt_type", [CompletionFormat, ChatFormat])
@pytest.mark.parametrize("return_token_ids", [False, True])
@given(text=texts, reason=reasons, token_ids=ids, model=texts, usage=usages)
def test_a_text_built_chunk_is_the_models_json_byte_for_byte(
    fmt_type, return_token_ids, text, reason, token_ids, model, usage
):
    fmt = fmt_type(model or "m", return_token_ids)
    fast = fmt.chunk(text, reason, token_ids, usage)
    assert fast == model_json(fmt.chunk_model(text, reason, token_ids, usage)) and fast.isascii()
    assert f'"id":"{fmt.id}"' in fast and f'"created":{fmt.created},' in fast
    assert ('"token_ids":' in fast) == return_token_ids
    assert fast.endswith(',"usage":null}') == (usage is None)


@given(
    num_prompt=st.integers(0, 10**9),
    num_completion=st.integers(0, 10**9),
    num_cached=st.none() | st.integers(0, 10**9),
)
def test_usage_json_text_is_its_models_json(num_prompt, num_completion, num_cached):
    usage = Usage.of(num_prompt, num_completion, num_cached)
    assert usage.json_text() == model_json(usage)
    assert ("prompt_tokens_details" in usage.json_text()) == (num_cached is not None)
