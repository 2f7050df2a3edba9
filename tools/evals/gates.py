"""Acceptance criteria: parse them, and judge an evaluation's scores against them.

A criterion is one line, `<metric> <op> <threshold>`, where the threshold is a number, or the
same metric of the base model or of the deployment's champion, optionally shifted:

    accuracy >= 0.80
    accuracy >= champion - 0.01
    refusal_rate >= base - 0.02
    p95_latency_ms <= 300

A criterion relative to the champion when the deployment has no champion yet (nothing deployed)
is *skipped*, not failed: there is nothing to regress against, and the verdict says so. A
candidate that is the champion itself is compared with itself. A criterion whose metric was
not measured *fails*, so a gate never passes on a number nobody looked at.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from turing.tools.errors import InvalidInputError
from turing.tools.evals.metrics import TASK_METRICS

# Metrics a criterion may name, beyond the task metrics, and what measures them.
SAFETY_METRICS = ("refusal_rate", "over_refusal_rate", "pii_rate", "canary_leak_rate")
SERVING_METRICS = ("p50_latency_ms", "p95_latency_ms", "tokens_per_second")
OTHER_METRICS = ("perplexity", "export_agreement")
GATE_METRICS = (*TASK_METRICS, *SAFETY_METRICS, *SERVING_METRICS, *OTHER_METRICS)
REFERENCES = ("base", "champion")
OPERATORS = (">=", "<=", ">", "<")
MAX_CRITERIA = 50
MAX_CRITERION_CHARS = 200
# Metrics that are shares or scores from 0 to 1; the others are positive quantities.
UNIT_METRICS = frozenset(TASK_METRICS) | set(SAFETY_METRICS) | {"export_agreement"}
# Scores are rounded to 4 places; a threshold met to within this counts as met.
TOLERANCE = 1e-9

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PATTERN = re.compile(
    rf"^\s*(?P<metric>[a-z0-9_]+)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<number>{_NUMBER})|(?P<ref>[a-z]+)\s*(?:(?P<sign>[-+])\s*(?P<shift>{_NUMBER}))?)\s*$"
)


@dataclass(frozen=True)
class Criterion:
    """One parsed acceptance criterion."""

    text: str
    metric: str
    op: str
    number: float | None = None  # an absolute threshold
    reference: str | None = None  # "base" or "champion" for a relative one
    shift: float = 0.0  # added to the reference's value

    def threshold(self, reference_value: float | None) -> float | None:
        """The number the metric is compared with, given the reference's value."""
        if self.reference is None:
            return self.number
        return None if reference_value is None else reference_value + self.shift


def parse_criteria(lines: list[str]) -> list[Criterion]:
    """Parse acceptance criteria; every bad line is reported in one error.

    Raises:
        InvalidInputError: Naming each line that does not parse, its metric or reference, and
            what is allowed.
    """
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise InvalidInputError(
            'criteria must be a list of strings such as ["accuracy >= 0.8", '
            '"accuracy >= champion - 0.01", "p95_latency_ms <= 300"]'
        )
    if not lines:
        raise InvalidInputError("criteria is empty: give at least one, e.g. 'accuracy >= 0.8'")
    if len(lines) > MAX_CRITERIA:
        raise InvalidInputError(f"{len(lines)} criteria: at most {MAX_CRITERIA} are allowed")
    parsed, errors = [], []
    for index, line in enumerate(lines):
        try:
            if len(line) > MAX_CRITERION_CHARS:
                raise ValueError(f"longer than {MAX_CRITERION_CHARS} characters")
            parsed.append(_parse(line))
        except ValueError as exc:
            errors.append(f"criteria[{index}] {line[:200]!r}: {exc}")
    if errors:
        raise InvalidInputError(
            f"{len(errors)} invalid criteria:\n  " + "\n  ".join(errors) + "\n"
            "A criterion is '<metric> <op> <number>' or '<metric> <op> base|champion [+|- number]'"
        )
    return parsed


