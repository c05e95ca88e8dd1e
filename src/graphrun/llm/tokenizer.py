"""Text <-> token ids: a protocol, the Hugging Face tokenizer.json loader, and a byte tokenizer.

The engine only needs encode, decode and the special ids, so it depends on the `Tokenizer` protocol.
`HFTokenizer` reads a checkpoint's tokenizer.json with the `tokenizers` library (no transformers at
run time) and applies no chat template. `ByteTokenizer` needs no files: it pairs with the built-in
presets, whose random weights can emit any id, so its decode turns every id into some text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from graphrun.errors import ConfigError

if TYPE_CHECKING:  # imported by load_tokenizer: the presets' byte ids cost no Rust library
    from tokenizers import Tokenizer as _RustTokenizer

BYTE_BOS_ID = 256
BYTE_EOS_ID = 257
BYTE_VOCAB_SIZE = 258


class TokenizerError(ConfigError):
    """A tokenizer cannot be built: tokenizer.json missing or unreadable, or a bad vocabulary size."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, 256 = bos, 257 = eos.

    decode skips bos/eos and maps any id >= 258 to byte `id % 256`, then decodes UTF-8 with
    errors="replace": a random-weight model of any vocabulary size always yields some text.
    encode adds no bos (as for Qwen3); prepend `bos_token_id` yourself if you want it.
    """

    def __init__(self, vocab_size: int = BYTE_VOCAB_SIZE) -> None:
        if vocab_size < BYTE_VOCAB_SIZE:
            raise TokenizerError(f"ByteTokenizer needs vocab_size >= {BYTE_VOCAB_SIZE}, got {vocab_size}")
        self._vocab_size = vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (BYTE_EOS_ID,)

    @property
    def bos_token_id(self) -> int | None:
        return BYTE_BOS_ID

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i % 256 for i in ids if i not in (BYTE_BOS_ID, BYTE_EOS_ID))
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A checkpoint's tokenizer.json; bos/eos from generation_config.json, config.json, tokenizer_config.json.

    encode applies the tokenizer's own post-processor (e.g. Llama 3 prepends <|begin_of_text|>, Qwen3
    adds nothing), as transformers does by default; decode skips special tokens.
    """

    def __init__(
        self, tokenizer: _RustTokenizer, bos_token_id: int | None, eos_token_ids: tuple[int, ...]
    ) -> None:
        self._tokenizer = tokenizer
        self._bos_token_id = bos_token_id
        self._eos_token_ids = eos_token_ids

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_token_ids

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def to_json(self) -> str:
        """The tokenizer.json text (structured output hands it to its grammar library)."""
        return str(self._tokenizer.to_str())


def load_tokenizer(folder: str | Path) -> HFTokenizer:
    """The HFTokenizer of a local checkpoint folder (needs tokenizer.json)."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(
            f"no tokenizer.json in {folder}; graphrun reads fast-tokenizer files only "
            "(save one with transformers' tokenizer.save_pretrained)"
        )
    from tokenizers import Tokenizer as _RustTokenizer

    try:
        tokenizer = _RustTokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception subclasses
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    return HFTokenizer(tokenizer, *_special_ids(folder, tokenizer))


def _special_ids(folder: Path, tokenizer: _RustTokenizer) -> tuple[int | None, tuple[int, ...]]:
    """(bos, eos ids): bos from the first file that names one; eos from all of them, in that order.

    generation_config.json comes first because it is what transformers' generate stops on (instruct
    models list several end tokens there); tokenizer_config.json names tokens, not ids.
    """
    sources = [_read_json(folder / name) for name in ("generation_config.json", "config.json")]
    special = _read_json(folder / "tokenizer_config.json")
    bos = next((int(s["bos_token_id"]) for s in sources if s.get("bos_token_id") is not None), None)
    if bos is None:
        bos = _token_id(tokenizer, special.get("bos_token"))
    eos: list[int] = []
    for value in [*(s.get("eos_token_id") for s in sources), _token_id(tokenizer, special.get("eos_token"))]:
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is not None and int(token_id) not in eos:
                eos.append(int(token_id))
    return bos, tuple(eos)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from path, or {} when the file is absent."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _token_id(tokenizer: _RustTokenizer, token: Any) -> int | None:
    """The id of a tokenizer_config.json special token (a string or {"content": ...}), if it exists."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    token_id = tokenizer.token_to_id(token)
    return None if token_id is None else int(token_id)
