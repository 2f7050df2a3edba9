"""Turn a raw chat JSONL or CSV file into validated, de-duplicated train and validation splits.

Pure logic: no registry, no MCP, no model. Every bad row is reported with its line and field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turing.tools.errors import InvalidInputError

logger = logging.getLogger(__name__)

FORMATS = ("auto", "chat_jsonl", "csv")
ON_ERROR_POLICIES = ("reject", "skip")
ROLES = ("system", "user", "assistant")
MAX_VALIDATION_FRACTION = 0.5
# Answers are treated as class labels only up to this many distinct values; beyond it a
# per-label split and distribution stop being meaningful.
MAX_LABELS = 50
MAX_LABEL_CHARS = 100
PROBLEMS_IN_MESSAGE = 10
PROBLEMS_IN_REPORT = 20

Message = dict[str, str]


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row: where it is and what is allowed instead."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, field {self.field}: {self.message}"


class DatasetError(InvalidInputError):
    """A dataset file has rows that cannot be used; `problems` lists every one of them."""

    def __init__(self, source: str | Path, problems: Sequence[RowProblem], summary: str) -> None:
        self.source = str(source)
        self.problems = list(problems)
        lines = [f"{source}: {summary}"]
        lines += [f"  {problem}" for problem in self.problems[:PROBLEMS_IN_MESSAGE]]
        if len(self.problems) > PROBLEMS_IN_MESSAGE:
            lines.append(f"  ... and {len(self.problems) - PROBLEMS_IN_MESSAGE} more")
        super().__init__("\n".join(lines))


@dataclass
class PreparedDataset:
    """The clean splits of a dataset file, with a report of what was read, kept and dropped."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    report: dict[str, Any]
    problems: list[RowProblem]
    source_sha256: str


@dataclass(frozen=True)
class _Found:
    reason: str  # short key the report counts dropped rows by
    problem: RowProblem


@dataclass
class _Row:
    line: int
    messages: list[Message]


@dataclass
class _Parsed:
    rows: list[_Row] = field(default_factory=list)
    found: list[_Found] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    rows_read: int = 0
    blank_lines: int = 0
    delimiter: str | None = None

    def add(self, line: int, messages: list[Message] | None, found: list[_Found]) -> None:
        self.rows_read += 1
        if messages is None:
            self.found.extend(found)
            self.dropped[found[0].reason] += 1
        else:
            self.rows.append(_Row(line, messages))


def prepare_dataset(
    path: Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "reject",
) -> PreparedDataset:
    """Validate a chat JSONL or CSV file and split it into train and validation rows.

    Args:
        path: The raw file. UTF-8 with or without a byte order mark; LF or CRLF line ends.
        format: "chat_jsonl" (one {"messages": [...]} object per line), "csv" (a header row,
            comma, tab, semicolon or pipe separated) or "auto" to decide from the suffix and
            the content.
        columns: For CSV only: maps roles to column names, e.g. {"user": "text",
            "assistant": "category"}, optionally with "system".
        system_prompt: A fixed system turn added to every row that has none.
        validation_fraction: Share of rows held out for validation, 0 to 0.5.
        seed: Chooses the split; the same file and options always give the same split.
        on_error: "reject" raises on any bad row; "skip" drops bad rows and counts them.

    Returns:
        The train and validation rows as {"messages": [...]} dicts, a JSON-serialisable
        report, every problem found and the SHA-256 of the file's bytes.

    Raises:
        InvalidInputError: An option is invalid, or the file is missing, not UTF-8 or empty.
        DatasetError: A row is invalid under on_error="reject", or no valid row remains.
    """
    path = Path(path)
    _check_options(format, columns, system_prompt, validation_fraction, seed, on_error)
    data = _read_bytes(path)
    sha256 = hashlib.sha256(data).hexdigest()
    text = _decode(path, data)

    chosen = _detect_format(path, text) if format == "auto" else format
    if chosen == "chat_jsonl":
        parsed = _parse_jsonl(path, text, columns, system_prompt)
    else:
        parsed = _parse_csv(path, text, columns, system_prompt)
    problems = [found.problem for found in parsed.found]
    _enforce_policy(path, parsed, problems, on_error)

    rows = _drop_duplicates(parsed)
    labels = _labels_of(rows)
    train, validation = _split(rows, labels, validation_fraction, seed)
    report = _build_report(path, sha256, chosen, parsed, problems, labels, (train, validation))
    report["options"] = {
        "columns": columns,
        "system_prompt": system_prompt,
        "validation_fraction": validation_fraction,
        "seed": seed,
        "on_error": on_error,
    }
    logger.info(
        "prepared dataset %s (sha256 %s): %d train, %d validation, %d rows dropped",
        path,
        sha256[:12],
        len(train),
        len(validation),
        sum(parsed.dropped.values()),
    )
    return PreparedDataset(
        train=[{"messages": row.messages} for row in train],
        validation=[{"messages": row.messages} for row in validation],
        report=report,
        problems=problems,
        source_sha256=sha256,
    )


