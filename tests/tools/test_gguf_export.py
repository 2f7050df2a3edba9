"""GGUF export: whole models and LoRA adapters reproduce PyTorch's logits in llama.cpp."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.tiny_model import build_tiny_base, build_tiny_model, smollm2_gguf, tiny_llama_config
from turing.tools.deploy.gguf_export import export_lora_adapter, export_model_gguf
from turing.tools.errors import InvalidInputError


def llama_cpp_importable() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


requires_llama_cpp = pytest.mark.skipif(
    not llama_cpp_importable(), reason="llama-cpp-python is not importable: pip install -e ."
)

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PLAIN_PROMPT = "The quick brown fox jumps over the lazy"
CHAT_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_HAIKU = [{"role": "user", "content": "Write a haiku about autumn leaves."}]


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def tiny_from_gguf(tiny_gguf: Path) -> Any:
    """The tiny model as training sees it: loaded by transformers from our GGUF."""
    return load_from_gguf(tiny_gguf)


def load_from_gguf(gguf_path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval()


def add_random_lora(model: Any, seed: int, b_std: float, **options: Any) -> Any:
    """Wrap `model` in a rank-8 LoRA on every linear layer with non-zero B, so it changes logits."""
    from peft import LoraConfig, get_peft_model

    options.setdefault("target_modules", ALL_LINEAR)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **options))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, b_std)
    return peft_model.eval()


def torch_logits(model: Any, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def top(logits: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in np.argsort(-logits)[:k]]


def engine(base: Path, adapter: Path | None = None) -> Any:
    from turing.tools.query.engine import Engine

    return Engine(base, adapter, n_ctx=256)


def prompt_tokens(served: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    text = prompt if isinstance(prompt, str) else served.render(prompt)
    tokens: list[int] = served.tokenize(text)
    return tokens


# --- whole models --------------------------------------------------------------------------


def test_tiny_base_round_trips_through_gguf_with_identical_weights_and_logits(
    tiny_from_gguf: Any,
) -> None:
    original = build_tiny_model(seed=0)

    loaded = tiny_from_gguf.state_dict()
    for name, weight in original.state_dict().items():
        assert torch.equal(weight, loaded[name]), name

    tokens = [1, 4093, 198, 22, 9690, 314, 2, 198]
    np.testing.assert_allclose(
        torch_logits(original, tokens), torch_logits(tiny_from_gguf, tokens), atol=1e-5
    )


@requires_llama_cpp
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_serves_exported_tiny_base_with_pytorch_logits(
    dtype: str, tiny_gguf: Path, tmp_path: Path
) -> None:
    model = build_tiny_model(seed=0)
    if dtype == "f32":
        gguf_path = tiny_gguf  # build_tiny_base wrote the same model in f32
    else:
        gguf_path = export_model_gguf(model, smollm2_gguf(), tmp_path / f"tiny-{dtype}.gguf", dtype)

    served = engine(gguf_path)
    for prompt in (CHAT_QUESTION, PLAIN_PROMPT):
        tokens = prompt_tokens(served, prompt)
        expected = torch_logits(model, tokens)
        got = served.next_token_logits(tokens)
        assert cosine(expected, got) > 0.999
        assert top(got, 1) == top(expected, 1)
    served.close()


def test_untied_model_exports_its_own_output_layer(tmp_path: Path) -> None:
    from gguf import GGUFReader
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.tie_word_embeddings = False
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()

    gguf_path = export_model_gguf(model, smollm2_gguf(), tmp_path / "untied.gguf")

    tensors = {t.name: t for t in GGUFReader(str(gguf_path)).tensors}
    assert set(tensors) >= {"token_embd.weight", "output.weight"}
    np.testing.assert_array_equal(
        tensors["output.weight"].data, model.lm_head.weight.detach().numpy()
    )


def test_model_whose_vocabulary_differs_from_the_base_tokenizer_is_refused(
    tmp_path: Path,
) -> None:
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.vocab_size = 1000

    with pytest.raises(InvalidInputError, match=r"vocab_size 1000 .* 49152 tokens"):
        export_model_gguf(LlamaForCausalLM(config), smollm2_gguf(), tmp_path / "bad.gguf")
    assert list(tmp_path.iterdir()) == []


def test_unknown_export_dtype_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"'q4_0'.*'f32', 'f16', 'q8_0'"):
        export_model_gguf(build_tiny_model(), smollm2_gguf(), tmp_path / "x.gguf", dtype="q4_0")


def test_q8_0_quantizes_matrices_keeps_norms_f32_and_writes_odd_rows_in_f16(
    tmp_path: Path,
) -> None:
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.hidden_size, config.head_dim = 80, 20  # rows of 80 values hold 2.5 blocks of 32
    torch.manual_seed(4)
    model = LlamaForCausalLM(config).eval()

    gguf_path = export_model_gguf(model, smollm2_gguf(), tmp_path / "odd.gguf", dtype="q8_0")

    reader = GGUFReader(str(gguf_path))
    tensors = {t.name: t for t in reader.tensors}
    types = {name: GGMLQuantizationType(t.tensor_type).name for name, t in tensors.items()}
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of intermediate_size=128 values
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_up.weight"):
        assert types[name] == "F16", name
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert reader.fields["general.file_type"].contents() == 7  # llama.cpp's MOSTLY_Q8_0

    down = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    packed = tensors["blk.0.ffn_down.weight"]
    restored = dequantize(packed.data, GGMLQuantizationType.Q8_0).reshape(down.shape)
    assert np.abs(restored - down).max() <= np.abs(down).max() / 127


def test_safetensors_are_read_without_torch_exactly_as_torch_reads_them(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from turing.tools.deploy.gguf_export import read_safetensors

    torch.manual_seed(5)
    tensors = {
        "bf16": torch.randn(3, 5).bfloat16(),
        "f16": torch.randn(4).half(),
        "f32": torch.randn(2, 3, 2),
    }
    save_file(tensors, tmp_path / "weights.safetensors")

    read = read_safetensors(tmp_path / "weights.safetensors")
    for name, tensor in load_file(tmp_path / "weights.safetensors").items():
        assert read[name].dtype == np.float32
        np.testing.assert_array_equal(read[name], tensor.float().numpy())

    save_file({"ids": torch.arange(3)}, tmp_path / "ints.safetensors")
    with pytest.raises(InvalidInputError, match=r"tensor 'ids' .* has dtype 'I64'"):
        read_safetensors(tmp_path / "ints.safetensors")


# --- LoRA adapters -------------------------------------------------------------------------

LORA_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "rslora": {"use_rslora": True},
    "rank-and-alpha-patterns": {
        "rank_pattern": {"down_proj": 4},
        "alpha_pattern": {"q_proj": 32, "layers.1.mlp.up_proj": 4},
    },
}


@requires_llama_cpp
@pytest.mark.parametrize("variant", list(LORA_VARIANTS))
def test_lora_adapter_served_by_llama_cpp_matches_peft_logits(
    variant: str,
    tiny_from_gguf: Any,
    tiny_gguf: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    model = copy.deepcopy(tiny_from_gguf)
    peft_model = add_random_lora(model, 1, 0.05, **LORA_VARIANTS[variant])
    peft_model.save_pretrained(tmp_path / "adapter")

    adapter = export_lora_adapter(tmp_path / "adapter", tiny_gguf, tmp_path / "adapter.gguf")

    capfd.readouterr()
    served = engine(tiny_gguf, adapter)
    for prompt in (CHAT_QUESTION, PLAIN_PROMPT):
        tokens = prompt_tokens(served, prompt)
        expected = torch_logits(peft_model, tokens)
        with peft_model.disable_adapter():
            without_adapter = torch_logits(peft_model, tokens)
        got = served.next_token_logits(tokens)

        assert cosine(expected, without_adapter) < 0.99, "the adapter must change the logits"
        assert cosine(expected, got) > 0.999
        assert top(got, 1) == top(expected, 1)
    served.close()
    assert capfd.readouterr().out == "", "loading and decoding must leave stdout to MCP"


@requires_llama_cpp
def test_lora_adapter_over_real_smollm2_q4_1_matches_peft_logits(tmp_path: Path) -> None:
    base = smollm2_gguf()
    peft_model = add_random_lora(load_from_gguf(base), 1, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")

    adapter = export_lora_adapter(tmp_path / "adapter", base, tmp_path / "adapter.gguf")

    served, plain_base = engine(base, adapter), engine(base)
    for prompt in (CHAT_QUESTION, CHAT_HAIKU):
        tokens = prompt_tokens(served, prompt)
        expected = torch_logits(peft_model, tokens)
        got = served.next_token_logits(tokens)

        # Q4_1 weights meet 8-bit activations in llama.cpp but f32 ones in PyTorch, so the
        # match is close rather than exact; the adapter must still move llama.cpp toward peft.
        assert cosine(expected, got) > 0.99
        assert cosine(expected, got) > cosine(expected, plain_base.next_token_logits(tokens))
        assert top(got, 1) == top(expected, 1)
        assert set(top(got, 5)) == set(top(expected, 5))
    served.close()
    plain_base.close()


REFUSED_ADAPTERS: dict[str, tuple[dict[str, Any], str]] = {
    "modules-to-save": (
        {"modules_to_save": ["norm"]},
        r"'base_model\.model\.model\.[\w.]*norm\.weight'.* are full weights \(modules_to_save",
    ),
    "dora": ({"use_dora": True}, r"lora_magnitude_vector.*' .*are DoRA magnitude vectors"),
    "embedding-lora": (
        {"target_modules": [*ALL_LINEAR, "embed_tokens"]},
        r"embed_tokens\.lora_embedding_A'.* are embedding LoRA matrices",
    ),
    "lm-head-lora": (
        {"target_modules": [*ALL_LINEAR, "lm_head"]},
        r"'base_model\.model\.lm_head\.lora_A\.weight'.* adapt a layer .* does not support",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_ADAPTERS))
def test_adapter_with_non_lora_tensors_is_refused_naming_the_tensor(
    case: str, tiny_from_gguf: Any, tiny_gguf: Path, tmp_path: Path
) -> None:
    options, message = REFUSED_ADAPTERS[case]
    peft_model = add_random_lora(copy.deepcopy(tiny_from_gguf), 2, 0.05, **options)
    peft_model.save_pretrained(tmp_path / "adapter")
    out_path = tmp_path / "out" / "adapter.gguf"
    out_path.parent.mkdir()
    out_path.write_bytes(b"previous version")

    with pytest.raises(InvalidInputError, match=message):
        export_lora_adapter(tmp_path / "adapter", tiny_gguf, out_path)

    assert out_path.read_bytes() == b"previous version"
    assert list(out_path.parent.iterdir()) == [out_path], "no temporary file is left behind"


def test_adapter_trained_on_another_base_is_refused_with_both_shapes(
    tiny_from_gguf: Any, tmp_path: Path
) -> None:
    add_random_lora(copy.deepcopy(tiny_from_gguf), 3, 0.05).save_pretrained(tmp_path / "adapter")

    with pytest.raises(InvalidInputError, match=r"maps 128 -> 64 features .* shape \(1536, 576\)"):
        export_lora_adapter(tmp_path / "adapter", smollm2_gguf(), tmp_path / "adapter.gguf")


def test_folder_without_adapter_config_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"no adapter_config\.json"):
        export_lora_adapter(tmp_path, tiny_gguf, tmp_path / "adapter.gguf")
