"""Streaming detokenization, stop strings and chat prompt rendering, without a server."""

from __future__ import annotations

import json

import pytest

from graphrun.llm.tokenizer import ByteTokenizer
from graphrun.serve.chat_template import ChatTemplate
from graphrun.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from graphrun.serve.text import TextStream


def _ids(text: str) -> list[int]:
    return list(text.encode())


def test_a_character_split_between_tokens_is_held_back_until_complete():
    stream = TextStream(ByteTokenizer())
    e_acute = _ids("é")  # two bytes, two tokens
    assert stream.push(_ids("ab") + e_acute[:1], final=False) == ("ab", False)
    assert stream.push(e_acute[1:], final=False) == ("é", False)
    assert stream.push([0xFF], final=True) == ("\ufffd", False)  # a truly invalid byte at the end is kept


def test_a_stop_string_across_tokens_is_cut_and_never_streamed():
    stream = TextStream(ByteTokenizer(), stop=("STOP", "zz"))
    emitted = ""
    for piece in ["one tw", "o S", "TO", "P and more"]:
        delta, hit = stream.push(_ids(piece), final=False)
        emitted += delta
        if hit:
            break
    assert hit and emitted == "one two " and stream.text == "one two "


def test_final_push_flushes_what_was_held_back():
    stream = TextStream(ByteTokenizer(), stop=("xyz",))
    assert stream.push(_ids("abcdxy"), final=False) == ("abcd", False)  # "xy" may start "xyz"
    assert stream.push([], final=True) == ("xy", False)


def test_simple_chat_template():
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "u"}]},
            ]
        }
    )
    assert ChatTemplate().render(request.messages) == "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"


def test_a_model_folders_jinja_chat_template_is_used(tmp_path):
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    template += "{% if add_generation_prompt %}[assistant]{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": template, "bos_token": "<s>"})
    )
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    chat = ChatTemplate.for_model(str(tmp_path))
    assert not chat.is_simple
    assert chat.render(request.messages) == "<s>[user]hi[assistant]"


def test_a_template_that_raises_is_a_400(tmp_path):
    template = "{{ raise_exception('roles must alternate') }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(APIError, match="roles must alternate") as exc:
        ChatTemplate.for_model(str(tmp_path)).render(request.messages)
    assert exc.value.status == 400


def test_completion_prompts_text_tokens_and_singleton_lists():
    tok = ByteTokenizer(512)
    for prompt in ("hi", ["hi"], [104, 105], [[104, 105]]):
        assert CompletionRequest.model_validate({"prompt": prompt}).prompt_ids(tok, 512) == [104, 105]
    with pytest.raises(APIError):
        CompletionRequest.model_validate({"prompt": [1, 512]}).prompt_ids(tok, 512)
