"""Export parity: does llama.cpp serving a GGUF answer as the PyTorch model it came from?

Two measures over fixed prompts: greedy answers that match exactly, and next-token agreement
(llama.cpp's top token at every step of PyTorch's greedy answer, teacher-forced).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from turing.tools.chat import Message
from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

# Short, varied requests; fixed so that parity numbers compare across exports and releases.
PARITY_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in one sentence what a LoRA adapter is.",
    "List three prime numbers.",
    "My invoice shows the wrong amount. What should I do?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a name for a friendly robot.",
)


@dataclass(frozen=True)
class PromptParity:
    """How one prompt's greedy answers compare."""

    prompt: list[Message]
    torch_text: str
    llama_cpp_text: str
    steps: int  # teacher-forced positions compared (PyTorch's answer tokens, stop included)
    agreeing_steps: int
    first_disagreement: int | None  # the first step where llama.cpp's top token differs

    @property
    def text_matches(self) -> bool:
        """Whether both backends gave exactly the same answer text."""
        return self.torch_text == self.llama_cpp_text


@dataclass(frozen=True)
class ParityReport:
    """Greedy text match rate and next-token agreement rate over a set of prompts."""

    max_tokens: int
    prompts: list[PromptParity] = field(repr=False)

    @property
    def text_match_rate(self) -> float:
        """Share of prompts whose greedy answers are exactly the same text."""
        return sum(p.text_matches for p in self.prompts) / len(self.prompts)

    @property
    def next_token_agreement(self) -> float:
        """Share of teacher-forced steps where llama.cpp's top token is PyTorch's greedy token."""
        steps = sum(p.steps for p in self.prompts)
        return sum(p.agreeing_steps for p in self.prompts) / steps if steps else 1.0

    def summary(self) -> dict[str, Any]:
        """The rates and per-prompt outcomes as plain JSON-ready values."""
        return {
            "prompts": len(self.prompts),
            "max_tokens": self.max_tokens,
            "text_match_rate": self.text_match_rate,
            "next_token_agreement": self.next_token_agreement,
            "mismatches": [
                {
                    "prompt": p.prompt[-1]["content"],
                    "torch": p.torch_text,
                    "llama_cpp": p.llama_cpp_text,
                    "first_disagreement": p.first_disagreement,
                }
                for p in self.prompts
                if not p.text_matches
            ],
        }


def measure_parity(
    model: Any,
    tokenizer: Any,
    engine: Any,
    prompts: list[list[Message]] | None = None,
    max_tokens: int = 16,
) -> ParityReport:
    """Compare a PyTorch model with a llama.cpp engine on the same prompts, decoding greedily.

    Both see the same prompt tokens (rendered and tokenized by the engine). PyTorch's greedy
    answer is then fed to llama.cpp one prefix at a time to count the steps where llama.cpp
    would choose the same next token.

    Args:
        model: A causal language model in eval mode (plain, peft or merged).
        tokenizer: Its tokenizer; decodes PyTorch's answer as llama.cpp does (no special tokens).
        engine: A `turing.tools.query.engine.Engine` serving the exported GGUF.
        prompts: Conversations ending with a user turn; by default PARITY_PROMPTS.
        max_tokens: The most tokens each answer may have (its stop token included).

    Returns:
        The report: text match rate, next-token agreement rate, and every prompt's outcome.
    """
    if max_tokens < 1:
        raise InvalidInputError(f"max_tokens={max_tokens}: give at least 1")
    conversations = prompts or [[{"role": "user", "content": text}] for text in PARITY_PROMPTS]
    stop_ids = _stop_ids(engine, tokenizer)

    measured = []
    for messages in conversations:
        prompt = engine.tokenize(engine.render(messages))
        answer = _torch_greedy(model, prompt, stop_ids, max_tokens)
        agreeing, first_off = _teacher_forced(engine, prompt, answer)
        served = engine.complete(messages, max_tokens=max_tokens, temperature=0.0)
        measured.append(
            PromptParity(
                prompt=messages,
                torch_text=_decode(tokenizer, answer, stop_ids),
                llama_cpp_text=served.text,
                steps=len(answer),
                agreeing_steps=agreeing,
                first_disagreement=first_off,
            )
        )

    report = ParityReport(max_tokens=max_tokens, prompts=measured)
    logger.info(
        "parity over %d prompts: text match %.3f, next-token agreement %.4f",
        len(measured),
        report.text_match_rate,
        report.next_token_agreement,
    )
    return report


def _stop_ids(engine: Any, tokenizer: Any) -> set[int]:
    from turing.tools.modeling import end_of_turn_id

    ids = {end_of_turn_id(tokenizer, engine.template)}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _torch_greedy(model: Any, prompt: list[int], stop_ids: set[int], max_tokens: int) -> list[int]:
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=sorted(stop_ids),
        pad_token_id=min(stop_ids),
    )
    with torch.inference_mode():
        output = model.generate(
            input_ids=torch.tensor([prompt], device=device), generation_config=config
        )
    answer: list[int] = output[0, len(prompt) :].tolist()
    for position, token in enumerate(answer):
        if token in stop_ids:
            return answer[: position + 1]
    return answer


def _teacher_forced(engine: Any, prompt: list[int], answer: list[int]) -> tuple[int, int | None]:
    agreeing, first_off = 0, None
    for step, expected in enumerate(answer):
        logits = engine.next_token_logits(prompt + answer[:step])
        if int(logits.argmax()) == expected:
            agreeing += 1
        elif first_off is None:
            first_off = step
    return agreeing, first_off


def _decode(tokenizer: Any, answer: list[int], stop_ids: set[int]) -> str:
    kept = answer[:-1] if answer and answer[-1] in stop_ids else answer
    # llama.cpp renders control tokens as empty text in completions; skipping them matches it.
    return str(tokenizer.decode(kept, skip_special_tokens=True))
