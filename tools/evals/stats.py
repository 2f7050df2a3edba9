"""Uncertainty of scores: bootstrap intervals and paired tests of whether two models differ.

Two models scored on the same rows are compared row by row: McNemar's exact test for 0/1
metrics, a sign-flip permutation test for other per-example scores, and a paired bootstrap for
corpus metrics such as macro-F1. Everything is seeded, so a report can be reproduced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence, Sized
from typing import Any

import numpy as np

from turing.tools.evals.metrics import BINARY_METRICS, CORPUS_METRICS, TASK_METRICS

# Metrics whose corpus value is the mean of per-example values: resampled from those values.
MEAN_METRICS = frozenset(TASK_METRICS) - CORPUS_METRICS
# Sign-flip tests enumerate every flip when there are at most this many rows (2**12 = 4096).
EXACT_PERMUTATION_ROWS = 12
# McNemar sums exact binomial coefficients up to this many discordant rows, logs beyond.
EXACT_BINOMIAL_ROWS = 1000
# Rows times resamples held in memory at once by the sign-flip test.
_BATCH_CELLS = 4_000_000


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap confidence interval of a statistic over n rows.

    Args:
        n: How many rows there are.
        statistic: Computes the statistic from an array of row indices, drawn with replacement.
        resamples: How many resamples to draw.
        confidence: The coverage of the interval, between 0 and 1.
        seed: Chooses the resamples; the same seed gives the same interval.

    Returns:
        (low, high), the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles.

    Raises:
        ValueError: n or resamples is below 1, or confidence is not between 0 and 1.
    """
    _check_confidence(confidence)
    values = _bootstrap(n, statistic, resamples, seed)
    return _percentiles(values, confidence)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of whether two models' paired 0/1 outcomes differ.

    Only discordant rows count: `only_a` rows where a is right and b wrong, `only_b` the
    reverse. Under no difference each is a fair coin flip, so the two-sided p-value is twice the
    binomial tail of the smaller count, capped at 1. With no discordant rows (identical
    outcomes) p is 1.0.

    Args:
        a: Model a's outcome on each row (True, or 1, for right).
        b: Model b's outcome on the same rows, in the same order.

    Returns:
        {"only_a": int, "only_b": int, "p_value": float, "method": "exact_binomial"}.

    Raises:
        ValueError: The sequences differ in length or hold values other than 0/1.
    """
    first, second = _binary(a, "a"), _binary(b, "b")
    _check_paired(first, second)
    only_a = int(np.sum(first & ~second))
    only_b = int(np.sum(~first & second))
    return {
        "only_a": only_a,
        "only_b": only_b,
        "p_value": _binomial_two_sided(min(only_a, only_b), only_a + only_b),
        "method": "exact_binomial",
    }


def paired_permutation(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10000, seed: int = 0
) -> float:
    """The two-sided p-value of a sign-flip permutation test on paired scores.

    Under no difference, each row's difference a - b is as likely to have the other sign; the
    p-value is the share of sign flips whose mean difference is at least as far from 0 as the
    observed one. With at most EXACT_PERMUTATION_ROWS rows every flip is enumerated (exact);
    otherwise `resamples` random flips are drawn and the estimate counts the observed one, so it
    is never 0. Identical scores give 1.0.

    Raises:
        ValueError: The sequences differ in length or are empty, or resamples is below 1.
    """
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    _check_paired(first, second)
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: must be at least 1")
    differences = first - second
    observed = abs(differences.mean())
    if not np.any(differences):
        return 1.0

    # Means equal in exact arithmetic can differ in the last bits; do not count them as smaller.
    threshold = observed - 1e-12 * max(1.0, float(np.abs(differences).max()))
    if len(differences) <= EXACT_PERMUTATION_ROWS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(differences))))
        return float(np.mean(np.abs(signs @ differences) / len(differences) >= threshold))

    rng = np.random.default_rng(seed)
    batch = max(1, _BATCH_CELLS // len(differences))
    extreme, drawn = 0, 0
    while drawn < resamples:
        size = min(batch, resamples - drawn)
        signs = rng.choice((1.0, -1.0), size=(size, len(differences)))
        extreme += int(np.sum(np.abs(signs @ differences) / len(differences) >= threshold))
        drawn += size
    return (extreme + 1) / (resamples + 1)


def compare(
    records_a: list[dict[str, Any]],
    records_b: list[dict[str, Any]],
    metric: str,
    aggregate: Callable[[list[dict[str, Any]]], float],
    *,
    alpha: float = 0.05,
    resamples: int = 1000,
    seed: int = 0,
    binary: bool = False,
) -> dict[str, Any]:
    """Compare two models scored on the same rows: the difference, its interval and a test.

    The test follows the metric: McNemar's exact test for BINARY_METRICS, a paired bootstrap
    for CORPUS_METRICS (the share of resampled differences at least |difference| away from the
    observed one), and the sign-flip permutation test for any other per-example score. The
    interval is a paired bootstrap percentile interval of the difference; for metrics whose
    score is the mean of per-example values it resamples those values directly, which is the
    same statistic without calling `aggregate` per resample.

    Args:
        records_a: Model a's per-example records (each with a value for the metric unless it
            is a corpus metric).
        records_b: Model b's records of the same rows, in the same order.
        metric: The metric's name, e.g. "accuracy".
        aggregate: Computes the metric's corpus score from a list of records.
        alpha: The significance level; the interval's confidence is 1 - alpha.
        resamples: Bootstrap resamples for the interval (and the corpus test).
        seed: Chooses the resamples.
        binary: The per-example values of this metric are 0/1 outcomes even though it is not
            a task metric (e.g. refused or not): McNemar's test applies.

    Returns:
        {"metric", "n" (rows), "value" (a's score), "other" (b's score), "difference" (a - b),
        "ci": [low, high] (the 1 - alpha interval of the difference), "test" ("mcnemar",
        "paired_bootstrap" or "paired_permutation"), "p_value", "significant" (p < alpha)}.

    Raises:
        ValueError: The record lists differ in length or are empty, a record lacks the
            metric's per-example value, or alpha is not between 0 and 1.
    """
    _check_paired(records_a, records_b)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: must be between 0 and 1, e.g. 0.05")
    value, other = float(aggregate(records_a)), float(aggregate(records_b))
    difference = value - other

    distribution = _paired_differences(records_a, records_b, metric, aggregate, resamples, seed)
    test, p_value = _paired_test(
        records_a, records_b, metric, difference, distribution, seed, binary
    )
    low, high = _percentiles(distribution, 1 - alpha)
    return {
        "metric": metric,
        "n": len(records_a),
        "value": value,
        "other": other,
        "difference": difference,
        "ci": [low, high],
        "test": test,
        "p_value": p_value,
        "significant": p_value < alpha,
    }


def interval(
    records: list[dict[str, Any]],
    aggregate: Callable[[list[dict[str, Any]]], float],
    **kw: Any,
) -> list[float]:
    """The bootstrap confidence interval [low, high] of one model's score.

    Args:
        records: The model's per-example records.
        aggregate: Computes the score from a list of records.
        **kw: `resamples`, `confidence` and `seed`, as for `bootstrap_ci`.

    Raises:
        ValueError: There are no records, or a setting is out of range.
    """
    if not records:
        raise ValueError("no records: an interval needs at least one scored row")
    low, high = bootstrap_ci(
        len(records), lambda rows: _aggregate_rows(aggregate, records, rows), **kw
    )
    return [low, high]


# --- helpers -----------------------------------------------------------------------------


def _paired_differences(
    records_a: list[dict[str, Any]],
    records_b: list[dict[str, Any]],
    metric: str,
    aggregate: Callable[[list[dict[str, Any]]], float],
    resamples: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap draws of score(a) - score(b), both models resampled on the same rows."""
    if metric in MEAN_METRICS:
        delta = _values(records_a, metric, "a") - _values(records_b, metric, "b")
        return _bootstrap(len(delta), lambda rows: float(delta[rows].mean()), resamples, seed)

    def statistic(rows: np.ndarray) -> float:
        return _aggregate_rows(aggregate, records_a, rows) - _aggregate_rows(
            aggregate, records_b, rows
        )

    return _bootstrap(len(records_a), statistic, resamples, seed)


