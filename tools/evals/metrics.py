"""Task metrics: how one prediction is scored against its reference, and how scores add up.

A `Scorer` holds the chosen metrics and what they need (a label set, a JSON Schema, a regex),
checked all at once. `Scorer.example` turns one (prediction, reference) pair into a record of
per-example values; `Scorer.aggregate` turns a list of records into corpus scores, and
`Scorer.confusion` summarises the label mistakes. Every metric gives a defined value for an
empty, whitespace-only or punctuation-only prediction; `Scorer.example` lists which.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema
import jsonschema_specifications
import referencing.exceptions
import regex

from turing.tools.errors import InvalidInputError

TASK_METRICS = (
    "exact_match",
    "accuracy",
    "macro_f1",
    "token_f1",
    "rouge_l",
    "json_valid",
    "schema_valid",
    "regex_match",
)
# Per-example values of these are 0 or 1, so a paired comparison of two models is McNemar's.
BINARY_METRICS = frozenset({"exact_match", "accuracy", "json_valid", "schema_valid", "regex_match"})
# The corpus value of these is not the mean of per-example values; records carry no value for them.
CORPUS_METRICS = frozenset({"macro_f1"})
LABEL_METRICS = frozenset({"accuracy", "macro_f1"})

# What a prediction that names no label of the set is recorded as; never a correct answer.
OTHER_LABEL = "(other)"
EMPTY_LABEL = "(empty)"
UNMATCHED_LABELS = (OTHER_LABEL, EMPTY_LABEL)
# The longest one regex_match may take on one answer before the evaluation stops with an error.
MATCH_SECONDS = 2.0

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# Scripts written without spaces between words: each character is its own token.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_UNSPACED}]|[^\s{_UNSPACED}]+")
_FENCE = re.compile(r"\A```(?:json\b)?(.*?)```\Z", re.DOTALL | re.IGNORECASE)
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def normalise(text: str) -> str:
    """The form exact match compares: surrounding space trimmed, inner whitespace runs collapsed.

    Case is kept, so "Yes" and "yes" differ under exact match; label matching case-folds on top.
    """
    return re.sub(r"\s+", " ", text).strip()


def word_tokens(text: str) -> list[str]:
    """The tokens token F1 and ROUGE-L count, SQuAD-style.

    The text is case-folded, ASCII punctuation and symbols (`string.punctuation`, e.g. "$")
    and all Unicode punctuation are deleted (so "don't" becomes "dont"), the English articles
    a/an/the are dropped and the rest is split on whitespace. Characters of scripts written
    without spaces (Chinese, Japanese kana) are one token each. An empty, whitespace-only or
    punctuation-only text has no tokens.
    """
    kept = "".join(char for char in text.casefold() if not _is_punctuation(char))
    return _TOKEN.findall(_ARTICLES.sub(" ", kept))


def parse_json_output(text: str) -> Any:
    """The JSON value of a model's answer, or raise ValueError if it is not JSON.

    Surrounding whitespace and one surrounding Markdown fence (```` ``` ```` or ```` ```json ````)
    are stripped first. The text must be strict JSON: NaN and Infinity are refused.

    Raises:
        ValueError: The text is not one JSON value.
    """
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply to read") from exc


def default_metrics(references: list[str], labels: list[str] | None) -> list[str]:
    """The metrics to use when none are chosen, from the shape of the references.

    Args:
        references: The reference answers of the rows to score.
        labels: The label set of a classification dataset, or None.

    Returns:
        ["accuracy", "macro_f1", "exact_match"] with labels; ["json_valid", "exact_match",
        "token_f1"] when every reference is a JSON object or array; otherwise ["exact_match",
        "token_f1", "rouge_l"].
    """
    if labels:
        return ["accuracy", "macro_f1", "exact_match"]
    if references and all(_is_json_container(reference) for reference in references):
        return ["json_valid", "exact_match", "token_f1"]
    return ["exact_match", "token_f1", "rouge_l"]


class Scorer:
    """Scores predictions against references with a chosen list of task metrics.

    Args:
        metrics: Names from TASK_METRICS; repeats are dropped, order is kept.
        labels: The label set, needed by accuracy and macro_f1. A prediction names a label when
            it equals it after `normalise` and case-folding; labels must stay distinct that way.
        schema: A JSON Schema (any draft; 2020-12 when it names none), needed by schema_valid.
            `$ref`s resolve only inside the schema and to the drafts' own meta-schemas; nothing
            is fetched from the network.
        pattern: A Python regular expression, needed by regex_match; it must match the whole
            normalised prediction.

    Raises:
        InvalidInputError: One message naming every problem: an unknown or missing metric, a
            metric without what it needs, a bad label set, an invalid schema or a pattern that
            does not compile.
    """

    def __init__(
        self,
        metrics: list[str],
        *,
        labels: list[str] | None = None,
        schema: dict[str, Any] | None = None,
        pattern: str | None = None,
    ) -> None:
        errors = _metric_errors(metrics)
        chosen = list(dict.fromkeys(metrics)) if isinstance(metrics, list | tuple) else []
        errors += _label_errors(chosen, labels)
        validator, schema_errors = _schema_validator(chosen, schema)
        regex, pattern_errors = _compiled_pattern(chosen, pattern)
        errors += schema_errors + pattern_errors
        if errors:
            raise InvalidInputError(
                f"{len(errors)} invalid evaluation setting(s):\n  " + "\n  ".join(errors)
            )

        self.metrics: list[str] = chosen
        self.labels: list[str] | None = list(dict.fromkeys(labels)) if labels else None
        self._label_keys = {_label_key(label): label for label in self.labels or []}
        self._validator = validator
        self._regex = regex
        self._scores: dict[str, Callable[[str, str], float]] = {
            "exact_match": _exact_match,
            "token_f1": _token_f1,
            "rouge_l": _rouge_l,
            "json_valid": _json_valid,
            "schema_valid": self._schema_valid,
            "regex_match": self._regex_match,
        }

    def label_of(self, text: str) -> str:
        """The label of the set a text names, or "(empty)" / "(other)" when it names none.

        Matching ignores case and surrounding or repeated whitespace, nothing else: "Card
        arrival." does not name "card arrival". "(empty)" is for a text that is empty after
        `normalise`; "(other)" for anything else outside the set, punctuation-only included.
        """
        key = _label_key(text)
        if not key:
            return EMPTY_LABEL
        return self._label_keys.get(key, OTHER_LABEL)

    def example(self, prediction: str, reference: str) -> dict[str, Any]:
        """Score one prediction against its reference.

        Every chosen metric but macro_f1 (a corpus metric) gets a float in [0, 1]:

        - exact_match: 1 when prediction and reference are equal after `normalise` (case
          counts); an empty prediction scores 1 only against an empty reference.
        - accuracy: 1 when the prediction names the reference's label (see `label_of`); a
          prediction or reference outside the set, or empty, is never correct.
        - token_f1: F1 of the bags of `word_tokens`; 1 when neither side has a token (say both
          are punctuation only), 0 when only one side has none.
        - rouge_l: F1 of the longest common subsequence of `word_tokens` over each side's token
          count; empty sides as for token_f1.
        - json_valid: 1 when the prediction is one JSON value (see `parse_json_output`); an
          empty, whitespace or punctuation prediction is not JSON, whatever the reference.
        - schema_valid: 1 when the prediction is JSON and valid against the schema; else 0.
        - regex_match: 1 when the pattern matches the whole normalised prediction, so an empty
          prediction scores 1 only if the pattern matches "".

        With a label set the record also has "predicted_label" and "reference_label".

        Raises:
            InvalidInputError: The schema has a `$ref` that cannot be resolved.
        """
        record: dict[str, Any] = {}
        if self.labels is not None:
            record["predicted_label"] = self.label_of(prediction)
            record["reference_label"] = self.label_of(reference)
        for metric in self.metrics:
            if metric == "accuracy":
                record[metric] = _accuracy(record["predicted_label"], record["reference_label"])
            elif metric not in CORPUS_METRICS:
                record[metric] = self._scores[metric](prediction, reference)
        return record

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """The corpus score of every chosen metric over records made by `example`.

        Each metric is the mean of its per-example values, except macro_f1: the unweighted mean
        of per-label F1 over the labels that occur as a reference or a prediction. "(other)"
        and "(empty)" predictions are wrong answers (they lower the recall of the true label)
        but not classes of the mean; with no label occurring at all macro_f1 is 0.

        Raises:
            InvalidInputError: There are no records, or a record lacks a chosen metric.
        """
        if not records:
            raise InvalidInputError("no records to aggregate: score at least one example first")
        scores: dict[str, float] = {}
        for metric in self.metrics:
            if metric == "macro_f1":
                per_label = _per_label(_label_pairs(records))
                f1s = [stats["f1"] for stats in per_label.values()]
                scores[metric] = sum(f1s) / len(f1s) if f1s else 0.0
            else:
                scores[metric] = sum(_value(record, metric, i) for i, record in enumerate(records))
                scores[metric] /= len(records)
        return scores

    def confusion(self, records: list[dict[str, Any]], top: int = 10) -> dict[str, Any]:
        """Where the label predictions go wrong: per-label scores and the commonest mistakes.

        Args:
            records: Records made by `example` with a label set.
            top: How many of the most frequent (reference, prediction) mistakes to list.

        Returns:
            {"per_label": {label: {"precision", "recall", "f1", "support"}} for the labels
            macro_f1 averages, commonest reference first; "unmatched": how many predictions
            were "(other)" and "(empty)"; "top_confusions": [{"reference_label",
            "predicted_label", "count"}] most frequent first, ties by name}.

        Raises:
            InvalidInputError: The scorer has no label set, or `top` is negative.
        """
        if self.labels is None:
            raise InvalidInputError("confusion needs a label set: create the Scorer with labels")
        if top < 0:
            raise InvalidInputError(f"top={top}: must be 0 or a positive number of confusions")
        pairs = _label_pairs(records)

        per_label = _per_label(pairs)
        ordered = sorted(per_label, key=lambda label: (-per_label[label]["support"], label))
        predicted = Counter(prediction for _, prediction in pairs)
        mistakes = Counter(pair for pair in pairs if pair[0] != pair[1])
        commonest = sorted(mistakes.items(), key=lambda item: (-item[1], item[0]))[:top]
        return {
            "per_label": {label: per_label[label] for label in ordered},
            "unmatched": {label: predicted[label] for label in UNMATCHED_LABELS},
            "top_confusions": [
                {"reference_label": ref, "predicted_label": pred, "count": count}
                for (ref, pred), count in commonest
            ],
        }

    def _schema_valid(self, prediction: str, reference: str) -> float:
        try:
            instance = parse_json_output(prediction)
        except ValueError:
            return 0.0
        assert self._validator is not None  # set whenever schema_valid is chosen
        try:
            return float(self._validator.is_valid(instance))
        except referencing.exceptions.Unresolvable as exc:
            raise InvalidInputError(
                f"schema: a $ref cannot be resolved ({exc}); refer only to parts of the schema"
            ) from exc
        except RecursionError:
            return 0.0

    def _regex_match(self, prediction: str, reference: str) -> float:
        assert self._regex is not None  # set whenever regex_match is chosen
        try:
            found = self._regex.fullmatch(normalise(prediction), timeout=MATCH_SECONDS)
        except TimeoutError:
            raise InvalidInputError(
                f"pattern {self._regex.pattern[:200]!r} took over {MATCH_SECONDS:g} s to match "
                f"one answer of {len(prediction)} characters (catastrophic backtracking?); "
                "simplify it, e.g. avoid nested repeats such as (\\w+\\s?)*"
            ) from None
        return float(found is not None)


# --- per-example metrics ------------------------------------------------------------------


def _exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def _accuracy(predicted_label: str, reference_label: str) -> float:
    return float(predicted_label == reference_label and reference_label not in UNMATCHED_LABELS)


def _token_f1(prediction: str, reference: str) -> float:
    predicted, expected = word_tokens(prediction), word_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    return _f1(common, len(predicted), len(expected))


def _rouge_l(prediction: str, reference: str) -> float:
    predicted, expected = word_tokens(prediction), word_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    return _f1(lcs_length(predicted, expected), len(predicted), len(expected))


def _json_valid(prediction: str, reference: str) -> float:
    try:
        parse_json_output(prediction)
    except ValueError:
        return 0.0
    return 1.0


def _f1(common: int, predicted: int, expected: int) -> float:
    """F1 of `common` matches between `predicted` and `expected` items; 0 when none match."""
    if common == 0:
        return 0.0
    precision, recall = common / predicted, common / expected
    return 2 * precision * recall / (precision + recall)


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """The length of the longest common subsequence of two token lists.

    Bit-parallel (Hyyro's algorithm): one big-integer step per token of the longer list, so
    long answers cost milliseconds rather than a quadratic table of Python steps.
    """
    if len(first) < len(second):
        first, second = second, first
    masks: dict[str, int] = {}
    for position, token in enumerate(second):
        masks[token] = masks.get(token, 0) | (1 << position)

    width = len(second)
    row = (1 << width) - 1
    for token in first:
        matched = row & masks.get(token, 0)
        row = ((row + matched) | (row - matched)) & ((1 << width) - 1)
    return width - row.bit_count()


# --- labels ------------------------------------------------------------------------------


def _label_key(text: str) -> str:
    return normalise(text).casefold()


def _label_pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    pairs = []
    for index, record in enumerate(records):
        if "reference_label" not in record or "predicted_label" not in record:
            raise InvalidInputError(
                f"record {index} has no reference_label/predicted_label: "
                "score it with a Scorer that has a label set"
            )
        pairs.append((record["reference_label"], record["predicted_label"]))
    return pairs


def _per_label(pairs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Precision, recall, F1 and support of each label occurring on either side of the pairs."""
    seen = {label for pair in pairs for label in pair if label not in UNMATCHED_LABELS}
    support = Counter(reference for reference, _ in pairs)
    predicted = Counter(prediction for _, prediction in pairs)
    correct = Counter(reference for reference, prediction in pairs if reference == prediction)

    per_label: dict[str, dict[str, Any]] = {}
    for label in sorted(seen):
        hits = correct[label]
        per_label[label] = {
            "precision": hits / predicted[label] if predicted[label] else 0.0,
            "recall": hits / support[label] if support[label] else 0.0,
            "f1": 2 * hits / (predicted[label] + support[label]),
            "support": support[label],
        }
    return per_label


def _value(record: dict[str, Any], metric: str, index: int) -> float:
    if metric not in record:
        raise InvalidInputError(
            f"record {index} has no {metric!r}: score every record with the same Scorer"
        )
    return float(record[metric])


# --- settings ------------------------------------------------------------------------------


def _metric_errors(metrics: Any) -> list[str]:
    allowed = ", ".join(TASK_METRICS)
    if isinstance(metrics, str) or not isinstance(metrics, list | tuple):
        return [f"metrics={metrics!r} must be a list of metric names; allowed: {allowed}"]
    if not metrics:
        return [f"metrics is empty: choose one or more of: {allowed}"]
    return [
        f"metric {metric!r} is not known; allowed: {allowed}"
        for metric in dict.fromkeys(metrics)
        if metric not in TASK_METRICS
    ]


def _label_errors(metrics: list[str], labels: list[str] | None) -> list[str]:
    errors = [
        f"metric {metric!r} needs the label set: pass labels, e.g. labels=['yes', 'no']"
        for metric in metrics
        if metric in LABEL_METRICS and not labels
    ]
    if labels is None:
        return errors
    if isinstance(labels, str) or not isinstance(labels, list | tuple):
        return [*errors, f"labels={labels!r} must be a list of label strings"]

    by_key: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        if not isinstance(label, str):
            errors.append(f"label {label!r} must be a string")
        elif not _label_key(label):
            errors.append(f"label {label!r} is empty; every label needs visible text")
        elif label in UNMATCHED_LABELS:
            errors.append(f"label {label!r} is reserved for predictions outside the set")
        else:
            by_key.setdefault(_label_key(label), []).append(label)
    errors += [
        f"labels {', '.join(map(repr, same))} differ only in case or spacing; keep one"
        for same in by_key.values()
        if len(same) > 1
    ]
    return errors


def _schema_validator(metrics: list[str], schema: Any) -> tuple[Any, list[str]]:
    if "schema_valid" not in metrics:
        return None, []
    if schema is None:
        return None, ["metric 'schema_valid' needs schema: pass a JSON Schema object"]
    if not isinstance(schema, dict):
        return None, [f"schema must be a JSON Schema object, not {type(schema).__name__}"]

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(root)"
        return None, [f"schema is not a valid JSON Schema at {where}: {exc.message}"]
    # An explicit registry: the default one fetches remote $refs over the network.
    validator = cls(schema, registry=jsonschema_specifications.REGISTRY)
    errors = []
    for ref in _references(schema):
        try:
            validator._resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            errors.append(
                f"schema: $ref {ref[:200]!r} cannot be resolved; refer only to parts of the "
                "schema itself (remote schemas are never fetched)"
            )
    return (None if errors else validator), errors


def _references(node: Any, top: bool = True) -> list[str]:
    """The `$ref`s of a schema, outside sub-schemas with their own `$id` (another base URI)."""
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item, False)]
    if not isinstance(node, dict) or (not top and "$id" in node):
        return []
    found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
    return found + [ref for value in node.values() for ref in _references(value, False)]


def _compiled_pattern(metrics: list[str], pattern: Any) -> tuple[Any, list[str]]:
    if "regex_match" not in metrics:
        return None, []
    if pattern is None:
        return None, ["metric 'regex_match' needs pattern: pass a regular expression"]
    if not isinstance(pattern, str):
        return None, [f"pattern must be a string, not {type(pattern).__name__}"]
    try:
        # The `regex` engine takes Python's syntax and, unlike `re`, a time limit per match.
        return regex.compile(pattern), []
    except regex.error as exc:
        return None, [f"pattern {pattern[:200]!r} does not compile: {exc}"]


def _is_punctuation(char: str) -> bool:
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def _is_json_container(text: str) -> bool:
    try:
        return isinstance(parse_json_output(text), dict | list)
    except ValueError:
        return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
