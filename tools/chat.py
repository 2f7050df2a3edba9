"""Chat templates: read a base model's template from its GGUF file and render conversations.

Training, PyTorch evaluation and llama.cpp serving all render prompts here, so the model is
served with exactly the text layout it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]

# Used only when a GGUF carries no template of its own (ChatML, as SmolLM2 uses).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """A conversation cannot be rendered with the model's chat template."""


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template and the special tokens that frame its turns."""

    source: str
    bos_token: str
    eos_token: str

    @property
    def end_of_turn(self) -> str:
        """The text that closes an assistant turn; generation stops on it."""
        return self.eos_token

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """Render messages to the exact prompt text the model sees."""
        try:
            return _compile(self.source).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed on these messages: {exc}") from exc

    def split_turns(self, messages: list[Message]) -> list[tuple[str, str]]:
        """Split a conversation into (prompt text, assistant text) pieces for loss masking.

        Concatenating every piece gives the rendered conversation. Each assistant text ends with
        the end-of-turn token; the prompt text before it carries no loss.
        """
        pieces: list[tuple[str, str]] = []
        consumed = ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self.render(messages[:index], add_generation_prompt=True)
            through = self.render(messages[: index + 1])
            answer_end = through.find(self.end_of_turn, len(prefix))
            if not prefix.startswith(consumed) or answer_end < 0:
                raise ChatTemplateError(
                    "chat template does not render turns as a growing prefix; "
                    "assistant tokens cannot be located for loss masking"
                )
            answer = through[len(prefix) : answer_end + len(self.end_of_turn)]
            pieces.append((prefix[len(consumed) :], answer))
            consumed = prefix + answer
        return pieces


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=16)
def read_chat_template(gguf_path: str | Path) -> ChatTemplate:
    """Read the chat template and special tokens stored in a GGUF file's metadata."""
    from gguf import GGUFReader  # memory-maps the file; cheap, but keep it off import time

    reader = GGUFReader(str(gguf_path))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    source = _field(reader, "tokenizer.chat_template") or CHATML_TEMPLATE
    bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    return ChatTemplate(
        source=str(source),
        bos_token=tokens[bos_id] if tokens and bos_id is not None else "",
        eos_token=tokens[eos_id] if tokens and eos_id is not None else "<|im_end|>",
    )


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()
