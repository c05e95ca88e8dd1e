"""/tokenize, /detokenize and /tokenizer_info as vLLM serves them, on a preset and on a checkpoint folder."""

from __future__ import annotations

import json

import httpx
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from serve_harness import LiveServer, live_server, stream_chunks
from tiny_checkpoint import write_tiny_checkpoint
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from graphrun.serve.chat_template import ChatTemplate
from graphrun.serve.protocol import ChatMessage

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, ünïcode!"}]
KEY = "tokenize-test-key"


@pytest.fixture(scope="module")
def srv():
    with live_server() as server:
        yield server


def _post(srv: LiveServer, path: str, body: object, **kwargs) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=30, **kwargs)


def _ok(srv: LiveServer, path: str, body: object) -> dict:
    response = _post(srv, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_prompt_round_trips_and_counts_as_the_completion_does(srv):
    prompt = "héllo wörld ✓"
    answer = _ok(srv, "/tokenize", {"prompt": prompt, "model": "tiny"})
    assert answer["tokens"] == list(prompt.encode()) and answer["count"] == len(answer["tokens"])
    assert answer["max_model_len"] == 256
    assert _ok(srv, "/detokenize", {"tokens": answer["tokens"]}) == {"prompt": prompt}
    completion = _ok(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert completion["usage"]["prompt_tokens"] == answer["count"]


def test_messages_are_the_chat_prompt_and_round_trip_to_its_text(srv):
    answer = _ok(srv, "/tokenize", {"messages": MESSAGES})
    chat = _ok(srv, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 1})
    assert chat["usage"]["prompt_tokens"] == answer["count"] == len(answer["tokens"])
    text = _ok(srv, "/detokenize", {"tokens": answer["tokens"]})["prompt"]
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi, ünïcode!\n<|assistant|>\n"
    bare = _ok(srv, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False})
    assert answer["tokens"] == bare["tokens"] + list(b"<|assistant|>\n")


def test_an_empty_id_list_detokenizes_to_empty_text(srv):
    assert _ok(srv, "/detokenize", {"tokens": []}) == {"prompt": ""}


def test_tokenizer_info_of_a_preset_says_what_the_byte_tokenizer_is(srv):
    info = httpx.get(srv.url + "/tokenizer_info", timeout=30).json()
    assert info["tokenizer_class"] == "ByteTokenizer"
    assert info["bos_token"] is None and info["eos_token"] is None and info["pad_token"] is None
    assert info["bos_token_id"] == 256 and info["eos_token_ids"] == [257]
    assert info["model_max_length"] == 256 and info["vocab_size"] == 512
    template = ImmutableSandboxedEnvironment().from_string(info["chat_template"])
    messages = [ChatMessage(**m) for m in MESSAGES]
    for generation in (True, False):
        rendered = template.render(messages=MESSAGES, add_generation_prompt=generation)
        assert rendered == ChatTemplate().render(messages, generation)


