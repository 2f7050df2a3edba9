"""LoRA fine-tuning: training parameters, loss-masked tokenisation and the training loop.

The loss covers the assistant tokens only (end-of-turn token included), as laid out by the base
model's own chat template; everything else in a conversation is context.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from turing.tools.chat import ChatTemplate, ChatTemplateError, Message
from turing.tools.errors import InvalidInputError
from turing.tools.modeling import encode_text

logger = logging.getLogger(__name__)

IGNORE = -100  # label of a token that carries no loss (PyTorch's cross-entropy ignore_index)
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Event = dict[str, Any]


@dataclass
class TrainParams:
    """Hyperparameters of a LoRA run; the defaults suit a ~135M model on a few CPU cores."""

    epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 16
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    max_seq_len: int = 512
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    validation_every: int = 0  # steps between validations; 0 validates at the end of each epoch


# Each check returns None when the value is allowed, else what is allowed.
_Check = Callable[[Any], str | None]


def _integer(low: int, high: int) -> _Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"must be an integer between {low} and {high}"

    return check


def _number(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> _Check:
    lower = f"greater than {low:g}" if low_open else f"at least {low:g}"
    upper = f"less than {high:g}" if high_open else f"at most {high:g}"

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return f"must be a number {lower} and {upper}"
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"must be a number {lower} and {upper}"

    return check


def _module_names(value: Any) -> str | None:
    if isinstance(value, list) and value and all(isinstance(n, str) and n.strip() for n in value):
        return None
    return f"must be a non-empty list of module names, e.g. {list(LLAMA_PROJECTIONS)}"


_CHECKS: dict[str, _Check] = {
    "epochs": _integer(1, 100),
    "learning_rate": _number(0.0, 1.0, low_open=True),
    "batch_size": _integer(1, 1024),
    "lora_rank": _integer(1, 256),
    "lora_alpha": _integer(1, 4096),
    "lora_dropout": _number(0.0, 1.0, high_open=True),
    "target_modules": _module_names,
    "max_seq_len": _integer(8, 32768),
    "warmup_ratio": _number(0.0, 1.0),
    "weight_decay": _number(0.0, 1.0),
    "seed": _integer(0, 2**32 - 1),
    "validation_every": _integer(0, 1_000_000),
}


def parse_params(raw: dict[str, Any] | None) -> TrainParams:
    """Validate raw training parameters and fill in the defaults for those not given.

    Every problem is collected before raising, so one call reports them all.

    Args:
        raw: Parameter names to values, e.g. `{"epochs": 2, "lora_rank": 8}`; a None value
            means "use the default".

    Raises:
        InvalidInputError: Naming each unknown key, and each bad value with what is allowed.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"training parameters must be an object, got {raw!r}")

    problems = []
    unknown = [key for key in raw if key not in _CHECKS]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        plural = "s" if len(unknown) > 1 else ""
        problems.append(f"unknown parameter{plural} {names} (valid: {', '.join(sorted(_CHECKS))})")
    given = {key: value for key, value in raw.items() if key in _CHECKS and value is not None}
    for key, value in given.items():
        allowed = _CHECKS[key](value)
        if allowed is not None:
            problems.append(f"{key}={value!r}: {allowed}")
    if problems:
        raise InvalidInputError("invalid training parameters: " + "; ".join(problems))

    if "target_modules" in given:
        given["target_modules"] = list(
            dict.fromkeys(name.strip() for name in given["target_modules"])
        )
    return TrainParams(**given)


@dataclass
class Example:
    """One tokenised conversation: input ids and per-token labels (IGNORE outside answers)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def answer_tokens(self) -> int:
        """Tokens that carry loss; the first token has no predecessor, so it never counts."""
        return sum(label != IGNORE for label in self.labels[1:])


def tokenize_conversation(
    messages: list[Message],
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
    tools: list[dict[str, Any]] | None = None,
) -> Example:
    """Tokenise a conversation with labels on the assistant tokens only, truncated to max_seq_len.

    Each prompt and answer piece from `ChatTemplate.split_turns` is tokenised on its own, as at
    generation time, where the prompt is tokenised alone and the answer is produced token by token.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for prompt, answer in template.split_turns(messages, tools):
        prompt_ids = encode_text(tokenizer, prompt, at_start=not input_ids)
        answer_ids = encode_text(tokenizer, answer, at_start=False)
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE] * len(prompt_ids) + answer_ids
    return Example(input_ids[:max_seq_len], labels[:max_seq_len])


