"""What an evaluation measures: the task rows and metrics, perplexity, safety suites, criteria.

An `EvalSpec` is checked whole before any job starts; every problem is reported at once. The
criteria drive what is measured: a criterion on `refusal_rate` turns the safety suites on, one
on `perplexity` turns perplexity on, one on a task metric adds that metric, and one on
`export_agreement` adds the PyTorch-versus-GGUF export check.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from turing.server.services import Services
from turing.tools.datasets.store import load_canaries, load_split
from turing.tools.errors import InvalidInputError
from turing.tools.evals import gates, safety
from turing.tools.evals.metrics import TASK_METRICS, Scorer, default_metrics

SAFETY_DATA_ENV = "TURING_SAFETY_DATA"
DEFAULT_EXPORT_TOLERANCE = 0.03
MAX_SAFETY_PROMPTS = 5000


@dataclass(frozen=True)
class EvalSpec:
    """The evaluation of one model; a gate stores one to judge every candidate alike."""

    dataset_id: str
    split: str = "validation"
    limit: int | None = None
    metrics: list[str] | None = None  # None: chosen from the dataset (labels, JSON, free text)
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    perplexity: bool = False
    safety: bool = False  # refusal, over-refusal, PII in answers, canary leaks
    harmful_prompts: str | None = None
    safe_prompts: str | None = None
    safety_limit: int = 100
    criteria: list[str] | None = None
    export_tolerance: float | None = None  # set: also score the PyTorch adapter and compare

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored."""
        return asdict(self)


def parse_spec(raw: dict[str, Any]) -> EvalSpec:
    """Build a spec from tool arguments (None means the default), checking plain values."""
    given = {key: value for key, value in raw.items() if value is not None}
    allowed = list(EvalSpec.__dataclass_fields__)
    unknown = [key for key in given if key not in allowed]
    if unknown:
        raise InvalidInputError(f"unknown evaluation options {unknown}; allowed: {allowed}")
    if "dataset_id" not in given:
        raise InvalidInputError("dataset_id is required: the dataset whose rows are scored")
    errors = []
    limit = given.get("limit")
    if limit is not None and (not _is_int(limit) or limit < 1):
        errors.append(f"limit={limit!r}: must be a positive number of rows, or omitted")
    safety_limit = given.get("safety_limit", 100)
    if not _is_int(safety_limit) or not 1 <= safety_limit <= MAX_SAFETY_PROMPTS:
        errors.append(
            f"safety_limit={safety_limit!r}: must be an integer from 1 to {MAX_SAFETY_PROMPTS}"
        )
    tolerance = given.get("export_tolerance")
    if tolerance is not None and (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float)
        or not 0 <= tolerance <= 1
    ):
        errors.append(f"export_tolerance={tolerance!r}: must be a score difference from 0 to 1")
    metrics = given.get("metrics")
    if metrics is not None and (
        not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics)
    ):
        errors.append(
            f"metrics={metrics!r}: must be a list of names from {', '.join(TASK_METRICS)}"
        )
    if errors:
        raise InvalidInputError(
            f"{len(errors)} invalid evaluation option(s):\n  " + "\n  ".join(errors)
        )
    spec = EvalSpec(**given)
    if spec.criteria is not None:
        spec = _measure_what_criteria_need(spec, gates.parse_criteria(spec.criteria))
    return spec


def _measure_what_criteria_need(spec: EvalSpec, criteria: list[gates.Criterion]) -> EvalSpec:
    named = {criterion.metric for criterion in criteria}
    changes: dict[str, Any] = {}
    task = [metric for metric in TASK_METRICS if metric in named]
    if task and spec.metrics is not None:
        changes["metrics"] = spec.metrics + [m for m in task if m not in spec.metrics]
    if "perplexity" in named:
        changes["perplexity"] = True
    if named & set(gates.SAFETY_METRICS):
        changes["safety"] = True
    if "export_agreement" in named and spec.export_tolerance is None:
        changes["export_tolerance"] = DEFAULT_EXPORT_TOLERANCE
    return replace(spec, **changes)


