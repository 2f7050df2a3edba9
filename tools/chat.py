"""Chat templates: read a base model's template from its GGUF file and render conversations.

Training, PyTorch evaluation and llama.cpp serving all render prompts here, so the model is
served with exactly the text layout it was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

Message = dict[str, Any]

# Used only when a GGUF carries no template of its own but its vocabulary has ChatML's tokens.
CHATML_START = "<|im_start|>"
CHATML_END = "<|im_end|>"
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

    @property
    def supports_tools(self) -> bool:
        """Whether the template lays out tool definitions and tool calls itself."""
        return "tool_calls" in self.source

    def render(
        self,
        messages: list[Message],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render messages (and the tools they may call) to the exact text the model sees.

        A template without tool support gets tool calls written into the assistant's text as
        `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and the tool definitions in
        the system message, so tool-use data trains and serves on any chat model.
        """
        options: dict[str, Any] = {}
        if self.supports_tools:
            options["tools"] = tools or None
        else:
            messages = _inline_tools(messages, tools)
        try:
            return _compile(self.source).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **options,
            )
        except (jinja2.TemplateError, TypeError) as exc:
            raise ChatTemplateError(f"chat template failed on these messages: {exc}") from exc

    def split_turns(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> list[tuple[str, str]]:
        """Split a conversation into (prompt text, assistant text) pieces for loss masking.

        Concatenating every piece gives the rendered conversation up to its last trained answer.
        Each assistant text ends with the end-of-turn token; the prompt text before it carries no
        loss. An assistant message with `"weight": 0` is context, not an answer.
        """
        pieces: list[tuple[str, str]] = []
        consumed = ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight", 1) == 0:
                continue
            prefix = self.render(messages[:index], add_generation_prompt=True, tools=tools)
            through = self.render(messages[: index + 1], tools=tools)
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


TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def _inline_tools(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """The messages with tool calls and tool definitions as text, for templates without tools."""
    if not tools and not any(message.get("tool_calls") for message in messages):
        return messages

    inlined = [_inline_calls(message) for message in messages]
    if tools:
        listing = "\n".join(json.dumps(tool.get("function", tool)) for tool in tools)
        described = (
            f"You can call these tools:\n<tools>\n{listing}\n</tools>\n"
            f'To call one, answer with {TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}'
            f"{TOOL_CALL_CLOSE}."
        )
        if inlined and inlined[0]["role"] == "system":
            described = f"{inlined[0]['content']}\n\n{described}"
            inlined = inlined[1:]
        inlined.insert(0, {"role": "system", "content": described})
    return inlined


def _inline_calls(message: Message) -> Message:
    calls = message.get("tool_calls")
    if not calls:
        return message
    written = [
        TOOL_CALL_OPEN
        + json.dumps({"name": call["function"]["name"], "arguments": _arguments(call)})
        + TOOL_CALL_CLOSE
        for call in calls
    ]
    text = "\n".join([message["content"], *written] if message.get("content") else written)
    return {"role": message["role"], "content": text}


def _arguments(call: dict[str, Any]) -> Any:
    arguments = call["function"].get("arguments", "{}")
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return arguments


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=16)
def read_chat_template(gguf_path: str | Path) -> ChatTemplate:
    """Read the chat template and special tokens stored in a GGUF file's metadata.

    A GGUF without `tokenizer.chat_template` is served with ChatML only when its vocabulary
    holds `<|im_start|>` and `<|im_end|>` as tokens of their own; `<|im_end|>` then ends the
    turn, so generation stops there instead of writing template markup into the answer.

    Raises:
        InvalidInputError: The file has no chat template and its vocabulary lacks ChatML's
            tokens, so no prompt layout the model knows can be chosen.
    """
    from gguf import GGUFReader  # memory-maps the file; cheap, but keep it off import time

    reader = GGUFReader(str(gguf_path))
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    bos_id = _field(reader, "tokenizer.ggml.bos_token_id")
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    bos_token = tokens[bos_id] if bos_id is not None and bos_id < len(tokens) else ""
    eos_token = tokens[eos_id] if eos_id is not None and eos_id < len(tokens) else ""

    source = _field(reader, "tokenizer.chat_template")
    if source is None:
        _check_chatml_vocabulary(gguf_path, tokens)
        logger.info("%s has no chat template; serving it with ChatML", gguf_path)
        return ChatTemplate(source=CHATML_TEMPLATE, bos_token=bos_token, eos_token=CHATML_END)
    if not eos_token:
        raise InvalidInputError(
            f"GGUF file {gguf_path} has a chat template but no tokenizer.ggml.eos_token_id "
            "naming a token of its vocabulary, so the end of an answer cannot be found"
        )
    return ChatTemplate(source=str(source), bos_token=bos_token, eos_token=eos_token)


def _check_chatml_vocabulary(gguf_path: str | Path, tokens: list[str]) -> None:
    missing = [marker for marker in (CHATML_START, CHATML_END) if marker not in set(tokens)]
    if missing:
        raise InvalidInputError(
            f"GGUF file {gguf_path} has no chat template (tokenizer.chat_template) and its "
            f"vocabulary has no {' or '.join(missing)} token, so the ChatML fallback would "
            "leak template text into answers; use a GGUF that carries its chat template"
        )


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()