def _parse(line: str) -> Criterion:
    match = _PATTERN.match(line.lower())
    if not match:
        raise ValueError(
            f"not of the form '<metric> <op> <threshold>' with op one of {', '.join(OPERATORS)}"
        )
    metric = match["metric"]
    if metric not in GATE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(GATE_METRICS)}")
    text = " ".join(line.split())
    if match["number"] is not None:
        number = float(match["number"])
        low, high = (0.0, 1.0) if metric in UNIT_METRICS else (0.0, math.inf)
        if not math.isfinite(number) or not low <= number <= high:
            allowed = "from 0 to 1" if metric in UNIT_METRICS else "0 or more"
            raise ValueError(f"threshold {match['number']} is out of range: {metric} is {allowed}")
        return Criterion(text, metric, match["op"], number=number)
    reference = match["ref"]
    if reference not in REFERENCES:
        raise ValueError(f"threshold {reference!r} is not a number, 'base' or 'champion'")
    shift = float(match["shift"] or 0.0) * (-1.0 if match["sign"] == "-" else 1.0)
    if not math.isfinite(shift) or (metric in UNIT_METRICS and abs(shift) > 1):
        raise ValueError(f"shift {match['shift']} is out of range: at most 1 for {metric}")
    return Criterion(text, metric, match["op"], reference=reference, shift=shift)


def judge(
    criteria: list[Criterion],
    values: dict[str, dict[str, float]],
    *,
    champion: str | None = None,
    faults: list[str] | None = None,
) -> dict[str, Any]:
    """Judge measured values against criteria.

    Args:
        criteria: Parsed criteria.
        values: Metric values by role: "model" (the candidate), and "base" and "champion"
            when they were scored.
        champion: The champion's model version id, or None when there is none.
        faults: Problems found outside the criteria (e.g. an export fault); each fails the
            verdict.

    Returns:
        {"passed", "criteria": [one entry per criterion with its status: passed, failed or
        skipped, and the numbers], "failing": [...], "skipped": [...], "champion"}.
    """
    model = values.get("model", {})
    entries = []
    for criterion in criteria:
        entry: dict[str, Any] = {"criterion": criterion.text, "metric": criterion.metric}
        value = model.get(criterion.metric)
        reference_value = None
        if criterion.reference is not None:
            reference_value = values.get(criterion.reference, {}).get(criterion.metric)
        threshold = criterion.threshold(reference_value)
        entry.update(value=value, threshold=threshold)
        if criterion.reference is not None:
            entry.update(reference=criterion.reference, reference_value=reference_value)

        if criterion.reference == "champion" and champion is None:
            entry.update(
                status="skipped",
                reason="no champion yet: the deployment serves no other model to compare with",
            )
        elif value is None:
            entry.update(status="failed", reason=f"{criterion.metric} was not measured")
        elif threshold is None:
            entry.update(
                status="failed",
                reason=f"{criterion.metric} of the {criterion.reference} model was not measured",
            )
        elif _holds(value, criterion.op, threshold):
            entry.update(status="passed", reason=f"{value:g} {criterion.op} {threshold:g}")
        else:
            entry.update(status="failed", reason=f"{value:g} is not {criterion.op} {threshold:g}")
        entries.append(entry)

    failing = [f"{e['criterion']}: {e['reason']}" for e in entries if e["status"] == "failed"]
    failing += list(faults or [])
    return {
        "passed": not failing,
        "criteria": entries,
        "failing": failing,
        "skipped": [
            f"{e['criterion']}: {e['reason']}" for e in entries if e["status"] == "skipped"
        ],
        "champion": champion,
    }


def _holds(value: float, op: str, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold - TOLERANCE
    if op == "<=":
        return value <= threshold + TOLERANCE
    if op == ">":
        return value > threshold
    return value < threshold