def tokenize_rows(
    rows: Iterable[dict[str, Any]], tokenizer: Any, template: ChatTemplate, max_seq_len: int
) -> tuple[list[Example], int]:
    """Tokenise `{"messages": [...]}` rows, dropping those left with no answer tokens.

    Returns:
        (examples, number of rows dropped because truncation left them no answer token).

    Raises:
        InvalidInputError: A row is not a conversation the chat template can render.
    """
    examples: list[Example] = []
    dropped = 0
    for number, row in enumerate(rows, start=1):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise InvalidInputError(
                f"row {number}: expected {{'messages': [...]}}, got {row!r:.200}"
            )
        try:
            example = tokenize_conversation(
                messages, tokenizer, template, max_seq_len, row.get("tools")
            )
        except (ChatTemplateError, KeyError, TypeError) as exc:
            raise InvalidInputError(
                f"row {number}: cannot be rendered for training: {exc}"
            ) from exc
        if example.answer_tokens == 0:
            dropped += 1
        else:
            examples.append(example)
    return examples, dropped


def make_batches(
    lengths: list[int], batch_size: int, seed: int, group: int = 64
) -> list[list[int]]:
    """Split example indices into batches of similar length, in an order drawn from `seed`.

    Indices are shuffled, sorted by length within windows of `group` batches (so padding stays
    small while batches still mix), cut into batches, and the batches shuffled again.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)

    window = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda index: lengths[index])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to `peak` over `warmup_steps`, then linear decay to zero at `total_steps`.

    `step` counts from 0; the value is the rate used for that step.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    remaining = total_steps - step
    return peak * remaining / max(1, total_steps - warmup_steps)


@dataclass
class TrainResult:
    """What a run produced: the peft model and its summary numbers.

    `final_loss` is the token-weighted mean training loss over the last epoch's worth of steps
    (one batch alone is too noisy); `validation_loss` is the latest validation, if any.
    """

    model: Any
    cancelled: bool
    final_loss: float | None
    validation_loss: float | None
    steps: int
    total_steps: int
    train_tokens: int
    trainable_parameters: int
    seconds: float
    dropped_rows: int

    def summary(self) -> dict[str, Any]:
        """The numbers as a JSON-ready dict (without the model)."""
        return {key: value for key, value in asdict(self).items() if key != "model"}


def attach_lora(model: Any, params: TrainParams) -> Any:
    """Wrap a causal language model with fresh LoRA adapters; only they will train.

    Raises:
        InvalidInputError: A target module name matches no layer of the model.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.target_modules,
        task_type="CAUSAL_LM",
    )
    # LoRA A is drawn from the global generator; seeding it makes the run repeatable.
    torch.manual_seed(params.seed)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise InvalidInputError(
            f"target_modules={params.target_modules!r} does not fit this model: {exc}"
        ) from exc


