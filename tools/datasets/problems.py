"""Problems found in a dataset file: stable codes, where each one is, and how to fix it.

Every stage of preparation reports through `Code.at`, so one report lists every problem of a
file with its physical line, a JSON path inside the record, a code a program can match on and a
hint a person can act on.
"""

from __future__ import annotations

import reprlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]

# Every code defined anywhere, by name; codes are public API and never change meaning.
CODES: dict[str, Code] = {}
SHOWN_CHARS = 60

_SHORT = reprlib.Repr()
_SHORT.maxstring = SHOWN_CHARS
_SHORT.maxother = SHOWN_CHARS
_SHORT.maxlist = _SHORT.maxdict = 4
_SHORT.maxlevel = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: its code, where it is, what is wrong and the fix.

    `line` is the physical line of the file where the record starts (1-based; for CSV the line
    of the record's first physical line) or None for a problem of the whole file. `path` is a
    JSON path inside the record, "$" for the record itself, e.g. "$.messages[2].content".
    """

    code: str
    severity: Severity
    line: int | None
    path: str
    message: str
    hint: str
    record: int | None = None  # 1-based, for records of a JSON document: several share a line

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.record is not None:
            where += f", record {self.record}"
        return f"{where}, {self.path}: {self.message} [{self.code}]; fix: {self.hint}"

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True)
class Code:
    """A kind of problem: a stable snake_case name, whether it rejects the row, and a fix hint."""

    name: str
    severity: Severity
    hint: str

    def at(self, line: int | None, path: str, message: str, record: int | None = None) -> Problem:
        """A problem of this kind at `line` (and `record`) and JSON `path`, with a message."""
        return Problem(self.name, self.severity, line, path, message, self.hint, record)


def define(name: str, severity: Severity, hint: str) -> Code:
    """Declare a problem code once, at import time of the module that reports it."""
    if name in CODES:
        raise ValueError(f"problem code {name!r} is defined twice")
    code = Code(name, severity, hint)
    CODES[name] = code
    return code


def is_error(problem: Problem) -> bool:
    """Whether the problem makes its record unusable (warnings keep the record)."""
    return problem.severity == "error"


def group_problems(problems: Iterable[Problem], examples: int) -> dict[str, dict[str, Any]]:
    """Problems grouped by code: severity, count, hint and the first `examples` of each.

    Codes are ordered errors first, then by the line of their first occurrence.
    """
    problems = sorted(problems, key=lambda p: (p.line or 0, p.record or 0, p.path))
    counts = Counter(problem.code for problem in problems)
    first_line: dict[str, int] = {}
    for problem in problems:
        first_line.setdefault(problem.code, problem.line or 0)
    shown: dict[str, list[dict[str, Any]]] = {code: [] for code in counts}
    for problem in problems:
        if len(shown[problem.code]) < examples:
            example = {"line": problem.line, "path": problem.path, "message": problem.message}
            if problem.record is not None:
                example["record"] = problem.record
            shown[problem.code].append(example)

    def order(code: str) -> tuple[int, int, str]:
        return (0 if CODES[code].severity == "error" else 1, first_line[code], code)

    return {
        code: {
            "severity": CODES[code].severity,
            "count": counts[code],
            "hint": CODES[code].hint,
            "examples": shown[code],
        }
        for code in sorted(counts, key=order)
    }


def show(value: Any) -> str:
    """A value as a message quotes it: its repr, cut to about SHOWN_CHARS characters."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