BAD = [  # (path, body, status, param)
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": MESSAGES}, 400, "prompt"),
    ("/tokenize", {"prompt": 7}, 400, "prompt"),
    ("/tokenize", {"messages": []}, 400, "messages"),
    ("/tokenize", {"prompt": "a", "return_token_strs": True}, 400, "return_token_strs"),
    ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, 400, "continue_final_message"),
    ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ 1 }}"}, 400, "chat_template"),
    ("/tokenize", {"messages": MESSAGES, "tools": [{"type": "function"}]}, 400, "tools"),
    ("/tokenize", {"prompt": "a", "model": "gpt-4"}, 404, "model"),
    ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}, 400, "add_special_tokens"),
    ("/detokenize", {"tokens": [1, 512]}, 400, "tokens"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
    ("/detokenize", {}, 400, "tokens"),
    ("/detokenize", {"tokens": [1], "model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_bad_input_is_an_openai_error_naming_the_parameter(srv, path, body, status, param):
    response = _post(srv, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
def test_an_empty_or_non_json_body_is_refused_not_a_500(srv, path):
    empty = httpx.post(srv.url + path, headers={"Content-Type": "application/json"}, timeout=30)
    assert empty.status_code == 400 and "error" in empty.json()
    text = httpx.post(srv.url + path, content=b"tokens", headers={"Content-Type": "text/plain"}, timeout=30)
    assert text.status_code == 415 and text.json()["error"]["code"] == "unsupported_media_type"


CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}
PROMPTS = [("/v1/completions", {"prompt": "count me"}), ("/v1/chat/completions", {"messages": MESSAGES})]


@pytest.mark.parametrize("path,prompt", PROMPTS)
def test_continuous_usage_puts_the_running_counts_on_every_chunk(srv, path, prompt):
    body = {**prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    num_prompt = _ok(srv, "/tokenize", prompt)["count"]
    chunks = stream_chunks(srv, path, {**body, "stream_options": CONTINUOUS})
    assert all(chunk["usage"] is not None for chunk in chunks)
    so_far = 0
    for chunk in chunks[:-1]:
        so_far += len(chunk["choices"][0]["token_ids"])
        assert chunk["usage"] == {
            "prompt_tokens": num_prompt,
            "completion_tokens": so_far,
            "total_tokens": num_prompt + so_far,
            "prompt_tokens_details": chunk["usage"]["prompt_tokens_details"],  # prefix caching: on
        }
    assert so_far == 24 and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize("path,prompt", PROMPTS)
@pytest.mark.parametrize("options", [None, {"include_usage": True}, {"continuous_usage_stats": True}])
def test_without_continuous_usage_only_the_last_chunk_counts(srv, path, prompt, options):
    body = {**prompt, "max_tokens": 8, "stream_options": options}
    chunks = stream_chunks(srv, path, body)
    counted = [chunk for chunk in chunks if chunk.get("usage") is not None]
    include = bool(options and options.get("include_usage"))
    assert counted == (chunks[-1:] if include else [])  # continuous_usage_stats needs include_usage


@pytest.fixture(scope="module")
def keyed():
    with live_server({"enforce_eager": True}, api_keys=(KEY,)) as server:
        yield server


@pytest.mark.parametrize(
    "method,path,body",
    [("POST", "/tokenize", {"prompt": "a"}), ("POST", "/detokenize", {"tokens": [97]}),
     ("GET", "/tokenizer_info", None)],
)  # fmt: skip
def test_the_routes_need_the_key_when_keys_are_set(keyed, method, path, body):
    refused = httpx.request(method, keyed.url + path, json=body, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.request(method, keyed.url + path, json=body, headers=auth, timeout=30).status_code == 200


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}w10 {{ m['content'] }} w11 {% endfor %}"
    "{% if add_generation_prompt %}w12{% endif %}"
)


def _checkpoint_with_a_bos(folder):
    """The tiny checkpoint whose tokenizer prepends <s> (id 1) to every text and knows </s> (id 2)."""
    write_tiny_checkpoint(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = {**tokenizer.get_vocab(), "<s>": 1, "</s>": 2}
    del vocab["w1"], vocab["w2"]
    fresh = Tokenizer(type(tokenizer.model)(vocab, unk_token="[UNK]"))
    fresh.pre_tokenizer = tokenizer.pre_tokenizer
    fresh.add_special_tokens(["<s>", "</s>"])
    fresh.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fresh.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": TEMPLATE}
    config["legacy"] = False  # a field graphrun does not read: served as it is
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return folder


@pytest.fixture(scope="module")
def folder_srv(tmp_path_factory):
    folder = _checkpoint_with_a_bos(tmp_path_factory.mktemp("models") / "tiny-bos")
    with live_server({"model": str(folder), "enforce_eager": True}) as server:
        yield server


def test_add_special_tokens_says_whether_the_tokenizers_bos_is_added(folder_srv):
    assert _ok(folder_srv, "/tokenize", {"prompt": "w5 w6"})["tokens"] == [1, 5, 6]
    bare = _ok(folder_srv, "/tokenize", {"prompt": "w5 w6", "add_special_tokens": False})
    assert bare["tokens"] == [5, 6] and bare["count"] == 2
    assert _ok(folder_srv, "/detokenize", {"tokens": [1, 5, 6, 2]})["prompt"] == "w5 w6"  # specials left out


def test_messages_follow_the_models_template_and_the_chat_endpoint(folder_srv):
    messages = [{"role": "user", "content": "w5 w6"}]
    default = _ok(folder_srv, "/tokenize", {"messages": messages})["tokens"]
    assert default == [1, 10, 5, 6, 11, 12]  # one BOS: the template's (the chat endpoint drops the second)
    chat = _ok(folder_srv, "/v1/chat/completions", {"messages": messages, "max_tokens": 1})
    assert chat["usage"]["prompt_tokens"] == len(default)
    with_specials = _ok(folder_srv, "/tokenize", {"messages": messages, "add_special_tokens": True})
    assert with_specials["tokens"] == [1, *default]
    without = _ok(folder_srv, "/tokenize", {"messages": messages, "add_special_tokens": False})
    assert without["tokens"] == default
    bare = _ok(folder_srv, "/tokenize", {"messages": messages, "add_generation_prompt": False})
    assert bare["tokens"] == default[:-1]


def test_tokenizer_info_of_a_folder_serves_what_lm_eval_reads(folder_srv):
    info = httpx.get(folder_srv.url + "/tokenizer_info", timeout=30).json()
    assert info["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert info["bos_token"] == "<s>" and info["eos_token"] == "</s>" and info["pad_token"] is None
    assert info["chat_template"] == TEMPLATE and info["legacy"] is False  # the file's other fields too
    assert info["bos_token_id"] == 1 and info["eos_token_ids"] == [2] and info["model_max_length"] == 256
    # lm-eval's remote tokenizer finds the eos id by encoding eos_token without special tokens
    encoded = _ok(folder_srv, "/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False})
    assert encoded["tokens"] == info["eos_token_ids"]
