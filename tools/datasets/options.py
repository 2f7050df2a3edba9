"""The options of dataset preparation: defaults, and validation of them all at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from turing.tools.datasets import cleaning, formats
from turing.tools.datasets.problems import show
from turing.tools.datasets.reading import CONTAINERS
from turing.tools.errors import InvalidInputError
from turing.tools.evals.safety import MAX_CANARIES

FORMAT_CHOICES = ("auto", *formats.FORMATS)
ON_ERROR_POLICIES = ("reject", "skip")
NEAR_DUPLICATE_POLICIES = ("drop", "keep")
PII_POLICIES = ("redact", "drop", "keep")
HARMFUL_POLICIES = ("flag", "drop")
TRUNCATION_POLICIES = ("flag", "drop")
MAX_VALIDATION_FRACTION = 0.5
MAX_SEQ_LEN_RANGE = (16, 32768)  # what training accepts
MAX_SEED = 2**32 - 1
MAX_CANARY_REPEATS = 100
# Options added after the first dataset versions were stored: at their defaults they are left
# out of the content id, so a version prepared without them keeps the id it always had.
LATER_OPTION_DEFAULTS: dict[str, Any] = {"canaries": 0, "canary_repeats": 1}


@dataclass(frozen=True)
class PrepareOptions:
    """How to read, clean and split a dataset file; every field is part of the dataset's id.

    `canaries` plants that many made-up secrets (see `turing.tools.evals.safety.Canary`), each
    `canary_repeats` times, into the train split, for the memorisation check of evaluation.
    """

    format: str = "auto"
    container: str = "auto"
    records_path: str | None = None
    columns: dict[str, str] | None = None
    system_prompt: str | None = None
    label_prompt: bool = False
    whitespace: str = "trim"
    near_duplicates: str = "drop"
    near_duplicate_threshold: float = 0.8
    pii: str = "redact"
    harmful: str = "flag"
    max_seq_len: int = 512
    on_truncation: str = "flag"
    validation_fraction: float = 0.1
    seed: int = 0
    on_error: str = "reject"
    examples_per_problem: int = 5
    canaries: int = 0
    canary_repeats: int = 1


def parse_options(raw: dict[str, Any] | None) -> PrepareOptions:
    """Validate every option at once; the error lists each bad value with what is allowed."""
    given = {key: value for key, value in (raw or {}).items() if value is not None}
    allowed = PrepareOptions.__dataclass_fields__
    errors = [
        f"{key!r} is not an option; allowed: {', '.join(allowed)}"
        for key in given
        if key not in allowed
    ]
    for key, value in given.items():
        check = _CHECKS.get(key)
        problem = check(value) if check else None
        if problem:
            errors.append(f"{key}={show(value)} {problem}")
    if not errors:
        errors += _combination_errors(given)
    if errors:
        raise InvalidInputError(f"{len(errors)} invalid option(s):\n  " + "\n  ".join(errors))
    return PrepareOptions(**given)


def _choice(choices: Sequence[str]) -> Any:
    def check(value: Any) -> str | None:
        return None if value in choices else f"is not allowed; allowed: {', '.join(choices)}"

    return check


def _number(low: float, high: float, integer: bool = False) -> Any:
    kind = "an integer" if integer else "a number"

    def check(value: Any) -> str | None:
        wrong_type = isinstance(value, bool) or not isinstance(
            value, int if integer else (int, float)
        )
        if wrong_type or not low <= value <= high:  # NaN fails the comparison
            return f"is out of range; allowed: {kind} from {low:,g} to {high:,g}"
        return None

    return check


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be non-empty text"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _columns(value: Any) -> str | None:
    if not isinstance(value, dict) or not value:
        return 'must map roles to fields, e.g. {"user": "text", "assistant": "label"}'
    roles = ("system", "user", "assistant")
    wrong = [key for key in value if key not in roles]
    if wrong:
        return (
            f"has {', '.join(map(repr, wrong))}, which are not roles; allowed: {', '.join(roles)}"
        )
    if any(not isinstance(name, str) or not name.strip() for name in value.values()):
        return "must give a non-empty field name for each role"
    missing = [role for role in ("user", "assistant") if role not in value]
    return f"has no {' or '.join(map(repr, missing))} entry" if missing else None


_CHECKS: dict[str, Any] = {
    "format": _choice(FORMAT_CHOICES),
    "container": _choice(CONTAINERS),
    "records_path": _text,
    "columns": _columns,
    "system_prompt": _text,
    "label_prompt": _flag,
    "whitespace": _choice(cleaning.WHITESPACE_MODES),
    "near_duplicates": _choice(NEAR_DUPLICATE_POLICIES),
    "near_duplicate_threshold": _number(0.5, 1.0),
    "pii": _choice(PII_POLICIES),
    "harmful": _choice(HARMFUL_POLICIES),
    "max_seq_len": _number(*MAX_SEQ_LEN_RANGE, integer=True),
    "on_truncation": _choice(TRUNCATION_POLICIES),
    "validation_fraction": _number(0.0, MAX_VALIDATION_FRACTION),
    "seed": _number(0, MAX_SEED, integer=True),
    "on_error": _choice(ON_ERROR_POLICIES),
    "examples_per_problem": _number(1, 100, integer=True),
    "canaries": _number(0, MAX_CANARIES, integer=True),
    "canary_repeats": _number(1, MAX_CANARY_REPEATS, integer=True),
}


def _combination_errors(given: dict[str, Any]) -> list[str]:
    errors = []
    if "columns" in given and given.get("format", "auto") not in ("auto", "columns"):
        errors.append(f"columns applies to format 'columns' only, not {given['format']!r}")
    if given.get("format") == "columns" and "columns" not in given:
        errors.append(
            'format \'columns\' needs columns, e.g. {"user": "question", "assistant": "answer"}'
        )
    if "system" in given.get("columns", {}) and "system_prompt" in given:
        errors.append("pass either a 'system' column or system_prompt, not both")
    if given.get("canary_repeats", 1) != 1 and not given.get("canaries"):
        errors.append("canary_repeats applies only with canaries of 1 or more")
    return errors


def content_options(options: PrepareOptions) -> dict[str, Any]:
    """The options as they enter a dataset's content id: later options only when set."""
    values = asdict(options)
    for key, default in LATER_OPTION_DEFAULTS.items():
        if values[key] == default:
            del values[key]
    return values
