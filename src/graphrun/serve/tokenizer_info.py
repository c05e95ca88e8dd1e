"""What the served tokenizer is, said truthfully: GET /tokenizer_info, and the ids its encode adds.

vLLM answers /tokenizer_info with the tokenizer's configuration (tokenizer_config.json's fields), and
lm-eval's remote tokenizer reads `eos_token`, `bos_token`, `pad_token` and `chat_template` from it. What
graphrun can say of its two tokenizers (llm/tokenizer.py), and what it says:

- a checkpoint folder (HFTokenizer, tokenizer.json): the folder's tokenizer_config.json as it is (minus
  its chat_template), special tokens written as their text; `tokenizer_class` the file's, else
  "PreTrainedTokenizerFast" (tokenizer.json is what that class loads).
- a preset (ByteTokenizer): `tokenizer_class` "ByteTokenizer" and no special-token text: its bos and
  eos ids (256, 257) are not the encoding of any text, so a client that encodes `eos_token` to find the
  eos id would be misled by any string; null says there is none. Their ids are in `bos_token_id` and
  `eos_token_ids`.

Always, and over anything the file says: `chat_template` is the jinja2 text the server renders chat
prompts with (the model's, or the simple built-in one, chat_template.py), `model_max_length` is the
server's context length (prompt and output tokens; what it accepts, not what the tokenizer was trained
for), `vocab_size` the model's, `bos_token_id` and `eos_token_ids` the ids the engine uses (the eos ids
are those it stops on).

`SpecialAffixes`: the tokens a tokenizer's encode adds around any text (Llama 3's <|begin_of_text|>),
found by encoding "" and "a" once, so /tokenize can leave them out (add_special_tokens=false) through
the `Tokenizer` protocol, which has no such switch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from graphrun.llm.tokenizer import ByteTokenizer, Tokenizer
from graphrun.serve.chat_template import ChatTemplate

_SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TokenizerInfo(BaseModel):
    """GET /tokenizer_info: the tokenizer's configuration (module docstring); extra fields are the
    checkpoint's tokenizer_config.json entries."""

    model_config = ConfigDict(extra="allow")
    tokenizer_class: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    chat_template: str
    model_max_length: int
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]


def tokenizer_info(
    model_source: str, tokenizer: Tokenizer, template: ChatTemplate, max_model_len: int, vocab_size: int
) -> TokenizerInfo:
    """The /tokenizer_info answer for the model loaded from `model_source` (a preset name or a folder)."""
    if isinstance(tokenizer, ByteTokenizer):
        config: dict[str, Any] = {"tokenizer_class": "ByteTokenizer"}
    else:
        config = _tokenizer_config(Path(model_source))
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.pop("chat_template", None)
    for name in _SPECIAL_TOKENS:
        config[name] = _token_text(config.get(name))
    return TokenizerInfo(
        **{
            **config,
            "chat_template": template.source,
            "model_max_length": max_model_len,
            "vocab_size": vocab_size,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_ids": list(tokenizer.eos_token_ids),
        }
    )


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    """A folder's tokenizer_config.json as a dict ({} when absent or not an object)."""
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _token_text(token: Any) -> str | None:
    """A special token of tokenizer_config.json as text (a string or {"content": ...}), else None."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


@dataclass(frozen=True, slots=True)
class SpecialAffixes:
    """The ids a tokenizer's encode puts before (prefix) and after (suffix) the ids of any text."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialAffixes:
        """Found from encode(""), which is prefix + suffix, and encode("a"), which starts with the prefix."""
        empty, probe = tokenizer.encode(""), tokenizer.encode("a")
        shared = 0
        while shared < min(len(empty), len(probe)) and empty[shared] == probe[shared]:
            shared += 1
        prefix, suffix = tuple(empty[:shared]), tuple(empty[shared:])
        if suffix and tuple(probe[-len(suffix) :]) != suffix:
            prefix, suffix = tuple(empty), ()  # the split is unclear: all before the text, as BOS is
        return cls(prefix, suffix)

    def strip(self, ids: list[int]) -> list[int]:
        """ids without the prefix and suffix encode added."""
        start = len(self.prefix) if tuple(ids[: len(self.prefix)]) == self.prefix else 0
        end = len(ids) - len(self.suffix)
        if not self.suffix or end < start or tuple(ids[end:]) != self.suffix:
            end = len(ids)
        return ids[start:end]
