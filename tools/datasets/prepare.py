"""Turn a raw training file into clean, leakage-free train and validation splits, or say why not.

The pipeline, in one pass over the file: read records (reading.py), normalise each format to chat
messages (formats.py), normalise whitespace, screen for personal data and harmful requests,
remove exact and near duplicates (cleaning.py), measure tokens in the base model's own tokenizer
and chat template (tokens.py), and split (splits.py); canaries, when asked for, are planted in
train last. Options live in options.py. Every problem is collected before the on_error policy
decides; nothing here touches the registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turing.tools.datasets import cleaning, formats, harm, pii, splits
from turing.tools.datasets.options import PrepareOptions
from turing.tools.datasets.problems import Problem, define, group_problems, is_error
from turing.tools.datasets.reading import ReadResult, read_records
from turing.tools.datasets.tokens import TokenCounter, TokenLengths
from turing.tools.errors import InvalidInputError
from turing.tools.evals.safety import Canary, make_canaries

logger = logging.getLogger(__name__)

# Answers count as class labels up to this many distinct values, each short and on one line.
MAX_LABELS = 500
MAX_LABEL_CHARS = 100
DETECTION_SAMPLE = 100
MIN_SHARED_AFFIX = 16  # characters every prompt must share before they are set aside
PROBLEMS_IN_MESSAGE = 3
MAX_REMEMBERED_CHARS = 4096  # texts this short are remembered once screened clean

EXACT_DUPLICATE = define(
    "duplicate", "warning", "nothing to do: the copy was dropped; remove it from the source"
)
NEAR_DUPLICATE = define(
    "near_duplicate",
    "warning",
    "nothing to do: the near copy was dropped; pass near_duplicates='keep' to keep near copies",
)
CONFLICTING_ANSWERS = define(
    "conflicting_answers",
    "warning",
    "decide which answer is right and fix or remove the others; the model learns both",
)
PII_FOUND = define(
    "pii_found",
    "warning",
    "remove personal data from the source, or choose pii='redact' (default), 'drop' or 'keep'",
)
HARMFUL_REQUEST = define(
    "harmful_request",
    "warning",
    "check that the row should be trained on; harmful='drop' removes flagged rows",
)
PROMPT_TOO_LONG = define(
    "prompt_exceeds_max_seq_len",
    "error",
    "shorten the prompt, or raise max_seq_len; training would see no answer token of this row",
)
ANSWER_TRUNCATED = define(
    "answer_truncated",
    "warning",
    "raise max_seq_len or shorten the answer; on_truncation='drop' removes such rows",
)
CONTROL_TOKEN = define(
    "control_token_in_text",
    "error",
    "remove the chat template's control token from the text; the model would read it as a turn "
    "boundary, not as text",
)
SPECIAL_TOKEN = define(
    "special_token_in_text",
    "warning",
    "check the text: the tokenizer reads this as a special token, not as the characters",
)
TEMPLATE_ERROR = define(
    "template_error",
    "error",
    "make the conversation one the base model's chat template can render",
)


@dataclass
class PreparedDataset:
    """The clean splits of a dataset file, every problem found, and the report."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    problems: list[Problem]
    report: dict[str, Any]
    source_sha256: str
    canaries: list[Canary] = field(default_factory=list)  # planted in train; see PrepareOptions


class DatasetError(InvalidInputError):
    """A dataset file cannot become a dataset version; `problems` holds every problem found."""

    def __init__(self, source: Path, problems: list[Problem], summary: str, examples: int) -> None:
        self.source = str(source)
        self.problems = problems
        lines = [f"{source}: {summary}"]
        for code, group in group_problems(problems, PROBLEMS_IN_MESSAGE).items():
            lines.append(f"  {code} ({group['severity']}, {group['count']}): {group['hint']}")
            lines += [
                f"    line {e['line']}, {e['path']}: {e['message']}" for e in group["examples"]
            ]
            if group["count"] > len(group["examples"]):
                lines.append(f"    ... and {group['count'] - len(group['examples'])} more")
        super().__init__("\n".join(lines))