def _paired_test(
    records_a: list[dict[str, Any]],
    records_b: list[dict[str, Any]],
    metric: str,
    difference: float,
    distribution: np.ndarray,
    seed: int,
    binary: bool,
) -> tuple[str, float]:
    """The name and p-value of the test that suits the metric."""
    if metric in CORPUS_METRICS:
        return "paired_bootstrap", _bootstrap_p_value(distribution, difference)
    first, second = _values(records_a, metric, "a"), _values(records_b, metric, "b")
    if binary or metric in BINARY_METRICS:
        return "mcnemar", mcnemar(first.tolist(), second.tolist())["p_value"]
    return "paired_permutation", paired_permutation(first.tolist(), second.tolist(), seed=seed)


def _bootstrap(
    n: int, statistic: Callable[[np.ndarray], float], resamples: int, seed: int
) -> np.ndarray:
    if n < 1:
        raise ValueError(f"n={n}: a bootstrap needs at least one row")
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: must be at least 1")
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)])


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must be between 0 and 1, e.g. 0.95")


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    _check_confidence(confidence)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _bootstrap_p_value(distribution: np.ndarray, difference: float) -> float:
    """Two-sided p of a paired bootstrap: resampled differences recentred on the observed one."""
    if difference == 0:
        return 1.0
    extreme = int(np.sum(np.abs(distribution - difference) >= abs(difference)))
    return (extreme + 1) / (len(distribution) + 1)


def _binomial_two_sided(smaller: int, n: int) -> float:
    """2 * P(X <= smaller) for X ~ Binomial(n, 1/2), capped at 1."""
    if n == 0:
        return 1.0
    if n <= EXACT_BINOMIAL_ROWS:
        # Integer true division is correctly rounded, so small cases are exact.
        return min(1.0, 2 * sum(math.comb(n, k) for k in range(smaller + 1)) / 2**n)

    # log C(n, k) by the ratio C(n, k + 1) / C(n, k) = (n - k) / (k + 1): exact to ~1e-12
    # relative, and fast for n in the hundreds of thousands where integer sums get slow.
    ks = np.arange(smaller)
    log_terms = np.concatenate(([0.0], np.cumsum(np.log((n - ks) / (ks + 1)))))
    peak = log_terms.max()
    log_tail = peak + math.log(float(np.exp(log_terms - peak).sum())) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


def _binary(values: Sequence[bool], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must hold only 0/1 (or bool) outcomes for McNemar's test")
    return array.astype(bool)


def _check_paired(a: Sized, b: Sized) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired scores differ in length: {len(a)} and {len(b)} rows")
    if len(a) == 0:
        raise ValueError("no rows to compare: both score lists are empty")


def _values(records: list[dict[str, Any]], metric: str, name: str) -> np.ndarray:
    values = []
    for index, record in enumerate(records):
        if metric not in record:
            raise ValueError(f"record {index} of {name} has no per-example {metric!r} value")
        values.append(float(record[metric]))
    return np.array(values)


def _aggregate_rows(
    aggregate: Callable[[list[dict[str, Any]]], float],
    records: list[dict[str, Any]],
    rows: np.ndarray,
) -> float:
    return float(aggregate([records[row] for row in rows]))
