"""A GGUF without a chat template: ChatML only when its vocabulary has ChatML's own tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny_model import smollm2_gguf, tiny_llama_config
from tests.tools.test_gguf_export import requires_llama_cpp
from turing.tools.chat import CHATML_TEMPLATE, read_chat_template
from turing.tools.deploy.gguf_export import export_model_gguf
from turing.tools.errors import InvalidInputError

IM_START, IM_END, END_OF_TEXT = 1, 2, 0  # token ids in SmolLM2's vocabulary
ASK = [{"role": "user", "content": "Say hello."}]


def tokenizer_gguf(
    out_path: Path, drop: tuple[str, ...] = (), renamed: dict[str, str] | None = None, **ids: int
) -> Path:
    """A GGUF holding only SmolLM2's tokenizer metadata, changed as asked, to export models over.

    Args:
        out_path: Where to write it.
        drop: Metadata keys to leave out (e.g. tokenizer.chat_template).
        renamed: Vocabulary entries to rename, old text to new text.
        ids: Token id keys to set, e.g. eos_token_id=0 for tokenizer.ggml.eos_token_id.
    """
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    writer = GGUFWriter(path=None, arch="llama")
    for key, meta in GGUFReader(str(smollm2_gguf())).fields.items():
        if not key.startswith("tokenizer.") or key in drop:
            continue
        value = meta.contents()
        if key == "tokenizer.ggml.tokens" and renamed:
            value = [renamed.get(token, token) for token in value]
        value = ids.get(key.removeprefix("tokenizer.ggml."), value)
        sub_type = meta.types[1] if meta.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, meta.types[0], sub_type=sub_type)
    writer.write_header_to_file(path=out_path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def always_ends_turn_model() -> Any:
    """A tiny llama whose every next token is <|im_end|>: an answer that ends at once."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.tie_word_embeddings = False
    torch.manual_seed(6)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # blocks add nothing: the last state is the embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # a positive first feature for every token
        model.lm_head.weight.zero_()
        model.lm_head.weight[IM_END, 0] = 10.0
    return model


def test_a_gguf_with_its_own_template_is_served_with_it(tiny_base: Path) -> None:
    from gguf import GGUFReader

    template = read_chat_template(tiny_base)

    stored = GGUFReader(str(tiny_base)).fields["tokenizer.chat_template"].contents()
    assert template.source == stored != CHATML_TEMPLATE
    assert template.end_of_turn == "<|im_end|>"


def test_no_template_but_chatml_tokens_serves_chatml_ending_the_turn_at_im_end(
    tmp_path: Path,
) -> None:
    # The end-of-sequence token is <|endoftext|> here, so the turn's end must come from ChatML.
    vocab = tokenizer_gguf(
        tmp_path / "vocab.gguf", drop=("tokenizer.chat_template",), eos_token_id=END_OF_TEXT
    )
    gguf_path = export_model_gguf(always_ends_turn_model(), vocab, tmp_path / "no-template.gguf")

    template = read_chat_template(gguf_path)

    assert template.source == CHATML_TEMPLATE
    assert template.end_of_turn == "<|im_end|>"
    assert template.render(ASK, add_generation_prompt=True) == (
        "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"
    )


@requires_llama_cpp
def test_no_template_answer_stops_at_im_end_without_template_tokens(tmp_path: Path) -> None:
    from turing.tools.query.engine import Engine

    vocab = tokenizer_gguf(
        tmp_path / "vocab.gguf", drop=("tokenizer.chat_template",), eos_token_id=END_OF_TEXT
    )
    gguf_path = export_model_gguf(always_ends_turn_model(), vocab, tmp_path / "no-template.gguf")
    served = Engine(gguf_path, n_ctx=128)
    try:
        answer = served.complete(ASK, max_tokens=8)
    finally:
        served.close()

    assert answer.finish_reason == "stop" and answer.completion_tokens == 1
    assert answer.text == ""


@pytest.mark.parametrize(
    "renamed, missing",
    [
        (
            {"<|im_start|>": "<|xm_start|>", "<|im_end|>": "<|xm_end|>"},
            "<|im_start|> or <|im_end|>",
        ),
        ({"<|im_end|>": "<|xm_end|>"}, "<|im_end|>"),
    ],
)
def test_no_template_and_no_chatml_tokens_is_refused_naming_the_file(
    renamed: dict[str, str], missing: str, tmp_path: Path
) -> None:
    from tests.tiny_model import build_tiny_model

    vocab = tokenizer_gguf(
        tmp_path / "vocab.gguf", drop=("tokenizer.chat_template",), renamed=renamed
    )
    gguf_path = export_model_gguf(build_tiny_model(), vocab, tmp_path / "bare.gguf")

    message = rf"GGUF file {gguf_path} has no chat template .* has no {missing} token"
    with pytest.raises(InvalidInputError, match=message.replace("|", r"\|")):
        read_chat_template(gguf_path)


@requires_llama_cpp
def test_an_engine_refuses_a_gguf_it_cannot_render_prompts_for(tmp_path: Path) -> None:
    from tests.tiny_model import build_tiny_model
    from turing.tools.query.engine import Engine

    vocab = tokenizer_gguf(
        tmp_path / "vocab.gguf",
        drop=("tokenizer.chat_template",),
        renamed={"<|im_start|>": "<|xm_start|>"},
    )
    gguf_path = export_model_gguf(build_tiny_model(), vocab, tmp_path / "bare.gguf")

    with pytest.raises(InvalidInputError, match=r"bare\.gguf has no chat template"):
        Engine(gguf_path, n_ctx=128)
