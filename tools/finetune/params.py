"""Training hyperparameters: defaults for a small model on CPU, validated all at once."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from turing.tools.errors import InvalidInputError

LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainParams:
    """LoRA fine-tuning settings; every field can be overridden by `start_finetune`."""

    epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 16
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = field(default=LLAMA_LINEAR_MODULES)
    max_seq_len: int = 512
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 0
    validation_every: int = 0


# name -> (type, lowest, highest): the allowed range of each numeric setting.
RANGES: dict[str, tuple[type, float, float]] = {
    "epochs": (int, 1, 100),
    "learning_rate": (float, 1e-7, 1.0),
    "batch_size": (int, 1, 1024),
    "lora_rank": (int, 1, 256),
    "lora_alpha": (int, 1, 1024),
    "lora_dropout": (float, 0.0, 0.9),
    "max_seq_len": (int, 16, 32768),
    "warmup_ratio": (float, 0.0, 0.5),
    "weight_decay": (float, 0.0, 1.0),
    "seed": (int, 0, 2**31 - 1),
    "validation_every": (int, 0, 10**9),
}


def parse_params(raw: dict[str, Any]) -> TrainParams:
    """Build TrainParams from overrides, reporting every unknown key and bad value together."""
    known = {item.name for item in fields(TrainParams)}
    problems = [
        f"unknown hyperparameter {key!r}; valid: {', '.join(sorted(known))}"
        for key in raw
        if key not in known
    ]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "target_modules":
            problem = _check_modules(value)
            values[key] = tuple(value) if not problem else None
        elif key in RANGES:
            problem = _check_number(key, value)
            values[key] = RANGES[key][0](value) if not problem else None
        else:
            continue
        if problem:
            problems.append(problem)
    if problems:
        raise InvalidInputError("invalid hyperparameters: " + "; ".join(problems))
    return TrainParams(**values)


def _check_number(key: str, value: Any) -> str | None:
    kind, low, high = RANGES[key]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int and is_number and float(value).is_integer():
        value = int(value)
    if not is_number or (kind is int and not isinstance(value, int)) or not low <= value <= high:
        noun = "an integer" if kind is int else "a number"
        return f"{key}={value!r}: must be {noun} between {low:g} and {high:g}"
    return None


def _check_modules(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not value:
        return f"target_modules={value!r}: must be a non-empty list of module names"
    unknown = [name for name in value if name not in LLAMA_LINEAR_MODULES]
    if unknown:
        return (
            f"target_modules names {unknown} which the model lacks; "
            f"choose from {', '.join(LLAMA_LINEAR_MODULES)}"
        )
    return None
