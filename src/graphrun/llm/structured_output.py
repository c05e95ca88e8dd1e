"""What a request's output must match: a JSON schema, a regular expression, a choice or a grammar.

A frozen value that rides on `SamplingParams`, so it crosses the engine host's process boundary like any
other parameter; no grammar library is imported here. The engine turns it into a per-request matcher
(grammar.py) whose token bitmask masks the logits before sampling (token_masks.py). `spec` is text in
every case, so equal requests compare (and cache) equal: the schema as canonical JSON, the pattern, the
choices as a JSON list, or a Lark / GBNF grammar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

StructuredKind = Literal["json", "regex", "choice", "grammar"]
KINDS: tuple[StructuredKind, ...] = ("json", "regex", "choice", "grammar")


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """The constraint on one request's output: `kind` and its `spec` text (see the module docstring)."""

    kind: StructuredKind
    spec: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"StructuredOutput.kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.spec, str):
            raise ValueError(f"StructuredOutput.spec must be text, got {type(self.spec).__name__}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> StructuredOutput:
        """Output that is one JSON value valid under `schema`."""
        return cls("json", json.dumps(schema))  # key order kept: properties are generated in it

    @classmethod
    def json_object(cls) -> StructuredOutput:
        """Output that is any one JSON object (OpenAI's response_format json_object)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> StructuredOutput:
        """Output that matches `pattern` whole."""
        return cls("regex", pattern)

    @classmethod
    def choice(cls, choices: list[str]) -> StructuredOutput:
        """Output that is exactly one of `choices`."""
        return cls("choice", json.dumps(list(choices)))

    @classmethod
    def grammar(cls, text: str) -> StructuredOutput:
        """Output in the language of a Lark or GBNF (llama.cpp) grammar."""
        return cls("grammar", text)