@dataclass
class _Row:
    """A record on its way through the pipeline."""

    line: int
    record: int | None  # its number in a JSON document, whose records may share a line
    conversation: dict[str, Any]
    dropped: str | None = None  # the reason, once a stage drops it
    group: int = 0  # rows of one prompt group stay on one side of the split
    prompt_key: str = ""  # the prompt, normalised: where the row falls in the split
    copy_key: str = ""  # its system text, tools and answers, normalised
    label: str | None = None
    lengths: TokenLengths | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.conversation["messages"]

    @property
    def where(self) -> str:
        return f"line {self.line}" + (f", record {self.record}" if self.record else "")


@dataclass
class _Pass:
    """What one preparation pass has found so far."""

    options: PrepareOptions
    read: ReadResult
    format: str
    rows: list[_Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    pii_counts: Counter[str] = field(default_factory=Counter)
    harm_counts: Counter[str] = field(default_factory=Counter)

    def drop(self, row: _Row, reason: str) -> None:
        if row.dropped is None:
            row.dropped = reason
            self.dropped[reason] += 1

    def live(self) -> list[_Row]:
        return [row for row in self.rows if row.dropped is None]


def prepare_dataset(
    path: Path,
    options: PrepareOptions | None = None,
    counter: TokenCounter | None = None,
    data: bytes | None = None,
) -> PreparedDataset:
    """Validate, clean and split a dataset file.

    Args:
        path: The raw file: JSON lines, a JSON array (or an object holding one), or CSV/TSV.
        options: See `PrepareOptions`; the defaults read any supported format.
        counter: The base model's token counter; without one, token lengths are not checked.
        data: The file's bytes when the caller has read them already.

    Returns:
        The train and validation rows as {"messages": [...], "tools"?, "source_line"} dicts,
        every problem found (warnings included), the report, the file's SHA-256 and the
        canaries planted in train (rows {"messages", "source_line": None, "canary": id}).

    Raises:
        InvalidInputError: The file cannot be read as records at all.
        DatasetError: Some record is invalid under on_error="reject", or no valid row remains.
    """
    options = options or PrepareOptions()
    path = Path(path)
    clock = _Stopwatch()
    data = _read_bytes(path) if data is None else data
    sha256 = hashlib.sha256(data).hexdigest()
    read = read_records(path, data, container=options.container, records_path=options.records_path)
    work = _Pass(options, read, _choose_format(path, read, options), problems=list(read.problems))
    clock.lap("read")

    # Records to conversations
    _normalise_records(work)
    _normalise_whitespace(work)
    _add_system_prompts(work)
    clock.lap("normalise")

    # Screens, labels, duplicates and lengths
    _screen_pii(work)
    _screen_harm(work)
    clock.lap("screen")
    labels = _detect_labels(work)
    _remove_duplicates(work)
    clock.lap("deduplicate")
    if counter is not None:
        _measure_tokens(work, counter)
        clock.lap("tokenise")
    _enforce_policy(path, work)

    # Split and report
    kept = work.live()
    train, validation = _split(kept, labels is not None, options)
    work.problems.sort(key=lambda problem: (problem.line or 0, problem.record or 0, problem.path))
    clock.lap("split")

    # Canaries, planted after every screen, so none is redacted, flagged or dropped as a copy
    canary_seed = _canary_seed(sha256, options.seed)
    canaries = make_canaries(options.canaries, canary_seed)
    planted = _canary_rows(canaries, options.canary_repeats)
    planted_tokens = _canary_tokens(path, canaries, options, counter)
    stored_train = _with_canaries([_stored(row) for row in train], planted, canary_seed)

    report = _build_report(path, sha256, work, labels, train, validation, counter)
    _report_canaries(report, canaries, options.canary_repeats, planted, planted_tokens)
    report["seconds"] = clock.laps
    logger.info(
        "prepared %s (sha256 %s): %d train, %d validation, %d records dropped",
        path,
        sha256[:12],
        len(train),
        len(validation),
        sum(work.dropped.values()),
    )
    return PreparedDataset(
        train=stored_train,
        validation=[_stored(row) for row in validation],
        problems=work.problems,
        report=report,
        source_sha256=sha256,
        canaries=canaries,
    )


class _Stopwatch:
    """Seconds spent in each stage, for the report."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 3)
        self._last = now


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InvalidInputError(f"no dataset file at {path}")
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file; pass the path of a dataset file")
    return path.read_bytes()


def _stored(row: _Row) -> dict[str, Any]:
    return {**row.conversation, "source_line": row.line}


# --- records to conversations --------------------------------------------------------------


def _choose_format(path: Path, read: ReadResult, options: PrepareOptions) -> str:
    if not read.records:
        summary = f"no record of {read.records_read} could be read"
        raise DatasetError(path, read.problems, summary, options.examples_per_problem)
    if options.format != "auto":
        return options.format
    if options.columns is not None:
        return "columns"
    sample = [record.value for record in read.records[:DETECTION_SAMPLE]]
    detected = formats.detect_format(sample)
    if detected is not None:
        return detected

    if read.container == "csv":
        raise InvalidInputError(
            f"{path} is CSV with columns {', '.join(map(repr, read.columns or []))}; pass "
            'columns to say which gives each turn, e.g. {"user": "text", "assistant": "label"}'
        )
    if not any(isinstance(value, dict) for value in sample):
        kind = type(sample[0]).__name__ if sample else "nothing"
        raise InvalidInputError(
            f"{path}: the records are not objects (the first is a {kind}); each record must be "
            'an object such as {"messages": [...]} or {"prompt": ..., "completion": ...}'
        )
    keys = sorted({key for value in sample if isinstance(value, dict) for key in value})
    listed = ", ".join(map(repr, keys[:20])) or "(none)"
    raise InvalidInputError(
        f"cannot tell the format of {path}: its records have keys {listed}; "
        f"pass format (one of {', '.join(formats.FORMATS)}), or columns to map fields to roles"
    )


def _normalise_records(work: _Pass) -> None:
    columns = work.options.columns
    numbered = work.read.container == "json"  # a minified document has every record on line 1
    for index, record in enumerate(work.read.records, start=1):
        conversation, problems = formats.normalize_record(
            record.value, work.format, record.line, columns=columns
        )
        number = index if numbered else None
        if numbered:
            problems = [dataclasses.replace(problem, record=number) for problem in problems]
        work.problems += problems
        row = _Row(record.line, number, conversation or {"messages": []})
        work.rows.append(row)
        if conversation is None:
            work.drop(row, next(problem.code for problem in problems if is_error(problem)))
    for problem in work.read.problems:
        work.dropped[problem.code] += 1


def _normalise_whitespace(work: _Pass) -> None:
    mode = work.options.whitespace
    if mode == "none":
        return
    for row in work.live():
        for message in row.messages:
            if isinstance(message.get("content"), str):
                message["content"] = cleaning.normalize_whitespace(message["content"], mode)


def _add_system_prompts(work: _Pass) -> None:
    prompt = work.options.system_prompt
    if prompt is None:
        return
    for row in work.live():
        if row.messages[0]["role"] != "system":
            row.messages.insert(0, {"role": "system", "content": prompt})


def _detect_labels(work: _Pass) -> list[str] | None:
    """The label set when the final answers look like class labels; sets each row's label."""
    rows = work.live()
    answers = [_answer(row) for row in rows]
    distinct = set(answers)
    looks_like_labels = (
        bool(answers)
        and len(distinct) <= MAX_LABELS
        # Free-text answers are nearly all distinct; labels repeat, twice per label at least.
        and (2 * len(distinct) <= len(answers) or work.format == "classification")
        and all("\n" not in answer and 0 < len(answer) <= MAX_LABEL_CHARS for answer in distinct)
    )
    if not looks_like_labels:
        return None

    for row, answer in zip(rows, answers, strict=True):
        row.label = answer
    labels = sorted(distinct)
    if work.options.label_prompt:
        _add_label_prompt(rows, labels)
    return labels


def _answer(row: _Row) -> str:
    content = row.messages[-1].get("content")
    return content.strip() if isinstance(content, str) else ""


def _add_label_prompt(rows: list[_Row], labels: list[str]) -> None:
    instruction = f"Answer with exactly one of these labels: {', '.join(labels)}."
    for row in rows:
        first = row.messages[0]
        if first["role"] == "system":
            first["content"] = f"{first['content']}\n\n{instruction}"
        else:
            row.messages.insert(0, {"role": "system", "content": instruction})


# --- screens -------------------------------------------------------------------------------


def _screen_pii(work: _Pass) -> None:
    policy = work.options.pii
    done = {"redact": "redacted", "drop": "row dropped", "keep": "kept"}[policy]
    screen = _PiiScreen(redact=policy == "redact")
    for row in work.live():
        found: list[tuple[str, list[str]]] = [
            (f"$.messages[{index}]", kinds)
            for index, message in enumerate(row.messages)
            if (kinds := screen.message(message))
        ]
        if row.conversation.get("tools"):
            kinds = screen.tools(row.conversation)
            if kinds:
                found.append(("$.tools", kinds))
        for path, kinds in found:
            listed = ", ".join(sorted(set(kinds)))
            work.problems.append(PII_FOUND.at(row.line, path, f"{listed} ({done})", row.record))
            work.pii_counts.update(kinds)
        if found and policy == "drop":
            work.drop(row, "pii")


class _PiiScreen:
    """Finds (and with `redact`, masks) personal data in rows' texts, each distinct text once."""

    def __init__(self, redact: bool) -> None:
        self.redact = redact
        self.clean: set[str] = set()  # texts screened and found clean: system prompts, labels

    def message(self, message: dict[str, Any]) -> list[str]:
        """The kinds found in a message's text and tool call arguments."""
        content = message.get("content")
        if content in self.clean and "tool_calls" not in message:
            return []  # the common case, answered without building anything
        kinds: list[str] = []
        if isinstance(content, str):
            message["content"] = self.text(content, kinds)
        for call in message.get("tool_calls") or ():
            function = call["function"]
            arguments = json.loads(function["arguments"])  # checked to be JSON when normalised
            screened = _map_strings(arguments, lambda text: self.text(text, kinds))
            if self.redact and screened != arguments:
                function["arguments"] = json.dumps(screened, ensure_ascii=False)
        return kinds

    def tools(self, conversation: dict[str, Any]) -> list[str]:
        """The kinds found in a conversation's tool definitions."""
        kinds: list[str] = []
        screened = _map_strings(conversation["tools"], lambda text: self.text(text, kinds))
        if self.redact and kinds:
            conversation["tools"] = screened
        return kinds

    def text(self, text: str, kinds: list[str]) -> str:
        """The text, masked when asked; the kinds found are added to `kinds`."""
        if text in self.clean:
            return text
        matches = pii.find_pii(text)
        if not matches:
            if len(text) <= MAX_REMEMBERED_CHARS:
                self.clean.add(text)
            return text
        kinds.extend(match.type for match in matches)
        return pii.redact_pii(text, matches) if self.redact else text


def _map_strings(value: Any, change: Any) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    return value


def _screen_harm(work: _Pass) -> None:
    for row in work.live():
        categories = sorted(
            {
                category
                for message in row.messages
                if message["role"] == "user" and isinstance(message.get("content"), str)
                for category in harm.screen_harm(message["content"])
            }
        )
        if not categories:
            continue
        work.harm_counts.update(categories)
        action = "row dropped" if work.options.harmful == "drop" else "flagged"
        message = f"asks for harmful content: {', '.join(categories)} ({action})"
        work.problems.append(HARMFUL_REQUEST.at(row.line, "$.messages", message, row.record))
        if work.options.harmful == "drop":
            work.drop(row, "harmful_request")


# --- duplicates ----------------------------------------------------------------------------


def _remove_duplicates(work: _Pass) -> None:
    """Drop exact and near copies; group rows with near-identical prompts for the split.

    Rows whose prompts are near duplicates form one group. In a group, a row with the same
    system text and answer as an earlier one is a copy; different answers are a conflict.
    """
    rows = work.live()
    threshold = work.options.near_duplicate_threshold
    prompts = _without_shared_affixes([_prompt_text(row) for row in rows])
    prompt_keys = [cleaning.dedup_key(prompt) for prompt in prompts]
    groups = cleaning.cluster_keys(prompt_keys, threshold)
    # System prompts and labels repeat across rows: normalise each distinct text once.
    keys: dict[str, str] = {}
    first_of: dict[tuple[int, str], _Row] = {}
    seen: dict[tuple[str, str], _Row] = {}  # the first of each distinct (normalised) row
    answers_in_group: dict[int, dict[str, _Row]] = defaultdict(dict)

    for row, group, prompt_key in zip(rows, groups, prompt_keys, strict=True):
        row.group = group
        row.prompt_key = prompt_key
        copy = row.copy_key = _copy_key(row, keys)
        key = (group, copy)
        original = seen.setdefault((prompt_key, copy), row)
        if original is not row:
            message = f"copy of {original.where} (case, spacing and punctuation aside)"
            work.problems.append(EXACT_DUPLICATE.at(row.line, "$", message, row.record))
            work.drop(row, "duplicate")
            continue

        if key in first_of and work.options.near_duplicates == "drop":
            message = f"near copy of {first_of[key].where}"
            work.problems.append(NEAR_DUPLICATE.at(row.line, "$", message, row.record))
            work.drop(row, "near_duplicate")
            continue
        first_of.setdefault(key, row)
        answers_in_group[group].setdefault(copy, row)

    _report_conflicts(work, answers_in_group)


def _without_shared_affixes(texts: list[str]) -> list[str]:
    """The texts without the start and end every one of them shares, such as an instruction
    written into each prompt, which would otherwise make different prompts look alike."""
    if len(texts) < 2:
        return texts
    prefix = _common_prefix(texts)
    suffix = _common_prefix([text[prefix:][::-1] for text in texts])
    if prefix < MIN_SHARED_AFFIX:
        prefix = 0
    if suffix < MIN_SHARED_AFFIX:
        suffix = 0
    if not prefix and not suffix:
        return texts
    return [text[prefix : len(text) - suffix] for text in texts]


def _common_prefix(texts: list[str]) -> int:
    """Length of the start all texts share: the lexically first and last bound everyone."""
    first, last = min(texts), max(texts)
    for index, (a, b) in enumerate(zip(first, last, strict=False)):
        if a != b:
            return index
    return len(first)


def _prompt_text(row: _Row) -> str:
    # What the user side says; the system prompt is left out, as one shared instruction would
    # make every row look alike, and so are the answers, which are what may conflict.
    said = [
        message.get("content") or ""
        for message in row.messages
        if message["role"] == "user" or message["role"] == "tool"
    ]
    return said[0] if len(said) == 1 else "\n".join(said)


def _copy_key(row: _Row, keys: dict[str, str]) -> str:
    """The system text, tools and every answer, normalised: equal keys in a group are copies."""
    parts = [row.messages[0]["content"] if row.messages[0]["role"] == "system" else ""]
    if row.conversation.get("tools"):
        parts.append(json.dumps(row.conversation["tools"], sort_keys=True))
    for message in row.messages:
        if message["role"] == "assistant":
            parts.append(str(message.get("content") or ""))
            if message.get("tool_calls"):
                parts.append(json.dumps(message["tool_calls"], sort_keys=True))
    for part in parts:
        if part not in keys:
            keys[part] = cleaning.dedup_key(part)
    return "\0".join(keys[part] for part in parts)


def _report_conflicts(work: _Pass, answers_in_group: dict[int, dict[str, _Row]]) -> None:
    conflicted = {group: rows for group, rows in answers_in_group.items() if len(rows) > 1}
    for row in work.live():
        rows = conflicted.get(row.group)
        if rows is None:
            continue
        others = [other.where for copy, other in rows.items() if copy != row.copy_key]
        shown = "; ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        message = f"the same prompt has a different answer, system prompt or tools at {shown}"
        work.problems.append(CONFLICTING_ANSWERS.at(row.line, "$", message, row.record))


# --- tokens --------------------------------------------------------------------------------


def _find_special_tokens(work: _Pass, counter: TokenCounter) -> None:
    pattern = counter.special_tokens
    if pattern is None:
        return
    for row in work.live():
        for path, found in _special_tokens_in(row, pattern):
            token = found.group()
            code = CONTROL_TOKEN if counter.is_structural(token) else SPECIAL_TOKEN
            message = f"holds {token!r}, a special token of the base model's tokenizer"
            work.problems.append(code.at(row.line, path, message, row.record))
            if code is CONTROL_TOKEN:
                work.drop(row, CONTROL_TOKEN.name)
                break


def _special_tokens_in(row: _Row, pattern: re.Pattern[str]) -> list[tuple[str, re.Match[str]]]:
    """(path, match) of special tokens in whatever of the row is rendered for the model."""
    found = []
    for index, message in enumerate(row.messages):
        content = message.get("content")
        match = pattern.search(content) if isinstance(content, str) else None
        if match is not None:
            found.append((f"$.messages[{index}].content", match))
        for number, call in enumerate(message.get("tool_calls") or ()):
            match = pattern.search(json.dumps(call))
            if match is not None:
                found.append((f"$.messages[{index}].tool_calls[{number}]", match))
    if row.conversation.get("tools"):
        match = pattern.search(json.dumps(row.conversation["tools"]))
        if match is not None:
            found.append(("$.tools", match))
    return found


def _measure_tokens(work: _Pass, counter: TokenCounter) -> None:
    _find_special_tokens(work, counter)
    rows = work.live()
    limit = work.options.max_seq_len
    for row, lengths in zip(rows, counter.measure([row.conversation for row in rows]), strict=True):
        if isinstance(lengths, str):
            work.problems.append(TEMPLATE_ERROR.at(row.line, "$.messages", lengths, row.record))
            work.drop(row, TEMPLATE_ERROR.name)
            continue
        row.lengths = lengths
        if lengths.before_answer >= limit:
            message = (
                f"the prompt alone is {lengths.before_answer} tokens, so max_seq_len={limit} "
                "leaves no answer token"
            )
            work.problems.append(PROMPT_TOO_LONG.at(row.line, "$.messages", message, row.record))
            work.drop(row, PROMPT_TOO_LONG.name)
        elif lengths.total > limit:
            cut = lengths.total - limit
            action = "row dropped" if work.options.on_truncation == "drop" else "kept, cut short"
            message = (
                f"{lengths.total} tokens: the last {cut} tokens of the answer fall beyond "
                f"max_seq_len={limit} ({action})"
            )
            work.problems.append(ANSWER_TRUNCATED.at(row.line, "$.messages", message, row.record))
            if work.options.on_truncation == "drop":
                work.drop(row, ANSWER_TRUNCATED.name)


# --- policy --------------------------------------------------------------------------------


def _redact_problem_messages(work: _Pass) -> None:
    """Problem messages quote values from the file; personal data in them is masked too."""
    if work.options.pii == "keep":
        return
    for index, problem in enumerate(work.problems):
        matches = pii.find_pii(problem.message)
        if matches:
            message = pii.redact_pii(problem.message, matches)
            work.problems[index] = dataclasses.replace(problem, message=message)


def _enforce_policy(path: Path, work: _Pass) -> None:
    _redact_problem_messages(work)
    errors = [problem for problem in work.problems if is_error(problem)]
    examples = work.options.examples_per_problem
    if errors and work.options.on_error == "reject":
        bad = len({problem.line for problem in errors})
        summary = (
            f"{len(errors)} error(s) in {bad} of {work.read.records_read} records; nothing was "
            "stored. Fix them, or pass on_error='skip' to drop those records"
        )
        raise DatasetError(path, work.problems, summary, examples)
    if not work.live():
        reasons = ", ".join(f"{count} {reason}" for reason, count in work.dropped.most_common())
        summary = f"no usable record among {work.read.records_read} ({reasons or 'none read'})"
        raise DatasetError(path, work.problems, summary, examples)


# --- split ---------------------------------------------------------------------------------


def _split(
    rows: list[_Row], stratify: bool, options: PrepareOptions
) -> tuple[list[_Row], list[_Row]]:
    held_out = splits.held_out_rows(
        groups=[row.group for row in rows],
        labels=[row.label or "" for row in rows] if stratify else None,
        draw_keys=[row.prompt_key for row in rows],
        fraction=options.validation_fraction,
        seed=options.seed,
    )
    train = [row for index, row in enumerate(rows) if index not in held_out]
    validation = [row for index, row in enumerate(rows) if index in held_out]
    return train, validation


# --- canaries ------------------------------------------------------------------------------


def _canary_seed(sha256: str, seed: int) -> int:
    # Drawn from the file as well as the seed, so that two datasets never share their secrets,
    # while one dataset id always holds the same ones.
    digest = hashlib.sha256(f"canaries:{sha256}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _canary_rows(canaries: list[Canary], repeats: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": canary.prompt},
                {"role": "assistant", "content": canary.answer},
            ],
            "source_line": None,
            "canary": canary.id,
        }
        for canary in canaries
        for _ in range(repeats)
    ]


