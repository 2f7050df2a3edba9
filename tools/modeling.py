"""The PyTorch side of a model: load a base GGUF (and adapter) and generate greedily in batches.

Prompts are tokenised exactly as llama.cpp tokenises them, so PyTorch evaluation and llama.cpp
serving see the same tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from turing.tools.chat import ChatTemplate, Message
from turing.tools.errors import InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Silence transformers' and peft's banners, progress bars and advisory warnings."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft and transformers warn about deprecations inside their own calls; none is actionable.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def load_model(base_gguf: Path, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    """Load a base model from its GGUF file (or Hugging Face folder), with an optional adapter.

    GGUF weights are dequantised to float32. Nothing is cached: each call loads afresh.

    Args:
        base_gguf: The base model's GGUF file, or a folder holding a Hugging Face model.
        adapter_dir: A folder written by peft's `save_pretrained`, applied on top of the base.

    Returns:
        (model, tokenizer), the model in eval mode.

    Raises:
        NotFoundError: The base model or the adapter folder does not exist.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    base_gguf = Path(base_gguf)
    if not base_gguf.exists():
        raise NotFoundError(f"base model not found: {base_gguf}")
    if base_gguf.is_dir():
        source, options = str(base_gguf), {}
    else:
        source, options = str(base_gguf.parent), {"gguf_file": base_gguf.name}

    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    model = AutoModelForCausalLM.from_pretrained(source, **options)
    if adapter_dir is not None:
        model = _apply_adapter(model, Path(adapter_dir))
    model.eval()
    logger.info("loaded %s%s", base_gguf, f" with adapter {adapter_dir}" if adapter_dir else "")
    return model, tokenizer


def _apply_adapter(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise NotFoundError(f"no adapter in {adapter_dir}: adapter_config.json is missing")
    return PeftModel.from_pretrained(model, str(adapter_dir))


def encode_text(tokenizer: Any, text: str, *, at_start: bool = True) -> list[int]:
    """Tokenise chat text as llama.cpp does: special tokens parsed, a BOS only if the model asks.

    llama.cpp prepends BOS only when the GGUF sets `tokenizer.ggml.add_bos_token` (SmolLM2 does
    not); transformers carries that flag over as `tokenizer.add_bos_token`. A template that already
    renders the BOS token gets no second one.

    Args:
        tokenizer: The model's tokenizer.
        text: Text rendered by the chat template.
        at_start: Whether the text starts the sequence (only then can it need a BOS).
    """
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos_id = tokenizer.bos_token_id
    wants_bos = at_start and bool(getattr(tokenizer, "add_bos_token", False)) and bos_id is not None
    if wants_bos and (not ids or ids[0] != bos_id):
        ids = [bos_id, *ids]
    return ids


def end_of_turn_id(tokenizer: Any, template: ChatTemplate) -> int:
    """The token id of the template's end-of-turn text, which must be a single token."""
    ids = tokenizer(template.end_of_turn, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InvalidInputError(
            f"end-of-turn text {template.end_of_turn!r} is {len(ids)} tokens; "
            "it must be a single special token of the model's vocabulary"
        )
    return int(ids[0])


def generate(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    conversations: list[list[Message]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Answer each conversation greedily, in batches, and return the answers in input order.

    Args:
        model: A causal language model (plain or peft), in eval mode.
        tokenizer: Its tokenizer.
        template: The chat template that renders each prompt.
        conversations: Message lists; each ends before the assistant turn to be generated.
        max_new_tokens: The most tokens generated per answer.
        batch_size: Prompts decoded together; left padded to the longest in the batch.

    Returns:
        The answers' text, cut before the end-of-turn token.
    """
    stop_ids = sorted({end_of_turn_id(tokenizer, template), tokenizer.eos_token_id} - {None})
    prompts = [
        encode_text(tokenizer, template.render(messages, add_generation_prompt=True))
        for messages in conversations
    ]

    # Batching prompts of similar length keeps padding (wasted compute) small.
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        outputs = _generate_batch(
            model, [prompts[i] for i in chosen], stop_ids, max_new_tokens, pad_id=stop_ids[0]
        )
        for index, new_ids in zip(chosen, outputs, strict=True):
            answers[index] = _decode_answer(tokenizer, new_ids, stop_ids, template.end_of_turn)
    return answers


def _generate_batch(
    model: Any, prompts: list[list[int]], stop_ids: list[int], max_new_tokens: int, pad_id: int
) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor(
        [[pad_id] * (width - len(ids)) + ids for ids in prompts], device=device
    )
    attention_mask = torch.tensor(
        [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
    return [row.tolist() for row in output[:, width:].cpu()]


def _decode_answer(tokenizer: Any, new_ids: list[int], stop_ids: list[int], end: str) -> str:
    for position, token in enumerate(new_ids):
        if token in stop_ids:
            new_ids = new_ids[:position]
            break
    # llama.cpp renders control tokens as empty text in completions; skipping them matches it.
    text: str = tokenizer.decode(new_ids, skip_special_tokens=True)
    return text.split(end, 1)[0]