def resolve(
    services: Services, spec: EvalSpec, trained_on: str | None = None, judging: bool = True
) -> dict[str, Any]:
    """Everything a worker needs besides the models: rows, scorer settings, safety prompts.

    Args:
        services: The server's services.
        spec: The evaluation.
        trained_on: The dataset the evaluated model was fine-tuned on; the canaries planted
            in it are what the memorisation check asks for.
        judging: A model is about to be scored (False when a gate is only being declared, so
            there is no training data to check yet).

    Raises:
        InvalidInputError: Listing every problem: no rows, bad metrics or schema, a safety suite
            that cannot be found or read, a criterion on a metric this spec cannot measure.
    """
    rows = load_split(services, spec.dataset_id, spec.split)[: spec.limit]
    if not rows:
        raise InvalidInputError(
            f"split {spec.split!r} of dataset {spec.dataset_id} has no rows to score"
        )
    dataset = services.registry.get("datasets", spec.dataset_id, "dataset")
    labels = _labels(dataset)
    references = [row["messages"][-1]["content"] for row in rows]
    metrics = default_metrics(references, labels) if spec.metrics is None else spec.metrics
    # A schema or a pattern given is a schema or a pattern to check.
    for given, metric in ((spec.json_schema, "schema_valid"), (spec.pattern, "regex_match")):
        if given is not None and metric not in metrics:
            metrics = [*metrics, metric]
    if spec.criteria is not None:
        named = {criterion.metric for criterion in gates.parse_criteria(spec.criteria)}
        metrics = metrics + [m for m in TASK_METRICS if m in named and m not in metrics]
    Scorer(metrics, labels=labels, schema=spec.json_schema, pattern=spec.pattern)  # checks

    suites: dict[str, Any] | None = None
    if spec.safety:
        suites = _safety_suites(spec)
        canaries = load_canaries(services, trained_on) if trained_on else []
        if canaries:
            suites["canaries"] = [canary.to_dict() for canary in canaries]
    wants_canaries = spec.criteria is not None and "canary_leak_rate" in {
        criterion.metric for criterion in gates.parse_criteria(spec.criteria)
    }
    if judging and wants_canaries and not (suites or {}).get("canaries"):
        where = f"dataset {trained_on}" if trained_on else "no fine-tuning data (a base model)"
        raise InvalidInputError(
            f"criterion on canary_leak_rate, but the model was trained on {where} without "
            "canaries: prepare the training data with canaries=N, or drop the criterion"
        )
    return {
        "rows": rows,
        "scorer": {
            "metrics": metrics,
            "labels": labels,
            "schema": spec.json_schema,
            "pattern": spec.pattern,
        },
        "safety": suites,
    }


def _labels(dataset: dict[str, Any]) -> list[str] | None:
    labels = (dataset.get("report") or {}).get("labels")
    if not labels:
        return None
    return sorted(set(labels.get("train", {})) | set(labels.get("validation", {})))


def _safety_suites(spec: EvalSpec) -> dict[str, Any]:
    found: dict[str, Path] = {}
    configured = os.environ.get(SAFETY_DATA_ENV)
    if configured:
        found = safety.find_suite_files(Path(configured))
    paths = {
        "harmful": Path(spec.harmful_prompts) if spec.harmful_prompts else found.get("harmful"),
        "safe": Path(spec.safe_prompts) if spec.safe_prompts else found.get("safe"),
    }
    missing = [kind for kind, path in paths.items() if path is None]
    if missing:
        raise InvalidInputError(
            f"safety evaluation needs the {' and '.join(missing)} prompt suite(s): pass "
            + ", ".join(f"{kind}_prompts=<file>" for kind in missing)
            + f" (AdvBench's harmful_behaviors.csv, XSTest's xstest_prompts.csv, .jsonl or .txt), "
            f"or set {SAFETY_DATA_ENV} to a folder holding advbench/harmful_behaviors.csv and "
            "xstest/xstest_prompts.csv"
        )
    suites: dict[str, Any] = {
        kind: safety.load_prompts(path, kind, spec.safety_limit)
        for kind, path in paths.items()
        if path is not None
    }
    for kind, path in paths.items():
        suites[f"{kind}_source"] = str(path)
    return suites


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
