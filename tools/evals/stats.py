"""Uncertainty of scores: bootstrap intervals and paired tests of whether two models differ.

Two models scored on the same rows are compared row by row: McNemar's exact test for 0/1
metrics, a sign-flip permutation test for other per-example scores, and a paired bootstrap for
corpus metrics such as macro-F1. Groups of different rows (the routes of an A/B test) are
compared unpaired: Mann-Whitney's U test for values, Fisher's exact test for rates, with Wilson
and Newcombe intervals. Everything is seeded, so a report can be reproduced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence, Sized
from statistics import NormalDist
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
# Mann-Whitney's exact distribution is counted when the groups make at most this many pairs.
EXACT_MANN_WHITNEY_CELLS = 10_000
_NORMAL = NormalDist()


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


# --- unpaired tests: two groups of different rows (e.g. the routes of an A/B test) ---------


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """The Mann-Whitney U test of whether values of group a tend to be larger or smaller than b's.

    Unpaired and free of any assumed distribution, so it suits skewed values such as latencies.
    Without ties and with at most EXACT_MANN_WHITNEY_CELLS pairs, the two-sided p-value comes
    from the exact distribution of U; otherwise from the normal approximation with the tie
    correction and a continuity correction.

    Args:
        a: The values of group a (at least one).
        b: The values of group b (at least one).

    Returns:
        {"u": U of group a (pairs where a's value is larger, ties counting one half),
        "p_value": float, "method": "exact" or "normal"}.

    Raises:
        ValueError: A group is empty or holds a value that is not finite.
    """
    first, second = _finite(a, "a"), _finite(b, "b")
    n1, n2 = len(first), len(second)
    ranks = _ranks(np.concatenate([first, second]))
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)

    _, tie_counts = np.unique(np.concatenate([first, second]), return_counts=True)
    if np.all(tie_counts == 1) and n1 * n2 <= EXACT_MANN_WHITNEY_CELLS:
        counts = _u_counts(n1, n2)
        total = sum(counts)
        low = sum(counts[: int(u) + 1])
        high = sum(counts[int(u) :])
        return {"u": u, "p_value": min(1.0, 2 * min(low, high) / total), "method": "exact"}

    n = n1 + n2
    ties = float(np.sum(tie_counts.astype(float) ** 3 - tie_counts))
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return {"u": u, "p_value": 1.0, "method": "normal"}
    z = max(0.0, abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(variance)
    return {"u": u, "p_value": min(1.0, 2 * _NORMAL.cdf(-z)), "method": "normal"}


def fisher_exact(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """The two-sided p-value of Fisher's exact test of whether two proportions differ.

    The table is (hits, misses) of a over those of b; with the margins fixed, the p-value sums
    the hypergeometric probabilities of every table no more likely than the observed one.

    Args:
        hits_a: Rows of group a with the outcome (e.g. errors).
        n_a: Rows of group a.
        hits_b: Rows of group b with the outcome.
        n_b: Rows of group b.

    Raises:
        ValueError: A count is negative or hits exceed their rows.
    """
    _check_counts(hits_a, n_a, "a")
    _check_counts(hits_b, n_b, "b")
    hits, total = hits_a + hits_b, n_a + n_b
    if n_a == 0 or n_b == 0 or hits in (0, total):
        return 1.0
    support = np.arange(max(0, hits - n_b), min(hits, n_a) + 1)
    log_p = _log_comb(n_a, support) + _log_comb(n_b, hits - support) - _log_comb(total, hits)
    observed = log_p[hits_a - support[0]]
    # Tables as likely as the observed one, up to rounding, count as extreme.
    extreme = log_p <= observed + 1e-7
    return min(1.0, float(np.exp(log_p[extreme]).sum()))


def wilson_interval(hits: int, n: int, confidence: float = 0.95) -> list[float]:
    """The Wilson score interval [low, high] of a proportion hits / n.

    Unlike the plain normal interval it stays inside [0, 1] and is not empty at 0 or n hits.
    With no rows the interval is [0.0, 1.0].

    Raises:
        ValueError: A count is negative, hits exceed n, or confidence is not between 0 and 1.
    """
    _check_confidence(confidence)
    _check_counts(hits, n, "hits")
    if n == 0:
        return [0.0, 1.0]
    z = _NORMAL.inv_cdf((1 + confidence) / 2)
    share = hits / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    # At 0 or n hits the bound is exactly 0 or 1; the formula leaves a rounding residue.
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return [low, high]


def proportion_difference_interval(
    hits_a: int, n_a: int, hits_b: int, n_b: int, confidence: float = 0.95
) -> list[float]:
    """Newcombe's interval [low, high] of the difference of two proportions, a - b.

    Built from each proportion's Wilson interval (Newcombe's method 10), so it behaves at rates
    near 0 or 1 where the plain normal interval of a difference does not.

    Raises:
        ValueError: A group has no rows, a count is out of range, or confidence is bad.
    """
    if n_a == 0 or n_b == 0:
        raise ValueError(f"n_a={n_a}, n_b={n_b}: each group needs at least one row")
    low_a, high_a = wilson_interval(hits_a, n_a, confidence)
    low_b, high_b = wilson_interval(hits_b, n_b, confidence)
    share_a, share_b = hits_a / n_a, hits_b / n_b
    difference = share_a - share_b
    below = math.hypot(share_a - low_a, high_b - share_b)
    above = math.hypot(high_a - share_a, share_b - low_b)
    return [max(-1.0, difference - below), min(1.0, difference + above)]


def unpaired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[float]:
    """A percentile bootstrap interval [low, high] of statistic(a) - statistic(b).

    Each group is resampled on its own (the groups hold different rows).

    Raises:
        ValueError: A group is empty or holds a value that is not finite, or a setting is out
            of range.
    """
    _check_confidence(confidence)
    first, second = _finite(a, "a"), _finite(b, "b")
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: must be at least 1")
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            float(statistic(first[rng.integers(0, len(first), len(first))]))
            - float(statistic(second[rng.integers(0, len(second), len(second))]))
            for _ in range(resamples)
        ]
    )
    low, high = _percentiles(draws, confidence)
    return [low, high]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values tested together (each capped at 1, same order)."""
    order = np.argsort(p_values, kind="stable")
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for step, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - step) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError(f"group {name} is empty: an unpaired test needs at least one value each")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"group {name} holds a value that is not finite (NaN or infinity)")
    return array


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(len(values))
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or ordered[end] != ordered[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def _u_counts(n1: int, n2: int) -> list[int]:
    """How many orderings of n1 + n2 distinct values give each U = 0 .. n1 * n2.

    The coefficients of the Gaussian binomial [n1 + n2 choose n1] in q, built as the product of
    (1 - q^(n2 + i)) / (1 - q^i) for i = 1 .. n1 with exact integers.
    """
    size = n1 * n2 + 1
    counts = [1] + [0] * (size - 1)
    for i in range(1, n1 + 1):
        for power in range(size - 1, n2 + i - 1, -1):  # times (1 - q^(n2 + i))
            counts[power] -= counts[power - n2 - i]
        for power in range(i, size):  # divided by (1 - q^i)
            counts[power] += counts[power - i]
    return counts


def _check_counts(hits: int, n: int, name: str) -> None:
    if n < 0 or not 0 <= hits <= n:
        raise ValueError(f"{name}: hits={hits} of n={n}; need 0 <= hits <= n")


def _log_comb(n: int, k: Any) -> np.ndarray:
    log_gamma = np.vectorize(math.lgamma)
    k = np.asarray(k, dtype=float)
    return math.lgamma(n + 1) - log_gamma(k + 1) - log_gamma(n - k + 1)


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