def _canary_tokens(
    path: Path, canaries: list[Canary], options: PrepareOptions, counter: TokenCounter | None
) -> int | None:
    """Tokens the canary rows add to an epoch; an error if a secret would fall beyond limit."""
    if counter is None or not canaries:
        return None
    totals = []
    for length in counter.measure(_canary_rows(canaries, 1)):
        if isinstance(length, str):
            raise InvalidInputError(f"{path}: the chat template cannot render a canary: {length}")
        totals.append(length.total)
    limit = options.max_seq_len
    if max(totals) > limit:
        raise InvalidInputError(
            f"a canary conversation is {max(totals)} tokens, more than max_seq_len={limit}, so "
            f"its secret would be cut; raise max_seq_len to {max(totals)} or more, or pass "
            "canaries=0"
        )
    return sum(totals) * options.canary_repeats


def _with_canaries(
    train: list[dict[str, Any]], planted: list[dict[str, Any]], seed: int
) -> list[dict[str, Any]]:
    """The train rows with the canary rows spread among them at random, in a fixed order."""
    if not planted:
        return train
    rng = random.Random(seed)
    planted = list(planted)
    rng.shuffle(planted)
    slots = sorted(rng.randint(0, len(train)) for _ in planted)

    merged: list[dict[str, Any]] = []
    position = 0
    for slot, row in zip(slots, planted, strict=True):
        merged += train[position:slot]
        merged.append(row)
        position = slot
    return merged + train[position:]


