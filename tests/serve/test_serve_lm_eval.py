"""lm-eval against a live server: the way people evaluate a served model gives transformers' answers.

Three small tasks defined here (a JSONL file and task YAMLs in a temporary folder, no download) run
through lm-eval's `local-completions` model against `graphrun serve` on a checkpoint folder, and through
lm-eval's `hf` model on the same folder on CPU: loglikelihood (echo with logprobs, max_tokens 1, token-id
prompts, several per request), multiple choice (the same requests, four per document) and generate_until
(greedy with a stop string). Every sample's loglikelihood and greedy flag and every generated text must
agree, and so must the task scores. Half the documents are built from the HF model's own greedy
continuation, so the greedy flag, multiple-choice accuracy and exact match are not all zero.

Needs the `eval` extra (lm-eval with its api and hf extras); skipped without it. Select it with
`-m lm_eval`.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lm_eval", reason="needs the eval extra: pip install -e '.[eval]'")
for _module in ("tenacity", "aiohttp", "accelerate"):  # lm-eval's api and hf extras
    pytest.importorskip(_module, reason="needs the eval extra: pip install -e '.[eval]'")

from serve_harness import live_server  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from tokenizers.pre_tokenizers import Whitespace  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

pytestmark = pytest.mark.lm_eval

VOCAB = 128
NUM_DOCS = 12
GEN_TOKENS = 4
STOP = "w9"  # also cuts w90..w99 short: both sides cut the text at the string, wherever it falls
TASKS = ("graphrun_loglikelihood", "graphrun_multiple_choice", "graphrun_generate")
ATOL = 1e-4  # fp32 on CPU; a sum over a few tokens


def _write_checkpoint(folder: Path) -> tuple[LlamaForCausalLM, Tokenizer]:
    """A random Llama saved with save_pretrained, and a word tokenizer: w3..w127, <s> (1), </s> (2)."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(["<s>", "</s>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 256}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **special})
    )
    return model, tokenizer


def _greedy_text(model: LlamaForCausalLM, tokenizer: Tokenizer, context: str, num_tokens: int) -> str:
    ids = torch.tensor([tokenizer.encode(context).ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=num_tokens, do_sample=False, pad_token_id=0)
    return str(tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True))


def _documents(model: LlamaForCausalLM, tokenizer: Tokenizer) -> list[dict[str, Any]]:
    """Random word contexts; even documents continue the way the model would (greedy)."""
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(10, VOCAB)}" for _ in range(n))

    docs = []
    for i in range(NUM_DOCS):
        context = words(rng.randrange(3, 12))
        greedy = _greedy_text(model, tokenizer, context, 2) if i % 2 == 0 else ""
        choices = [words(rng.randrange(1, 4)) for _ in range(4)]
        label = rng.randrange(4)
        if greedy:
            choices[label] = greedy
        generated = _greedy_text(model, tokenizer, context, GEN_TOKENS)
        answer = generated.split(STOP)[0] if greedy else words(2)
        continuation = greedy or words(rng.randrange(1, 4))
        doc = {"context": context, "continuation": continuation, "choices": choices, "label": label}
        docs.append({**doc, "answer": answer})
    return docs


def _write_tasks(folder: Path, docs: list[dict[str, Any]]) -> None:
    folder.mkdir()
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'doc_to_text: "{{context}}"\ntarget_delimiter: " "\n'
    )
    tasks = {
        "loglikelihood": 'doc_to_target: " {{continuation}}"\n'
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n",
        "multiple_choice": "doc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "generate_until": 'doc_to_target: "{{answer}}"\n'
        f'generation_kwargs:\n  until: ["{STOP}"]\n  max_gen_toks: {GEN_TOKENS}\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    regexes_to_ignore: ['\\s+$']\n",
    }
    for (kind, body), name in zip(tasks.items(), TASKS, strict=True):
        (folder / f"{name}.yaml").write_text(f"task: {name}\noutput_type: {kind}\n{common}{body}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm-eval")
    model, tokenizer = _write_checkpoint(root / "checkpoint")
    _write_tasks(root / "tasks", _documents(model, tokenizer))
    return root


@pytest.fixture(scope="module", autouse=True)
def offline_hf(tmp_path_factory: pytest.TempPathFactory):
    """datasets' cache in a temporary folder; the Hub never asked (everything is local)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield


def _evaluate(root: Path, model: str, model_args: dict[str, Any]) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=list(TASKS), task_manager=manager,
        log_samples=True, batch_size=4, bootstrap_iters=0,
    )  # fmt: skip
    assert out is not None
    return out


@pytest.fixture(scope="module")
def hf_results(workspace: Path) -> dict[str, Any]:
    args = {"pretrained": str(workspace / "checkpoint"), "dtype": "float32", "device": "cpu"}
    return _evaluate(workspace, "hf", args)


@pytest.fixture(scope="module")
def served_results(workspace: Path) -> dict[str, Any]:
    engine = {"model": str(workspace / "checkpoint"), "max_model_len": 256}
    with live_server(engine) as server:
        args = {
            "model": "tiny",  # the harness's served model name
            "base_url": server.url + "/v1/completions",
            "tokenizer_backend": "remote",  # /tokenizer_info and /tokenize: the folder's tokenizer
            "tokenized_requests": True,
            "max_length": 256,
            "num_concurrent": 2,
        }
        return _evaluate(workspace, "local-completions", args)


def _responses(results: dict[str, Any], task: str) -> list[Any]:
    """Each document's filtered responses, in document order."""
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    assert len(samples) == NUM_DOCS
    return [sample["filtered_resps"] for sample in samples]


@pytest.mark.parametrize("task", TASKS[:2])
def test_loglikelihoods_and_greedy_flags_equal_transformers(hf_results, served_results, task):
    for ours, theirs in zip(_responses(served_results, task), _responses(hf_results, task), strict=True):
        assert len(ours) == len(theirs) == (1 if task == TASKS[0] else 4)
        for (logprob, greedy), (hf_logprob, hf_greedy) in zip(ours, theirs, strict=True):
            assert math.isclose(float(logprob), float(hf_logprob), rel_tol=1e-5, abs_tol=ATOL)
            assert bool(greedy) == bool(hf_greedy)


def test_generations_equal_transformers(hf_results, served_results):
    ours, theirs = _responses(served_results, TASKS[2]), _responses(hf_results, TASKS[2])
    assert ours == theirs
    assert sum(bool(text) for text in ours) >= NUM_DOCS // 2  # the stop string did not cut everything


def test_task_scores_equal_transformers(hf_results, served_results):
    for task in TASKS:
        ours, theirs = served_results["results"][task], hf_results["results"][task]
        metrics = [key for key in theirs if "," in key and "_stderr" not in key]
        assert metrics, theirs
        for metric in metrics:
            if metric.startswith("perplexity"):  # exp of a mean of floats: equal within fp32 rounding
                assert math.isclose(ours[metric], theirs[metric], rel_tol=1e-4), metric
            else:
                assert ours[metric] == theirs[metric], (task, metric)
    scores = hf_results["results"]
    assert scores[TASKS[0]]["acc,none"] >= 0.5  # the greedy documents are greedy for the model
    assert scores[TASKS[1]]["acc,none"] > 0 and scores[TASKS[2]]["exact_match,none"] > 0