def _collate(examples: list[Example], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        attention_mask[row, :size] = 1
    return input_ids, labels, attention_mask


def answer_loss(model: Any, input_ids: Any, labels: Any) -> tuple[Any, int]:
    """Mean cross-entropy over the labelled tokens of a right-padded batch, and their count.

    No attention mask is needed: padding only follows real tokens, which causal attention already
    keeps from seeing it. The vocabulary projection (49k columns for SmolLM2) is costly, so logits
    are computed only at positions whose next token carries a label.
    """
    import torch
    import torch.nn.functional as functional
    from peft.helpers import disable_input_dtype_casting

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    # peft casts activations to the float32 adapter weights and autocast casts them back to
    # bfloat16; skipping that round trip saves two copies of every activation per LoRA layer.
    with torch.autocast("cpu", dtype=torch.bfloat16), disable_input_dtype_casting(model):
        hidden = causal_lm.model(input_ids=input_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        selected = hidden[:, :-1][targets != IGNORE]
        logits = causal_lm.lm_head(selected)
    # Softmax in float32: bfloat16 keeps ~3 significant digits, too few for a 49k-way softmax.
    loss = functional.cross_entropy(logits.float(), targets[targets != IGNORE])
    return loss, int(selected.shape[0])


def evaluate_loss(model: Any, examples: list[Example], batch_size: int, pad_id: int) -> float:
    """Mean answer-token loss over `examples` (weighted by their answer tokens)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in make_batches([len(e.input_ids) for e in examples], batch_size, seed=0):
            input_ids, labels, _ = _collate([examples[i] for i in batch], pad_id)
            loss, tokens = answer_loss(model, input_ids, labels)
            total += float(loss) * tokens
            count += tokens
    model.train(was_training)
    return total / max(1, count)


def prepare_examples(
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
) -> tuple[list[Example], list[Example], int]:
    """Tokenise both splits; refuse a training split that truncation leaves with no answers.

    Returns:
        (train examples, validation examples, rows dropped over both splits).
    """
    train, dropped_train = tokenize_rows(train_rows, tokenizer, template, max_seq_len)
    validation, dropped_validation = tokenize_rows(
        validation_rows, tokenizer, template, max_seq_len
    )
    if not train:
        raise InvalidInputError(
            f"no training row keeps an answer token within max_seq_len={max_seq_len} "
            f"({dropped_train} of {len(train_rows)} rows would be empty); "
            "raise max_seq_len or shorten the prompts"
        )
    if dropped_train or dropped_validation:
        logger.warning(
            "dropped %d training and %d validation rows: no answer token within max_seq_len=%d",
            dropped_train,
            dropped_validation,
            max_seq_len,
        )
    return train, validation, dropped_train + dropped_validation


def prepare_for_training(model: Any) -> None:
    """Switch a base model to the fastest CPU setup found for LoRA training, in place.

    Frozen weights in bfloat16 run on the CPU's bf16 matrix instructions (about 1.4x float32 on
    AVX512-BF16); the adapters stay float32. Eager attention beats PyTorch's CPU flash-attention
    kernel on short sequences, chiefly in the backward pass.
    """
    import torch

    model.to(torch.bfloat16)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")


def train(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    params: TrainParams,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on `model` and return the adapted (peft) model with its numbers.

    The base model is changed in place: cast to bfloat16 and wrapped with LoRA layers; its own
    weights stay frozen. Save the adapter with `result.model.save_pretrained(folder)`.

    Args:
        model: A causal language model from `load_model`, without an adapter.
        tokenizer: Its tokenizer.
        template: The base model's chat template.
        train_rows: `{"messages": [...]}` conversations to learn the assistant turns of.
        validation_rows: Conversations to measure the loss on; may be empty.
        params: Hyperparameters (see `parse_params`).
        on_event: Receives `{"type": "step", ...}` after every optimiser step and
            `{"type": "validation", ...}` after every validation.
        should_stop: Polled between steps; when it returns True the run ends as cancelled.

    Raises:
        InvalidInputError: The rows or parameters cannot be trained on.
    """
    import torch

    emit = on_event or (lambda event: None)
    stop = should_stop or (lambda: False)
    started = time.monotonic()

    # Data
    train_set, validation_set, dropped = prepare_examples(
        train_rows, validation_rows, tokenizer, template, params.max_seq_len
    )
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    lengths = [len(example.input_ids) for example in train_set]
    steps_per_epoch = math.ceil(len(train_set) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup_steps = math.ceil(params.warmup_ratio * total_steps)

    # Model and optimiser
    prepare_for_training(model)
    model = attach_lora(model, params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()
    trainable_count = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(
        trainable, lr=params.learning_rate, weight_decay=params.weight_decay
    )
    logger.info(
        "training %d LoRA parameters on %d rows (%d validation) for %d steps",
        trainable_count,
        len(train_set),
        len(validation_set),
        total_steps,
    )

    def validate(step: int) -> float | None:
        if not validation_set:
            return None
        loss = evaluate_loss(model, validation_set, params.batch_size, pad_id)
        emit({"type": "validation", "step": step, "validation_loss": loss})
        return loss

    step, train_tokens, compute_seconds = 0, 0, 0.0
    recent: deque[tuple[float, int]] = deque(maxlen=steps_per_epoch)
    validation_loss: float | None = None
    cancelled = False
    model.train()
    for epoch in range(params.epochs):
        for batch in make_batches(lengths, params.batch_size, seed=params.seed * 1000 + epoch):
            if stop():
                cancelled = True
                break

            # One optimiser step
            step_started = time.monotonic()
            rate = learning_rate_at(step, total_steps, params.learning_rate, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = rate
            input_ids, labels, attention_mask = _collate([train_set[i] for i in batch], pad_id)
            loss, answer_count = answer_loss(model, input_ids, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # Progress
            recent.append((loss.item(), answer_count))
            train_tokens += int(attention_mask.sum())
            compute_seconds += time.monotonic() - step_started
            emit(
                {
                    "type": "step",
                    "step": step,
                    "total_steps": total_steps,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": loss.item(),
                    "learning_rate": rate,
                    "tokens_per_second": train_tokens / max(compute_seconds, 1e-9),
                    "elapsed_seconds": time.monotonic() - started,
                    "eta_seconds": compute_seconds / step * (total_steps - step),
                }
            )

            # Validation
            due = step % (params.validation_every or steps_per_epoch) == 0
            if due or step == total_steps:
                validation_loss = validate(step)
        if cancelled:
            break

    return TrainResult(
        model=model,
        cancelled=cancelled,
        final_loss=_token_weighted_mean(recent),
        validation_loss=validation_loss,
        steps=step,
        total_steps=total_steps,
        train_tokens=train_tokens,
        trainable_parameters=trainable_count,
        seconds=time.monotonic() - started,
        dropped_rows=dropped,
    )


def _token_weighted_mean(losses: Iterable[tuple[float, int]]) -> float | None:
    pairs = list(losses)
    count = sum(tokens for _, tokens in pairs)
    return sum(loss * tokens for loss, tokens in pairs) / count if count else None
