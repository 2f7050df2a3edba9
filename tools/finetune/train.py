"""LoRA fine-tuning: training parameters, loss-masked tokenisation and the training loop.

The loss covers the assistant tokens only (end-of-turn token included), as laid out by the base
model's own chat template; everything else in a conversation is context.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from turing.tools.chat import ChatTemplate, ChatTemplateError, Message
from turing.tools.errors import InvalidInputError
from turing.tools.modeling import encode_text

if TYPE_CHECKING:
    from turing.tools.finetune.trainer import TrainResult

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
    # Steps between checkpoints (each one validated); 0 checkpoints at the end of every epoch.
    checkpoint_every: int = 0
    # Validations without improvement before the run stops early; 0 never stops early.
    early_stopping_patience: int = 3
    early_stopping_min_delta: float = 0.0
    # Which checkpoint becomes the run's output: see SELECTION_METRICS.
    selection_metric: str = "validation_loss"
    # A task metric (see EVAL_METRICS) scored at every validated checkpoint on the first
    # eval_rows validation rows, answered greedily; recorded as eval_<metric>. None scores none.
    eval_metric: str | None = None
    eval_rows: int = 64
    # Arithmetic of the frozen base weights: bf16 (fast on CPUs with AVX512-BF16/AMX), fp32,
    # or fp16 (GPU only). LoRA weights and their optimiser state are always fp32.
    precision: str = "bf16"


# Metric -> whether lower is better. "last" takes the final checkpoint whatever its numbers;
# "eval_metric" the best value of the task metric named by the eval_metric parameter.
SELECTION_METRICS = {
    "validation_loss": True,
    "validation_accuracy": False,
    "train_loss": True,
    "last": True,
    "eval_metric": False,
}
PRECISIONS = ("bf16", "fp32", "fp16")
# Task metrics of turing.tools.evals.metrics a run can score its checkpoints by; those that need
# a JSON schema or a pattern are for run_eval only. Every one of them: higher is better.
EVAL_METRICS = ("exact_match", "accuracy", "macro_f1", "token_f1", "rouge_l", "json_valid")
# Those that compare answers against the dataset's label set.
LABEL_METRICS = ("accuracy", "macro_f1")
EVAL_PREFIX = "eval_"

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


def _one_of(*choices: str) -> _Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

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
    "checkpoint_every": _integer(0, 1_000_000),
    "early_stopping_patience": _integer(0, 1_000),
    "early_stopping_min_delta": _number(0.0, 1e6),
    "selection_metric": _one_of(*SELECTION_METRICS),
    "eval_metric": _one_of(*EVAL_METRICS),
    "eval_rows": _integer(1, 10_000),
    "precision": _one_of(*PRECISIONS),
}


def check_parameter(key: str, value: Any) -> str | None:
    """None when `value` is allowed for the training parameter `key`, else what is allowed.

    A None value always stands for the default. Combinations are checked by
    `combination_problems`.
    """
    if key not in _CHECKS:
        return f"unknown parameter (valid: {', '.join(sorted(_CHECKS))})"
    return None if value is None else _CHECKS[key](value)


def combination_problems(values: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Parameters each allowed alone but not together, as (key, value, what is wrong).

    Args:
        values: Parameter names to values that each passed `check_parameter`.
    """
    if values.get("selection_metric") == "eval_metric" and values.get("eval_metric") is None:
        return [
            (
                "selection_metric",
                "eval_metric",
                "needs eval_metric, the task metric checkpoints are scored by, set to one of "
                f"{', '.join(EVAL_METRICS)}",
            )
        ]
    return []


def checkpoint_metric(params: TrainParams) -> str:
    """The checkpoint metric `selection_metric` names: eval_<metric> stands for "eval_metric"."""
    if params.selection_metric == "eval_metric" and params.eval_metric is not None:
        return EVAL_PREFIX + params.eval_metric
    return params.selection_metric


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of a checkpoint metric is better (never for eval_* metrics)."""
    return not metric.startswith(EVAL_PREFIX) and SELECTION_METRICS[metric]


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
    if not problems:
        problems += [
            f"{key}={value!r}: {message}" for key, value, message in combination_problems(given)
        ]
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


@dataclass(frozen=True)
class EvalRow:
    """A validation row answered at checkpoints: the messages before its final answer, and it."""

    prompt: list[Message]
    reference: str


def select_eval_rows(rows: list[dict[str, Any]], limit: int) -> list[EvalRow]:
    """The first `limit` rows, in file order, that can be answered and scored at checkpoints.

    A row qualifies when it ends in an assistant turn with text, has messages before it, and
    carries no tool definitions (generation renders prompts without tools). Others are skipped.
    """
    found: list[EvalRow] = []
    for row in rows:
        if len(found) == limit:
            break
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or len(messages) < 2 or row.get("tools"):
            continue
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            continue
        if not isinstance(last.get("content"), str) or last.get("tool_calls"):
            continue
        found.append(EvalRow(prompt=messages[:-1], reference=last["content"]))
    return found


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


def train(
    model: Any,
    tokenizer: Any,
    template: ChatTemplate,
    train_rows: list[dict[str, Any]],
    validation_rows: list[dict[str, Any]],
    params: TrainParams,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> TrainResult:
    """Fine-tune LoRA adapters on `model` and return the adapted (peft) model with its numbers.

    The base model is changed in place: cast to the run's precision and wrapped with LoRA layers;
    its own weights stay frozen. With a `run_dir`, checkpoints are written there and the best one
    becomes `run_dir/adapter`; without one, save `result.model.save_pretrained(folder)`.

    Args:
        model: A causal language model from `load_model`, without an adapter.
        tokenizer: Its tokenizer.
        template: The base model's chat template.
        train_rows: `{"messages": [...]}` conversations to learn the assistant turns of.
        validation_rows: Conversations to measure the loss on; may be empty.
        params: Hyperparameters (see `parse_params`).
        on_event: Receives `{"type": "step", ...}` after every optimiser step, and
            `validation` (with `eval_<metric>` when `params.eval_metric` is set), `checkpoint`,
            `early_stopped`, `resumed` and `non_finite_loss` events.
        should_stop: Polled between steps; when it returns True the run saves a checkpoint and
            ends as cancelled.
        options: `run_dir`, `resume`, `init_checkpoint`, `base_sha256`, `world` and
            `eval_labels` (the label set accuracy and macro_f1 score against), as taken by
            `turing.tools.finetune.trainer.Trainer`.

    Raises:
        InvalidInputError: The rows, parameters or checkpoints cannot be trained on.
        NonFiniteLossError: The loss became NaN or infinite.
    """
    from turing.tools.finetune.trainer import Trainer

    trainer = Trainer(
        model,
        tokenizer,
        template,
        train_rows,
        validation_rows,
        params,
        on_event=on_event,
        should_stop=should_stop,
        **options,
    )
    return trainer.run()
