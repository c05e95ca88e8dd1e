"""Chat messages -> prompt text: the model's own chat template, or a simple documented one.

A model folder whose tokenizer_config.json has a `chat_template` is rendered with that template through
jinja2 (when installed; in a sandbox), as transformers does, with add_generation_prompt=True and the
bos/eos token strings. Otherwise, and always for the presets (byte tokenizer, no template), messages
render with a simple template, one block per message, then the assistant's turn is opened:
    "<|system|>\n{content}\n<|user|>\n{content}\n<|assistant|>\n"
A template that raises (raise_exception, e.g. roles that do not alternate) is the caller's 400.
`source` is the template as jinja2 text (the simple one too, written as `SIMPLE_TEMPLATE`), so a client
that renders prompts itself (/tokenizer_info's chat_template) renders what the server does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.protocol import APIError, ChatMessage, encode_text

log = logging.getLogger(__name__)

# the simple template as jinja2 text (render() writes it directly; tested to agree)
SIMPLE_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> prompt text


class ChatTemplate:
    """Renders messages to prompt text: a model's jinja2 chat_template, or the simple template."""

    def __init__(self, render: Render | None = None, source: str = SIMPLE_TEMPLATE) -> None:
        self._render = render
        self.source = source  # the template's jinja2 text

    @property
    def is_simple(self) -> bool:
        """True when the simple built-in template is used."""
        return self._render is None

    @classmethod
    def for_model(cls, model: str) -> ChatTemplate:
        """The chat_template of a model folder's tokenizer_config.json, else the simple template."""
        path = Path(model) / "tokenizer_config.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: take "default"
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if not isinstance(source, str):
            return cls()
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            log.warning("jinja2 is not installed: chat prompts use the simple template, not %s's", model)
            return cls()

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        template = env.from_string(source)
        special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token")}

        def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **special)

        return cls(render, source)

    def prompt_ids(
        self, messages: list[ChatMessage], tokenizer: Tokenizer, add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered prompt; one BOS when both the template and the tokenizer add one."""
        ids = encode_text(tokenizer, self.render(messages, add_generation_prompt), "messages")
        if not self.is_simple and len(ids) > 1 and ids[0] == ids[1] == tokenizer.bos_token_id:
            ids = ids[1:]
        return ids

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
        """The prompt text for messages, ending where the assistant's reply starts (add_generation_prompt;
        else after the last message)."""
        plain = [{"role": m.role, "content": m.text()} for m in messages]
        if self._render is None:
            turn = "<|assistant|>\n" if add_generation_prompt else ""
            return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in plain) + turn
        try:
            return self._render(plain, add_generation_prompt)
        except Exception as exc:  # a template's raise_exception or a rendering error: the caller's messages
            raise APIError(
                400, f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from exc


def _token_text(token: Any) -> str:
    """A tokenizer_config.json special token as text (a string or {"content": ...})."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""