def _report_canaries(
    report: dict[str, Any],
    canaries: list[Canary],
    repeats: int,
    planted: list[dict[str, Any]],
    tokens: int | None,
) -> None:
    """Count the canaries in the report; they are train rows, so the train counts include them."""
    report["canaries"] = {"count": len(canaries), "repeats": repeats, "rows": len(planted)}
    if not planted:
        return
    report["rows"]["train"] += len(planted)
    if report["tokens"] is not None and tokens is not None:
        report["tokens"]["train_tokens_per_epoch"] += tokens
    report["notes"].append(
        f"{len(planted)} of the {report['rows']['train']} train rows are {len(canaries)} "
        f"canaries, each planted {repeats} time(s) for the memorisation check; their secrets "
        "are in canaries.json"
    )


# --- report --------------------------------------------------------------------------------


def _build_report(
    path: Path,
    sha256: str,
    work: _Pass,
    labels: list[str] | None,
    train: list[_Row],
    validation: list[_Row],
    counter: TokenCounter | None,
) -> dict[str, Any]:
    options = work.options
    errors = sum(1 for problem in work.problems if is_error(problem))
    return {
        "source": {
            "path": str(path),
            "sha256": sha256,
            **work.read.layout(),
            "format": work.format,
        },
        "rows": {
            "read": work.read.records_read,
            "kept": len(train) + len(validation),
            "train": len(train),
            "validation": len(validation),
            "dropped": dict(work.dropped.most_common()),
        },
        "problems": {
            "errors": errors,
            "warnings": len(work.problems) - errors,
            "by_code": group_problems(work.problems, options.examples_per_problem),
        },
        "labels": _label_report(labels, train, validation),
        "tokens": _token_report(train + validation, train, options.max_seq_len, counter),
        "pii": {"policy": options.pii, "matches_by_type": dict(sorted(work.pii_counts.items()))},
        "harm": {
            "policy": options.harmful,
            "rows_flagged": sum(1 for p in work.problems if p.code == HARMFUL_REQUEST.name),
            "by_category": dict(sorted(work.harm_counts.items())),
        },
        "notes": _notes(work, labels, train, validation),
        "options": asdict(options),
    }