# --- options and reading -------------------------------------------------------------------


def _check_options(
    format: str,
    columns: dict[str, str] | None,
    system_prompt: str | None,
    validation_fraction: float,
    seed: int,
    on_error: str,
) -> None:
    errors = []
    if format not in FORMATS:
        errors.append(f"format {format!r} is not supported; allowed: {', '.join(FORMATS)}")
    if on_error not in ON_ERROR_POLICIES:
        errors.append(f"on_error {on_error!r} is not allowed; allowed: reject, skip")
    if not _is_fraction(validation_fraction):
        errors.append(
            f"validation_fraction {validation_fraction!r} is out of range; "
            f"allowed: a number from 0 to {MAX_VALIDATION_FRACTION}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        errors.append(f"seed {seed!r} is not an integer; pass a whole number such as 0")
    if system_prompt is not None and (
        not isinstance(system_prompt, str) or not system_prompt.strip()
    ):
        errors.append("system_prompt is empty; pass the instruction text or leave it out")
    errors += _column_option_errors(columns, system_prompt)

    if errors:
        raise InvalidInputError(f"{len(errors)} invalid option(s):\n  " + "\n  ".join(errors))


def _is_fraction(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= MAX_VALIDATION_FRACTION  # NaN fails both comparisons


def _column_option_errors(columns: dict[str, str] | None, system_prompt: str | None) -> list[str]:
    if columns is None:
        return []
    if not isinstance(columns, dict):
        return [f"columns must map roles to column names, got {_json_type(columns)}"]

    errors = [
        f"columns key {role!r} is not a role; allowed: {', '.join(ROLES)}"
        for role in columns
        if role not in ROLES
    ]
    errors += [
        f"columns[{role!r}] must be a column name, got {value!r}"
        for role, value in columns.items()
        if not isinstance(value, str) or not value.strip()
    ]
    errors += [
        f"columns has no {role!r} entry; map the {role} turn to a column"
        for role in ("user", "assistant")
        if role not in columns
    ]
    if "system" in columns and system_prompt is not None:
        errors.append("pass either a 'system' column or system_prompt, not both")
    return errors


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InvalidInputError(f"no dataset file at {path}")
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file; pass the path of a .jsonl or .csv file")
    return path.read_bytes()


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInputError(f"{path} is UTF-16 text; save it as UTF-8 and try again")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} cannot be "
            "decoded; save the file as UTF-8 and try again"
        ) from exc


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "chat_jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    return "chat_jsonl" if text.lstrip()[:1] in ("{", "[") else "csv"


def _enforce_policy(path: Path, parsed: _Parsed, problems: list[RowProblem], on_error: str) -> None:
    bad_rows = sum(parsed.dropped.values())
    if problems and on_error == "reject":
        raise DatasetError(
            path,
            problems,
            f"{len(problems)} problem(s) in {bad_rows} of {parsed.rows_read} rows; fix them, "
            "or pass on_error='skip' to drop those rows",
        )
    if not parsed.rows:
        summary = f"no valid rows ({parsed.rows_read} read, {bad_rows} invalid)"
        if not parsed.rows_read:
            summary = "the file has no rows"
        raise DatasetError(path, problems, summary)


# --- chat JSONL ----------------------------------------------------------------------------


def _parse_jsonl(
    path: Path, text: str, columns: dict[str, str] | None, system_prompt: str | None
) -> _Parsed:
    if columns is not None:
        raise InvalidInputError(f"{path} is chat JSONL; columns applies to CSV files only")
    if _is_json_array(text):
        raise InvalidInputError(
            f'{path} holds a JSON array; chat_jsonl wants one {{"messages": [...]}} object per line'
        )

    parsed = _Parsed()
    for number, line in enumerate(_physical_lines(text), start=1):
        if not line.strip():
            parsed.blank_lines += 1
            continue
        messages, found = _check_jsonl_line(number, line)
        if messages is not None and system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        parsed.add(number, messages, found)
    return parsed


def _is_json_array(text: str) -> bool:
    if not text.lstrip().startswith("["):
        return False
    try:
        return isinstance(json.loads(text), list)
    except json.JSONDecodeError:
        return False  # a JSONL file whose first row is an array; reported row by row


def _physical_lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines would also break on U+2028 inside JSON strings.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines[-1] == "" else lines  # a final newline ends a line, opens none


def _check_jsonl_line(number: int, line: str) -> tuple[list[Message] | None, list[_Found]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        problem = RowProblem(number, "row", f"not valid JSON: {exc.msg} at column {exc.colno}")
        return None, [_Found("invalid_json", problem)]

    if not isinstance(row, dict):
        problem = RowProblem(
            number, "row", f'expected an object like {{"messages": [...]}}, got {_json_type(row)}'
        )
        return None, [_Found("not_an_object", problem)]
    return _check_conversation(number, row.get("messages"), "messages" in row)


def _check_conversation(
    number: int, messages: object, present: bool
) -> tuple[list[Message] | None, list[_Found]]:
    if not isinstance(messages, list) or not messages:
        if not present:
            message = 'is missing; each row needs "messages": [{"role": ..., "content": ...}]'
        elif isinstance(messages, list):
            message = "is empty; a row needs at least a user and an assistant turn"
        else:
            message = f"must be a list of messages, got {_json_type(messages)}"
        return None, [_Found("bad_messages", RowProblem(number, "messages", message))]

    found = [f for index, m in enumerate(messages) for f in _check_message(number, index, m)]
    if found:
        return None, found
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    found = _check_turn_order(number, turns)
    return (None, found) if found else (turns, [])


def _check_message(number: int, index: int, message: object) -> list[_Found]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        text = f"must be an object with role and content, got {_json_type(message)}"
        return [_Found("bad_message", RowProblem(number, where, text))]

    found = []
    role = message.get("role")
    if role not in ROLES:
        shown = "is missing" if "role" not in message else f"{_show(role)} is not a role"
        text = f"{shown}; allowed: {', '.join(ROLES)}"
        found.append(_Found("unknown_role", RowProblem(number, f"{where}.role", text)))

    content = message.get("content")
    if not isinstance(content, str):
        text = "is missing" if "content" not in message else f"got {_json_type(content)}"
        text = f"{text}; content must be a string"
        found.append(_Found("bad_content", RowProblem(number, f"{where}.content", text)))
    elif not content.strip():
        text = "is empty; every turn needs text"
        found.append(_Found("empty_content", RowProblem(number, f"{where}.content", text)))
    return found


def _check_turn_order(number: int, turns: list[Message]) -> list[_Found]:
    if not any(turn["role"] == "assistant" for turn in turns):
        text = "has no assistant turn; the model learns only from assistant turns"
        return [_Found("no_assistant_turn", RowProblem(number, "messages", text))]

    last = turns[-1]["role"]
    if last != "assistant":
        where = f"messages[{len(turns) - 1}].role"
        text = f"last turn is from {last!r}; a conversation must end with an assistant turn"
        return [_Found("last_turn_not_assistant", RowProblem(number, where, text))]
    return []


# --- CSV -----------------------------------------------------------------------------------


def _parse_csv(
    path: Path, text: str, columns: dict[str, str] | None, system_prompt: str | None
) -> _Parsed:
    delimiter = _sniff_delimiter(path, text)
    parsed = _Parsed(delimiter=delimiter)
    # strict mode turns an unclosed quote into an error instead of one cell swallowing the rest
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    try:
        header = [name.strip() for name in next(reader, [])]
        indexes = _resolve_columns(path, header, columns)
        # Row numbers count records as a spreadsheet shows them: the header is row 1.
        for number, record in enumerate(reader, start=2):
            _add_csv_record(parsed, number, record, header, indexes, system_prompt)
    except csv.Error as exc:
        row = parsed.rows_read + parsed.blank_lines + (1 if header is None else 2)
        _raise_unreadable_csv(path, parsed, row, exc)
    return parsed


def _add_csv_record(
    parsed: _Parsed,
    number: int,
    record: list[str],
    header: list[str],
    indexes: dict[str, int],
    system_prompt: str | None,
) -> None:
    cells = [cell.strip() for cell in record]
    if not any(cells):
        parsed.blank_lines += 1
        return
    found = _check_csv_record(number, cells, header, indexes)
    parsed.add(number, None if found else _csv_turns(cells, indexes, system_prompt), found)


def _raise_unreadable_csv(path: Path, parsed: _Parsed, row: int, exc: csv.Error) -> None:
    problem = RowProblem(row, "row", f"cannot be parsed as CSV: {exc}; check the quotes in it")
    problems = [found.problem for found in parsed.found] + [problem]
    summary = f"{len(problems)} problem(s); reading stopped at row {row}, whose quoting is broken"
    raise DatasetError(path, problems, summary) from exc


def _sniff_delimiter(path: Path, text: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    # Sniff from the header alone: free text in data rows is full of commas and semicolons.
    header = text.split("\n", 1)[0]
    counts = {delimiter: header.count(delimiter) for delimiter in (",", "\t", ";", "|")}
    best = max(counts, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else ","


def _resolve_columns(
    path: Path, header: list[str], columns: dict[str, str] | None
) -> dict[str, int]:
    listed = ", ".join(repr(name) for name in header)
    if not any(header):
        raise InvalidInputError(
            f"{path} has no header row; a CSV file starts with its column names"
        )
    if columns is None:
        raise InvalidInputError(
            f"{path} is CSV, so columns is required: map roles to its columns ({listed}), "
            'e.g. {"user": "text", "assistant": "label"}'
        )

    missing = [name for name in columns.values() if name.strip() not in header]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise InvalidInputError(f"{path} has no column {names}; its header has: {listed}")
    return {role: header.index(columns[role].strip()) for role in ROLES if role in columns}


def _check_csv_record(
    number: int, cells: list[str], header: list[str], indexes: dict[str, int]
) -> list[_Found]:
    if len(cells) > len(header):
        text = (
            f"has {len(cells)} cells but the header has {len(header)}; "
            "quote cells that contain the delimiter"
        )
        return [_Found("wrong_cell_count", RowProblem(number, "row", text))]

    found = []
    for role, index in indexes.items():
        if index >= len(cells) or not cells[index]:
            text = f"empty cell in column {header[index]!r} (the {role} turn)"
            found.append(_Found("empty_cell", RowProblem(number, header[index], text)))
    return found


def _csv_turns(
    cells: list[str], indexes: dict[str, int], system_prompt: str | None
) -> list[Message]:
    turns = [{"role": role, "content": cells[index]} for role, index in indexes.items()]
    if system_prompt is not None:
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


# --- de-duplication, labels and split ------------------------------------------------------


def _drop_duplicates(parsed: _Parsed) -> list[_Row]:
    seen: set[str] = set()
    kept = []
    for row in parsed.rows:
        key = json.dumps(row.messages, ensure_ascii=False)
        if key in seen:
            parsed.dropped["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept


def _labels_of(rows: list[_Row]) -> list[str] | None:
    """The final answers when they look like class labels, else None."""
    answers = [row.messages[-1]["content"].strip() for row in rows]
    distinct = set(answers)
    looks_like_labels = (
        len(distinct) <= MAX_LABELS
        # Free-text answers are nearly all distinct; labels repeat, twice per label at least.
        and 2 * len(distinct) <= len(answers)
        and all("\n" not in answer and len(answer) <= MAX_LABEL_CHARS for answer in distinct)
    )
    return answers if looks_like_labels else None


def _prompt_key(row: _Row) -> str:
    # Case and spacing differences do not make a prompt new, so they must not split a group.
    prompt = [
        (turn["role"], " ".join(turn["content"].split()).casefold()) for turn in row.messages[:-1]
    ]
    return json.dumps(prompt, ensure_ascii=False)


def _split(
    rows: list[_Row], labels: list[str] | None, fraction: float, seed: int
) -> tuple[list[_Row], list[_Row]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[_prompt_key(row)].append(index)

    strata: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        strata[_group_label(members, labels)].append(key)
    sizes = {name: sum(len(groups[key]) for key in keys) for name, keys in strata.items()}
    quotas = _quotas(sizes, fraction)

    held_out: set[int] = set()
    for name in sorted(strata):
        order = sorted(strata[name], key=lambda key: _draw(seed, key))
        held_out |= _fill(order, groups, quotas[name])
    train = [row for index, row in enumerate(rows) if index not in held_out]
    validation = [row for index, row in enumerate(rows) if index in held_out]
    return train, validation


def _group_label(members: list[int], labels: list[str] | None) -> str:
    if labels is None:
        return ""
    counts = Counter(labels[index] for index in members)
    return min(counts, key=lambda label: (-counts[label], label))


def _draw(seed: int, key: str) -> str:
    # A hash rather than random.shuffle: a row's side then does not move when other rows change.
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def _quotas(sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """Validation rows per stratum, proportional, by largest remainder, keeping one train row."""
    total = sum(sizes.values())
    target = math.floor(total * fraction + 0.5)
    if fraction > 0 and total >= 2:
        target = max(target, 1)

    eligible = {name: size for name, size in sizes.items() if size >= 2}
    quotas = {name: 0 for name in sizes}
    quotas.update({name: math.floor(size * fraction) for name, size in eligible.items()})
    by_remainder = sorted(eligible, key=lambda name: (-(eligible[name] * fraction % 1), name))
    for name in by_remainder:
        if sum(quotas.values()) >= target:
            break
        quotas[name] = min(quotas[name] + 1, eligible[name] - 1)
    return quotas


def _fill(order: list[str], groups: dict[str, list[int]], quota: int) -> set[int]:
    chosen: set[int] = set()
    for key in order:
        if len(chosen) + len(groups[key]) <= quota:
            chosen.update(groups[key])
        if len(chosen) == quota:
            break
    return chosen


# --- report --------------------------------------------------------------------------------


def _build_report(
    path: Path,
    sha256: str,
    format: str,
    parsed: _Parsed,
    problems: list[RowProblem],
    labels: list[str] | None,
    splits: tuple[list[_Row], list[_Row]],
) -> dict[str, Any]:
    train, validation = splits
    kept = train + validation
    return {
        "source": str(path),
        "sha256": sha256,
        "format": format,
        "delimiter": parsed.delimiter,
        "rows_read": parsed.rows_read,
        "rows_kept": len(kept),
        "rows_dropped": dict(sorted(parsed.dropped.items())),
        "blank_lines": parsed.blank_lines,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "labels": _label_counts(labels) if labels is not None else None,
        "validation_labels": _label_counts(_answers(validation)) if labels is not None else None,
        "prompts_with_conflicting_answers": _conflicts(kept),
        "answer_chars": _length_stats([len(answer) for answer in _answers(kept)]),
        "problem_count": len(problems),
        "problems": [asdict(problem) for problem in problems[:PROBLEMS_IN_REPORT]],
    }


def _answers(rows: list[_Row]) -> list[str]:
    return [row.messages[-1]["content"].strip() for row in rows]


def _label_counts(labels: list[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {label: counts[label] for label in sorted(counts, key=lambda x: (-counts[x], x))}


def _conflicts(rows: list[_Row]) -> int:
    answers: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        answers[_prompt_key(row)].add(row.messages[-1]["content"].strip())
    return sum(1 for seen in answers.values() if len(seen) > 1)


def _length_stats(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"a number ({value!r})"
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- JSONL files ---------------------------------------------------------------------------


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    """Write rows as JSON lines, atomically: readers see the old file or the whole new one.

    Args:
        rows: JSON-serialisable dicts, one per line.
        path: Destination; its folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON lines file of objects, skipping blank lines.

    Args:
        path: A UTF-8 file with one JSON object per line.

    Returns:
        The objects in file order.

    Raises:
        InvalidInputError: The file is missing, not UTF-8, or a line is not a JSON object.
    """
    path = Path(path)
    text = _decode(path, _read_bytes(path))
    rows = []
    for number, line in enumerate(_physical_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}, line {number}: not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise InvalidInputError(
                f"{path}, line {number}: expected an object, got {_json_type(row)}"
            )
        rows.append(row)
    return rows
