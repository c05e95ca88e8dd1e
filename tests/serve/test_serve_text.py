"""Streaming detokenization, stop strings and chat prompt rendering, without a server."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel as ByteLevelPre
from tokenizers.trainers import BpeTrainer

from graphrun.llm.tokenizer import ByteTokenizer, HFTokenizer
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


def test_completion_prompts_text_tokens_and_lists_of_them():
    tok = ByteTokenizer(512)
    for prompt in ("hi", ["hi"], [104, 105], [[104, 105]]):
        assert CompletionRequest.model_validate({"prompt": prompt}).prompts_ids(tok, 512) == [[104, 105]]
    for prompt in (["hi", "a"], [[104, 105], [97]]):
        request = CompletionRequest.model_validate({"prompt": prompt})
        assert request.prompts_ids(tok, 512) == [[104, 105], [97]]
    for prompt in ([1, 512], [[1], [1, 512]]):
        with pytest.raises(APIError):
            CompletionRequest.model_validate({"prompt": prompt}).prompts_ids(tok, 512)


def _reference_pushes(
    tokenizer: ByteTokenizer, stop: tuple[str, ...], pushes: list[list[int]]
) -> list[tuple]:
    """The specification: decode every id on every push, then apply holdback and stop strings."""
    holdback = max((len(s) for s in stop), default=1) - 1
    ids: list[int] = []
    sent = 0
    out = []
    for i, push in enumerate(pushes):
        final = i == len(pushes) - 1
        ids += push
        text = tokenizer.decode(ids)
        complete = text if final else text.rstrip("\ufffd")  # stops are searched in whole characters
        hits = [(j + len(s), j) for s in stop if (j := complete.find(s)) >= 0]  # the first to end wins
        cut = min(hits)[1] if hits else None
        if cut is not None:
            text, final = text[:cut], True
        end = len(text) if final else len(complete) - holdback
        end = max(end, sent)
        out.append((text[sent:end], cut is not None))
        sent = end
        if cut is not None:
            break
    return out


@settings(max_examples=300, deadline=None)
@given(
    pushes=st.lists(st.lists(st.integers(0, 1023), max_size=6), min_size=1, max_size=30),
    stop=st.lists(st.text(alphabet="ab\u00e9\ufffd", min_size=1, max_size=3), max_size=2),
)
def test_incremental_decoding_emits_what_decoding_everything_each_push_emits(pushes, stop):
    tokenizer = ByteTokenizer(1024)
    stream = TextStream(tokenizer, tuple(stop))
    got = []
    for i, push in enumerate(pushes):
        got.append(stream.push(push, final=i == len(pushes) - 1))
        if got[-1][1]:
            break
    assert got == _reference_pushes(tokenizer, tuple(stop), pushes)


class _Reversing(ByteTokenizer):
    """A decoder that is not local: a window's text never extends the previous window's."""

    def decode(self, ids):  # type: ignore[override]
        return super().decode(ids)[::-1]


def test_a_tokenizer_whose_decoding_is_not_local_falls_back_to_decoding_everything():
    tokenizer, ids = _Reversing(), []
    stream = TextStream(tokenizer)
    for piece in ["ab", "c", "de"]:
        ids += _ids(piece)
        stream.push(_ids(piece), final=False)
        assert stream.text == tokenizer.decode(ids)


@pytest.fixture(scope="module")
def byte_level_bpe() -> HFTokenizer:
    """A small byte-level BPE (Qwen3's kind of tokenizer), trained here on a few lines with accents."""
    tokenizer = RustTokenizer(BPE())
    tokenizer.pre_tokenizer = ByteLevelPre(add_prefix_space=False)
    tokenizer.decoder = ByteLevelDecoder()
    corpus = ["héllo wörld, the quick brown fox", "naïve café déjà vu", "日本語 テキスト 🙂 emoji"] * 20
    trainer = BpeTrainer(vocab_size=300, initial_alphabet=ByteLevelPre.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return HFTokenizer(tokenizer, None, ())


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_byte_level_bpe_streams_exactly_what_one_decode_gives(byte_level_bpe, data):
    vocab = byte_level_bpe.vocab_size
    pushes = data.draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=5), min_size=1, max_size=25))
    stream = TextStream(byte_level_bpe)
    deltas = [stream.push(push, final=i == len(pushes) - 1)[0] for i, push in enumerate(pushes)]
    assert "".join(deltas) == byte_level_bpe.decode([i for push in pushes for i in push])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_byte_level_bpe_finds_multi_byte_stop_strings_split_across_tokens(byte_level_bpe, data):
    chars = st.sampled_from("héllo wörld naïve café 日本語 テキスト 🙂 4\u05c8")
    stop = data.draw(st.text(chars, min_size=1, max_size=3))
    text = data.draw(st.text(chars, max_size=12)) + stop + data.draw(st.text(chars, max_size=6))
    stream, got = TextStream(byte_level_bpe, (stop,)), ""
    for token in byte_level_bpe.encode(text):  # one token a push, as the engine delivers them
        delta, hit = stream.push([token], final=False)
        got += delta
        if hit:
            break
    assert hit and got == text[: text.index(stop)]


def _word_tokenizer() -> HFTokenizer:
    """Words w3.. w9 joined by spaces on decode, and <s> (id 1), a special token decode leaves out."""
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "<s>": 1, **{f"w{i}": i for i in range(3, 10)}}
    rust = RustTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = Whitespace()
    rust.add_special_tokens(["<s>"])
    return HFTokenizer(rust, 1, ())


@pytest.mark.parametrize("batches", [[[5], [1], [6], [7]], [[5, 1], [6, 7]], [[5], [1], [1], [6, 7]]])
def test_a_token_that_decodes_to_nothing_keeps_the_space_before_the_next_word(batches):
    tokenizer = _word_tokenizer()
    stream = TextStream(tokenizer)
    text = "".join(stream.push(ids, final=False)[0] for ids in batches) + stream.push([], final=True)[0]
    assert text == tokenizer.decode([i for ids in batches for i in ids]) == "w5 w6 w7"
