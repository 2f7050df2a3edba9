"""The PyTorch side: prompts tokenised as llama.cpp tokenises them, greedy batched generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from turing.tools.chat import read_chat_template
from turing.tools.errors import NotFoundError
from turing.tools.modeling import encode_text, generate, load_model

QUESTIONS = [
    "hi",
    "Where is my card? It has not arrived after two weeks.",
    "Ünïcödé, emoji 🙂 and\ttabs",
    "What does <|im_end|> mean inside a message?",
    "  leading spaces and a trailing newline\n",
]


@pytest.fixture(scope="module")
def tiny(tiny_base: Path) -> tuple[Any, Any]:
    return load_model(tiny_base)


@pytest.fixture(scope="module")
def llama(tiny_base: Path) -> Any:
    from llama_cpp import Llama

    return Llama(str(tiny_base), n_ctx=256, n_threads=2, seed=0, verbose=False)


def conversations() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": question}] for question in QUESTIONS]


def test_prompts_are_tokenised_exactly_as_llama_cpp_tokenises_them(
    tiny_base: Path, tiny: tuple[Any, Any], llama: Any
) -> None:
    _, tokenizer = tiny
    template = read_chat_template(tiny_base)

    for messages in conversations():
        text = template.render(messages, add_generation_prompt=True)
        # add_bos=True lets llama.cpp add a BOS exactly when the GGUF asks for one.
        assert encode_text(tokenizer, text) == llama.tokenize(text.encode(), True, True)


def test_batched_generation_gives_the_answers_of_one_prompt_at_a_time(
    tiny_base: Path, tiny: tuple[Any, Any]
) -> None:
    model, tokenizer = tiny
    template = read_chat_template(tiny_base)

    one_by_one = generate(model, tokenizer, template, conversations(), 12, batch_size=1)
    batched = generate(model, tokenizer, template, conversations(), 12, batch_size=4)

    assert batched == one_by_one
    assert all(answers for answers in batched)


def test_greedy_generation_matches_llama_cpp_on_the_same_model(
    tiny_base: Path, tiny: tuple[Any, Any], llama: Any
) -> None:
    model, tokenizer = tiny
    template = read_chat_template(tiny_base)

    ours = generate(model, tokenizer, template, conversations(), 12)
    theirs = []
    for messages in conversations():
        prompt = template.render(messages, add_generation_prompt=True)
        out = llama.create_completion(
            prompt, max_tokens=12, temperature=0.0, stop=[template.end_of_turn]
        )
        theirs.append(out["choices"][0]["text"])

    assert ours == theirs


def test_load_model_names_a_missing_base_or_adapter(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nowhere\.gguf"):
        load_model(tmp_path / "nowhere.gguf")
    with pytest.raises(NotFoundError, match=r"adapter_config\.json"):
        load_model(tiny_base, tmp_path)