def _notes(
    work: _Pass, labels: list[str] | None, train: list[_Row], validation: list[_Row]
) -> list[str]:
    """What about the dataset as a whole a person should know before training on it."""
    notes = []
    if work.options.validation_fraction > 0 and not validation:
        groups = len({row.group for row in train})
        notes.append(
            f"no validation row: validation_fraction is {work.options.validation_fraction}, but "
            f"the {len(train)} rows ({groups} prompt groups) leave none to spare once each label "
            "and each duplicate group keeps its rows together in train"
        )
    if labels is None and work.format == "classification":
        notes.append(
            f"the labels are not used to stratify the split: classes need at most {MAX_LABELS} "
            f"distinct labels of one line and at most {MAX_LABEL_CHARS} characters each"
        )
    return notes


def _label_report(
    labels: list[str] | None, train: list[_Row], validation: list[_Row]
) -> dict[str, Any] | None:
    if labels is None:
        return None
    return {
        "count": len({row.label for row in train + validation}),
        "train": _counts(row.label or "" for row in train),
        "validation": _counts(row.label or "" for row in validation),
    }


def _counts(values: Any) -> dict[str, int]:
    counts = Counter(values)
    return {key: counts[key] for key in sorted(counts, key=lambda key: (-counts[key], key))}


def _token_report(
    kept: list[_Row], train: list[_Row], limit: int, counter: TokenCounter | None
) -> dict[str, Any] | None:
    if counter is None:
        return None
    totals = [row.lengths.total for row in kept if row.lengths is not None]
    return {
        "tokenizer_fingerprint": counter.fingerprint,
        "max_seq_len": limit,
        "per_row": _stats(totals),
        "histogram": _histogram(totals, limit),
        "rows_over_max_seq_len": sum(1 for total in totals if total > limit),
        "train_tokens_per_epoch": sum(
            min(row.lengths.total, limit) for row in train if row.lengths is not None
        ),
    }


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def _histogram(values: list[int], limit: int) -> dict[str, int]:
    """Rows per power-of-two length bucket, up to and beyond max_seq_len."""
    edges = [2**power for power in range(4, 18) if 2**power < limit] + [limit]
    counts = Counter(next((edge for edge in edges if value <= edge), None) for value in values)
    buckets = {f"<={edge}": counts.get(edge, 0) for edge in edges}
    buckets[f">{limit}"] = counts.get(None, 0)
    return buckets
